"""A warm start (run setting init-from): the first global model is read from weights trained
elsewhere, by the server alone, and sent to the clients with round 1."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest
import torch

from privet.cli import main
from privet.simulations.inprocess_engine import run_in_process
from privet.task.config import RunConfig
from privet.task.models import ModelError

SMALL = dict(clients=3, rounds=2, local_epochs=1, target_epsilon=8.0, seed=4, reproducible=True)


def results_of(folder):
    return json.loads((folder / "results.json").read_text())


def test_a_run_starts_from_an_earlier_runs_model_and_records_which(tmp_path):
    first = tmp_path / "first"
    run_in_process(RunConfig(**SMALL, output=str(first)))
    trained = results_of(first)
    second = tmp_path / "second"
    run_in_process(RunConfig(**SMALL, init_from=str(first), output=str(second)))
    warm = results_of(second)
    # The second run's model before round 1 is the first run's final model, scored on the same
    # test split: the same accuracy and loss.
    last = trained["rounds"][-1]
    assert warm["initial"] == {"accuracy": last["accuracy"], "loss": last["loss"]}
    assert warm["initial"] != trained["initial"]
    digest = hashlib.sha256((first / "model.pt").read_bytes()).hexdigest()
    assert warm["init_from"] == {"file": str(first / "model.pt"), "sha256": digest}
    assert trained["init_from"] is None
    # A file works as the folder does.
    third = tmp_path / "third"
    run_in_process(
        RunConfig(**{**SMALL, "rounds": 1}, init_from=str(first / "model.pt"), output=str(third))
    )
    assert results_of(third)["initial"] == warm["initial"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_of_another_model_or_no_state_dict_are_refused_in_one_line(tmp_path, capsys):
    first = tmp_path / "first"
    run_in_process(RunConfig(**{**SMALL, "rounds": 1}, output=str(first)))
    state = torch.load(first / "model.pt", weights_only=True)
    cases = {}
    key = next(iter(state))
    cases["shape"] = {**state, key: torch.zeros(3, 3)}
    cases["missing"] = {k: v for k, v in state.items() if k != key}
    cases["extra"] = {**state, "head.extra": torch.zeros(1)}
    cases["nan"] = {**state, key: torch.full_like(state[key], float("nan"))}
    expected = {
        "shape": "gives '" + key + "' the shape (3, 3)",
        "missing": "lacks '" + key + "'",
        "extra": "has a tensor the model has not: 'head.extra'",
        "nan": "non-finite values",
    }
    for name, bad in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(bad, path)
        with pytest.raises(ModelError, match="init-from") as info:
            run_in_process(RunConfig(**SMALL, init_from=str(path), output=str(tmp_path / name)))
        assert expected[name] in str(info.value) and "\n" not in str(info.value)
    # An arbitrary pickle is never unpickled (weights_only=True), nor is a folder without model.pt.
    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="weights_only=True"):
        run_in_process(RunConfig(**SMALL, init_from=str(evil), output=str(tmp_path / "evil")))
    assert not marker.exists()
    (tmp_path / "cases").mkdir()
    with pytest.raises(ModelError, match="has no model.pt"):
        run_in_process(
            RunConfig(**SMALL, init_from=str(tmp_path / "cases"), output=str(tmp_path / "x"))
        )
    # Through the CLI: a one-line error and a non-zero exit.
    code = main(
        ["simulate", "--init-from", str(tmp_path / "absent.pt"), "--output", str(tmp_path / "cli")]
    )
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any("init-from" in line and "absent.pt does not exist" in line for line in err), err
