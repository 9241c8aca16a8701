"""`server.run_output`: the run folder's names, and results.json read back in one place.

The round trip goes through the real writer (`server.results.write_results`) and, once, a real
in-process run, so a field the writer renames or a file it moves breaks these tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from privet.server.federation_privacy import ClientPrivacy
from privet.server.results import RoundRecord, RunResults, write_results
from privet.server.run_output import (
    LEDGER_DIR,
    RESULTS_SCHEMA_VERSION,
    SERVER_LEDGER_OWNER,
    WEIGHTS_FILE_NAME,
    ClientData,
    ResultsError,
    RoundData,
    RunFolder,
    read_results,
    weights_file_name,
)
from privet.task.config import RunConfig


def written_run(folder: Path) -> RunResults:
    """A results.json as the server writes it: two rounds, two clients, client-level DP."""
    results = RunResults(config=RunConfig(output=str(folder), rounds=3), engine="in-process")
    results.initial_accuracy, results.initial_loss = 0.1, 2.3
    results.rounds.append(
        RoundRecord(1, 0.5, 1.2, 2.5, {0: 2.5, 1: 1.0}, 2, 0.4, sampled=[0, 1, 2], declined=[2])
    )
    results.rounds.append(
        RoundRecord(2, 0.625, math.nan, math.inf, {0: math.inf}, 1, failed=1, clip_norm=0.5)
    )
    results.declines = {2: 1}
    results.clients = [
        ClientPrivacy(1, 90, 1.0, 1e-5, 1.3, 0.125, 16, 1),
        ClientPrivacy(0, 100, math.inf, 1e-5, 1.1, 0.1, 20, 2),
    ]
    results.client_level = {
        "epsilon": 3.5,
        "noise_multiplier": 1.2,
        "sample_rate": 0.5,
        "adaptive_clipping": False,
        "rounds": 2,
    }
    results.resumed_after = [1]
    results.conclude(None)
    write_results(folder, results)
    return results


def test_what_the_writer_writes_reads_back_typed(tmp_path):
    written = written_run(tmp_path)
    read = read_results(tmp_path).validate()
    assert read.path == tmp_path / "results.json" == RunFolder(tmp_path).results
    assert read.schema_version == RESULTS_SCHEMA_VERSION == read.raw["schema_version"] == 3
    assert read.finished is True and read.failure_reason is None and read.stop_reason is None
    assert read.engine == "in-process" and read.privet_version == read.raw["privet_version"]
    assert read.config == written.config.to_json_dict() and read.planned_rounds == 3
    assert read.privacy.accountant == "rdp" and read.privacy.delta == written.config.delta
    assert read.privacy.epsilon_max == math.inf  # client 0's ε is infinite: "inf" in the file
    assert read.initial_accuracy == 0.1
    assert read.rounds[0] == RoundData(
        round=1,
        accuracy=0.5,
        epsilon_max=2.5,
        epsilon_by_client={"0": 2.5, "1": 1.0},
        clients_trained=2,
        local_accuracy=0.4,
        sampled=3,
        declined=1,
        failed=0,
        rejected=0,
        epsilon_client_level=None,
        clip_norm=None,
        noised_within_fraction=None,
        secure_aggregation=None,
        loss=1.2,
    )
    second = read.rounds[1]
    assert math.isnan(second.loss) and second.epsilon_max == math.inf
    assert second.epsilon_by_client == {"0": math.inf} and second.failed == 1
    assert second.clip_norm == 0.5
    assert read.clients == (  # the file's order; δ and counts as the clients reported them
        ClientData(1, 90, 1.0, 1e-5, 1.3, 0.125, 16, 1, 1.0, 16),
        ClientData(0, 100, math.inf, 1e-5, 1.1, 0.1, 20, 2, math.inf, 20),
    )
    assert read.declined == ((2, 1),) and read.resumed_after == (1,)
    level = read.client_level
    assert level is not None and level.epsilon == 3.5 and level.noise_multiplier == 1.2
    assert level.delta == written.config.delta  # not recorded there: the run's δ
    assert level.adaptive_clipping is False and level.rounds == 2
    assert read.secure_aggregation is None
    # Anything without an accessor is still there, as written.
    assert read.raw["warnings"] == written.warnings()


def test_a_file_without_schema_version_is_version_1_and_reads_the_same(tmp_path):
    written_run(tmp_path)
    current = read_results(tmp_path).validate()
    data = json.loads((tmp_path / "results.json").read_text())
    del data["schema_version"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    old = read_results(tmp_path).validate()
    assert old.schema_version == 1
    for name in ("finished", "engine", "config", "privacy", "clients", "client_level", "declined"):
        assert getattr(old, name) == getattr(current, name), name
    assert len(old.rounds) == 2 and old.rounds[0] == current.rounds[0]


def write(folder: Path, content: str | bytes) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / "results.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def good(folder: Path) -> dict:
    written_run(folder)
    return json.loads((folder / "results.json").read_text())


BAD_FILES = {
    "missing": (lambda folder: folder.mkdir(), "results.json does not exist"),
    "truncated": (
        lambda folder: write(folder, json.dumps(good(folder))[:150]),
        "is not valid JSON",
    ),
    "not UTF-8": (lambda folder: write(folder, b"\xff\xfe\x00x"), "is not UTF-8 text"),
    "NaN token": (lambda folder: write(folder, '{"rounds": NaN}'), "the non-JSON number NaN"),
    "a list": (lambda folder: write(folder, "[1, 2]"), "the file is list, expected an object"),
    "newer": (
        lambda folder: write(folder, '{"schema_version": 99}'),
        "schema_version 99 is not one this Privet reads (1, 2, 3)",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_an_unreadable_file_is_a_one_line_error_naming_it(tmp_path, name):
    make, expected = BAD_FILES[name]
    folder = tmp_path / "run"
    make(folder)
    with pytest.raises(ResultsError) as caught:
        read_results(folder)
    message = str(caught.value)
    assert expected in message and str(folder / "results.json") in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("damage", "accessor", "expected"),
    [
        (lambda d: d["rounds"][0].update(accuracy="high"), "rounds", "rounds[0].accuracy is"),
        (lambda d: d.pop("rounds"), "rounds", "rounds is missing, expected a list"),
        (lambda d: d["clients"][1].pop("epsilon"), "clients", "clients[1].epsilon is missing"),
        (lambda d: d.update(finished="yes"), "finished", "finished is 'yes', expected true"),
        (lambda d: d.update(config=[1]), "config", "config is list, expected an object"),
        (lambda d: d["privacy"].pop("delta"), "privacy", "privacy.delta is missing"),
        (lambda d: d["client_level"].update(epsilon=None), "client_level", "client_level.eps"),
    ],
)
def test_a_wrong_value_is_a_one_line_error_when_it_is_read(tmp_path, damage, accessor, expected):
    data = good(tmp_path)
    damage(data)
    (tmp_path / "results.json").write_text(json.dumps(data))
    read = read_results(tmp_path)  # the file itself is fine: values are checked when asked for
    for check in (lambda: getattr(read, accessor), read.validate):
        with pytest.raises(ResultsError) as caught:
            check()
        message = str(caught.value)
        assert expected in message and str(tmp_path / "results.json") in message
        assert "\n" not in message


def test_the_folder_layout_is_what_a_real_run_writes(tmp_path):
    """A real two-client run with client-level DP: every file it writes has its name here."""
    from privet.simulations.inprocess_engine import run_in_process

    folder = tmp_path / "run"
    config = RunConfig(
        output=str(folder), clients=2, rounds=2, reproducible=True, client_noise_multiplier=1.0
    )
    returned = run_in_process(config)
    run = RunFolder(folder)
    for path in (run.results, run.model, run.checkpoint, run.lock, run.weights(2)):
        assert path.is_file(), path
    assert run.ledgers == folder / LEDGER_DIR and run.ledger(SERVER_LEDGER_OWNER).is_file()
    assert run.ledger("client-0").is_file() and run.ledger("client-1").is_file()
    assert sorted(p.name for p in folder.glob("*.npz")) == [weights_file_name(2)]
    assert WEIGHTS_FILE_NAME.match(weights_file_name(2))
    checkpoint = json.loads(run.checkpoint.read_text())
    assert checkpoint["weights"]["file"] == run.weights(2).name
    read = read_results(folder).validate()
    assert read.finished is returned.finished is True and read.engine == returned.engine
    assert [r.round for r in read.rounds] == [1, 2]
    assert [r.accuracy for r in read.rounds] == [r.accuracy for r in returned.rounds]
    assert {c.id: c.epsilon for c in read.clients} == {
        c.client_id: c.epsilon for c in returned.clients
    }
    assert read.client_level is not None
    assert read.client_level.epsilon == returned.client_level["epsilon"]
