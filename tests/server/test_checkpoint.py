"""The server checkpoint: atomic, verified, bound to its run configuration and to its ledgers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from privet.cli import main
from privet.privacy import ClientLevelRound, PoissonGaussianSteps, PrivacyLedger
from privet.privacy.storage import InUseError
from privet.server.app import clear_output
from privet.server.checkpoint import (
    CHECKPOINT_FILE,
    REPLACED_DIR,
    CheckpointError,
    ServerCheckpoint,
    check_run_ledgers,
    check_same_run,
    load_checkpoint,
    lock_run_folder,
    save_checkpoint,
    set_aside_run,
)
from privet.server.checkpoint import _canonical_digest as _canonical_digest
from privet.task.config import RunConfig

REPO = Path(__file__).resolve().parents[2]


def saved(tmp_path, server_round=2, config=None, strategy=None):
    config = config or RunConfig(output=str(tmp_path))
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]
    results = {"rounds": [{"round": r} for r in range(1, server_round + 1)]}
    checkpoint = ServerCheckpoint(
        server_round, config.to_json_dict(), weights, strategy or {"a": 1}, results
    )
    save_checkpoint(tmp_path, checkpoint)
    return checkpoint


def document(folder: Path) -> dict:
    return json.loads((folder / CHECKPOINT_FILE).read_text())


def rewrite(folder: Path, change, redigest: bool = False) -> None:
    """Edit checkpoint.json as a person (or a damaged disk) would: its digest is not updated,
    unless `redigest` (an edit made to look valid, to reach the checks behind the digest)."""
    data = document(folder)
    change(data)
    if redigest and "digest" in data:
        data["digest"] = _canonical_digest(data)
    (folder / CHECKPOINT_FILE).write_text(json.dumps(data, indent=1))


def test_round_trip_keeps_only_the_latest_weights(tmp_path):
    saved(tmp_path, 1)
    first = saved(tmp_path, 2)
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 2 and loaded.strategy == {"a": 1}
    for a, b in zip(loaded.weights, first.weights, strict=True):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    assert sorted(p.name for p in tmp_path.glob("checkpoint-model-*")) == ["checkpoint-model-2.npz"]


def test_corruption_and_a_different_configuration_are_refused(tmp_path):
    saved(tmp_path)
    weights = tmp_path / "checkpoint-model-2.npz"
    weights.write_bytes(weights.read_bytes()[:-3] + b"xyz")
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid Privet checkpoint"):
        load_checkpoint(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    checkpoint = saved(other, config=RunConfig(output=str(other), clients=7))
    with pytest.raises(CheckpointError, match="clients=7"):
        check_same_run(checkpoint, RunConfig(output=str(other), clients=5))
    check_same_run(checkpoint, RunConfig(output=str(other), clients=7, resume=True))
    # The folder a run started in is not part of it: a copied or moved run resumes where it is.
    check_same_run(checkpoint, RunConfig(output=str(tmp_path / "moved"), clients=7))


def test_resume_errors_are_one_line(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing to resume" in err
    saved(tmp_path, 5, RunConfig(output=str(tmp_path), rounds=5))
    assert main(["resume", str(tmp_path)]) == 2
    assert "finished all 5 rounds" in capsys.readouterr().err
    rewrite(tmp_path, lambda data: data.update(schema_version=99))
    assert main(["resume", str(tmp_path)]) == 2
    assert "schema version 99" in capsys.readouterr().err


def test_a_new_run_refuses_a_folder_with_a_checkpoint(tmp_path, capsys):
    saved(tmp_path, 1)
    assert main(["simulate", "--output", str(tmp_path), "--rounds", "1"]) == 2
    assert "checkpoint.json already exists" in capsys.readouterr().err


# -- validation (a damaged or edited checkpoint.json) -------------------------------------------


def test_a_single_bit_flip_is_caught_by_the_digest(tmp_path):
    saved(tmp_path, strategy={"sample_rate": 0.25})
    raw = bytearray((tmp_path / CHECKPOINT_FILE).read_bytes())
    at = raw.index(b'"sample_rate": 0.25') + len(b'"sample_rate": 0.')
    raw[at] ^= 0x01  # '2' -> '3': the stored sample rate becomes 0.35, still valid JSON
    (tmp_path / CHECKPOINT_FILE).write_bytes(bytes(raw))
    assert document(tmp_path)["strategy"]["sample_rate"] == 0.35
    with pytest.raises(CheckpointError, match="does not match its digest") as error:
        load_checkpoint(tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(round=4), "round 4, but its results hold rounds \\[1, 2\\]"),
        (lambda d: d.update(round=-5), "round must be a positive integer"),
        (lambda d: d.update(round=True), "round must be a positive integer"),
        (lambda d: d.update(round=9, config={**d["config"], "rounds": 5}), "beyond the run's 5"),
        (lambda d: d.update(junk=1), "unexpected field"),
        (lambda d: d.pop("strategy"), "missing field"),
        (lambda d: d.update(strategy=[1, 2]), "strategy must be an object"),
        (lambda d: d["weights"].update(file="../../elsewhere.npz"), "weights must be"),
        (
            lambda d: d["ledgers"].update({"../x.json": {"entries": 1, "sha256": "0" * 64}}),
            "x.json",
        ),
    ],
)
def test_a_checkpoint_that_was_edited_or_damaged_is_a_one_line_error(tmp_path, change, match):
    saved(tmp_path)
    rewrite(tmp_path, change, redigest=True)  # even with a matching digest
    with pytest.raises(CheckpointError, match=match) as error:
        load_checkpoint(tmp_path)
    assert "\n" not in str(error.value)
    (tmp_path / CHECKPOINT_FILE).unlink()
    saved(tmp_path)
    rewrite(tmp_path, change)  # as a damaged disk leaves it: the digest or the fields say so
    with pytest.raises(CheckpointError, match="not a valid Privet checkpoint|digest"):
        load_checkpoint(tmp_path)


def test_an_edit_that_keeps_the_checkpoint_consistent_still_breaks_its_digest(tmp_path):
    saved(tmp_path, 3)
    rewrite(tmp_path, lambda d: d.update(round=2, results={"rounds": [{"round": 1}, {"round": 2}]}))
    with pytest.raises(CheckpointError, match="does not match its digest"):
        load_checkpoint(tmp_path)
    rewrite(tmp_path, lambda d: d.update(digest="0" * 64))
    with pytest.raises(CheckpointError, match="does not match its digest"):
        load_checkpoint(tmp_path)


# -- ledger bindings ----------------------------------------------------------------------------


def run_with_ledgers(folder: Path, rounds: int = 2) -> None:
    """A run folder as the server leaves it after `rounds` rounds: ledgers, then the checkpoint."""
    server = PrivacyLedger("server", "client", 1e-5, folder / "ledgers" / "server.json")
    client = PrivacyLedger("client-0", "example", 1e-5, folder / "ledgers" / "client-0.json")
    for server_round in range(1, rounds + 1):
        client.record(server_round, [PoissonGaussianSteps(1.0, 0.1, 20)])
        server.record(server_round, [ClientLevelRound(1.0, 0.5)])
        saved(folder, server_round)


def edit_ledger(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


DAMAGES = {
    "deleted": (lambda led: (led / "server.json").unlink(), "server.json is missing"),
    "lowered steps": (
        lambda led: edit_ledger(
            led / "client-0.json", lambda d: d["entries"][0]["event"].update(steps=1)
        ),
        "entries were changed",
    ),
    "dropped entry": (
        lambda led: edit_ledger(led / "client-0.json", lambda d: d["entries"].pop()),
        "has 1 entries, but",
    ),
    "other delta": (
        lambda led: edit_ledger(led / "server.json", lambda d: d.update(delta=1e-3)),
        "entries were changed",
    ),
    "unreadable": (lambda led: (led / "server.json").write_text("{"), "not valid JSON"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_missing_shortened_or_edited_ledger_stops_resume_and_verify(tmp_path, damage):
    run_with_ledgers(tmp_path)
    load_checkpoint(tmp_path)  # intact: accepted
    assert check_run_ledgers(tmp_path) is None
    harm, match = DAMAGES[damage]
    harm(tmp_path / "ledgers")
    for check in (load_checkpoint, check_run_ledgers):
        with pytest.raises(CheckpointError, match=match) as error:
            check(tmp_path)
        assert "\n" not in str(error.value) and "restore" in str(error.value)


def test_a_ledger_may_grow_past_the_checkpoint_but_the_next_one_checks_the_chain(tmp_path):
    run_with_ledgers(tmp_path)
    client = PrivacyLedger.load(tmp_path / "ledgers" / "client-0.json")
    client.record(3, [PoissonGaussianSteps(1.0, 0.1, 20)])  # write-ahead of a round cut short
    PrivacyLedger("client-1", "example", 1e-5, tmp_path / "ledgers" / "client-1.json").record(
        3, [PoissonGaussianSteps(1.0, 0.1, 5)]
    )  # a ledger the checkpoint has not seen yet
    assert load_checkpoint(tmp_path).ledgers["client-0.json"].entries == 2
    saved(tmp_path, 3)
    bound = load_checkpoint(tmp_path).ledgers
    assert bound["client-0.json"].entries == 3 and bound["client-1.json"].entries == 1
    # A ledger that loses entries during a run stops the next checkpoint (nothing is written).
    edit_ledger(tmp_path / "ledgers" / "client-0.json", lambda d: d["entries"].pop(0))
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(CheckpointError, match="client-0.json has 2 entries, but"):
        saved(tmp_path, 4)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


def test_an_older_checkpoint_binds_nothing_but_a_lost_or_lower_ledger_is_still_refused(
    tmp_path, caplog
):
    run_with_ledgers(tmp_path)
    server_epsilon = PrivacyLedger.load(tmp_path / "ledgers" / "server.json").epsilon()

    def as_schema_1(data):
        data.update(schema_version=1)
        data.pop("ledgers"), data.pop("digest")
        data["results"]["rounds"][-1]["epsilon_client_level"] = server_epsilon

    rewrite(tmp_path, as_schema_1)
    assert load_checkpoint(tmp_path).ledgers is None
    assert "does not bind the ledgers" in caplog.text
    assert "older Privet" in check_run_ledgers(tmp_path)
    edit_ledger(tmp_path / "ledgers" / "server.json", lambda d: d["entries"].pop())
    with pytest.raises(CheckpointError, match="below the"):
        load_checkpoint(tmp_path)
    (tmp_path / "ledgers" / "server.json").unlink()
    with pytest.raises(CheckpointError, match="server.json is missing"):
        load_checkpoint(tmp_path)


# -- the run folder: one writer, nothing deleted ---------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from privet.server.checkpoint import lock_run_folder
lock = lock_run_folder(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


def hold_in_another_process(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 60
    lock_file = folder / ".privet.lock"
    while not (lock_file.exists() and lock_file.read_text().strip() == str(holder.pid)):
        assert holder.poll() is None, "the lock holder died"
        assert time.monotonic() < deadline, "the holder did not take the lock within 60 s"
        time.sleep(0.05)
    return holder


def test_set_aside_moves_an_earlier_run_and_never_deletes_a_ledger(tmp_path):
    run_with_ledgers(tmp_path)
    ledgers = {p.name: p.read_bytes() for p in (tmp_path / "ledgers").glob("*.json")}
    moved = clear_output(tmp_path)  # the CLI's --overwrite
    assert moved is not None and moved.parent == tmp_path / REPLACED_DIR
    assert {p.name: p.read_bytes() for p in (moved / "ledgers").glob("*.json")} == ledgers
    assert sorted(p.name for p in tmp_path.iterdir()) == [".privet.lock", REPLACED_DIR]
    assert set_aside_run(tmp_path) is None  # nothing left to move
    assert (moved / CHECKPOINT_FILE).exists()


def test_set_aside_is_refused_while_another_process_writes_the_run(tmp_path):
    run_with_ledgers(tmp_path)
    holder = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(InUseError, match=f"in use by process {holder.pid}") as error:
            set_aside_run(tmp_path)
        assert "\n" not in str(error.value)
        assert (tmp_path / "ledgers" / "server.json").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert set_aside_run(tmp_path) is not None  # the lock died with its process


def test_the_run_folder_lock_is_per_process_reentrant(tmp_path):
    with lock_run_folder(tmp_path / "run"):
        with lock_run_folder(tmp_path / "run"):
            pass
        # Still held by this process after the inner release: another process is refused.
        other = subprocess.run(
            [sys.executable, "-c", HOLDER, str(tmp_path / "run")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=60,
        )
        assert other.returncode != 0 and f"in use by process {os.getpid()}" in other.stderr
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700


def test_model_pt_is_written_like_every_file_of_a_run(tmp_path, monkeypatch):
    """Atomically, fsynced and owner-only (it was 0644 and not fsynced)."""
    import privet.privacy.storage as storage
    from privet.server.evaluation import ServerEvaluator
    from privet.server.results import write_model

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(storage.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    old = os.umask(0o002)
    try:
        evaluator = ServerEvaluator(RunConfig(output=str(tmp_path)))
        path = write_model(tmp_path / "run", evaluator.model, evaluator.initial_weights())
    finally:
        os.umask(old)
    assert len(synced) >= 2  # the file, then its folder
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.pt"]


def test_a_checkpoint_from_before_the_missing_value_policy_resumes_keeping_every_row(tmp_path):
    """Such runs kept rows with blank or "?" cells; dropping them now would change n_k and q."""
    saved(tmp_path)
    assert load_checkpoint(tmp_path, check=False).config["missing"] == "drop"

    def as_old_run(data):
        data.update(schema_version=1)
        data.pop("ledgers"), data.pop("digest")
        del data["config"]["missing"]

    rewrite(tmp_path, as_old_run)
    assert load_checkpoint(tmp_path, check=False).config["missing"] == "impute"
