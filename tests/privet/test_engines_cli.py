"""Choosing the engine from the command line, and resuming on the engine a run used."""

from __future__ import annotations

import json

import pytest
import torch

from privet.cli import main
from privet.simulations.inprocess_engine import run_in_process
from privet.task.config import RunConfig

SETTINGS = {"clients": 3, "rounds": 3, "local_epochs": 1, "seed": 2, "reproducible": True}


def test_simulate_in_process_records_its_engine(tmp_path, capsys):
    output = tmp_path / "run"
    flags = ["--clients", "3", "--rounds", "1", "--engine", "in-process", "--output", str(output)]
    assert main(["simulate", *flags]) == 0
    assert json.loads((output / "results.json").read_text())["engine"] == "in-process"
    assert "round 1: accuracy" in capsys.readouterr().out


def test_an_interrupted_in_process_run_resumes_on_its_own_engine(tmp_path, capsys):
    straight = run_in_process(RunConfig(**SETTINGS, output=str(tmp_path / "straight")))
    output = tmp_path / "cut"

    def stop_after_first(record):
        if record.round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_process(RunConfig(**SETTINGS, output=str(output)), stop_after_first)
    assert main(["resume", str(output)]) == 0
    assert "round 1 of 3 (in-process)" in " ".join(capsys.readouterr().out.split())
    results = json.loads((output / "results.json").read_text())
    assert results["engine"] == "in-process" and results["resumed_after_rounds"] == [1]
    assert [r["accuracy"] for r in results["rounds"]] == [r.accuracy for r in straight.rounds]
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(output / "model.pt", weights_only=True)
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.long
def test_a_sweep_can_run_on_flowers_runtime(tmp_path):
    output = tmp_path / "sweep"
    flags = ["--clients", "2", "--rounds", "1", "--engine", "flower", "--output", str(output)]
    assert main(["sweep", "--vary", "seed=0", *flags]) == 0
    results = json.loads((output / "runs" / "run-000" / "results.json").read_text())
    assert results["engine"] == "flower-simulation" and results["finished"] is True


def test_engine_choice_is_checked(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--engine", "threads"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'threads'" in err[0]
