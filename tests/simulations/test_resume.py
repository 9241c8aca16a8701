"""A simulation killed after a round and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from privet.cli import main
from privet.simulations.inprocess_engine import run_in_process
from privet.task.config import RunConfig

FLAGS = {
    "clients": 6,
    "clients_per_round": 4,
    "client_noise_multiplier": 1.0,
    "rounds": 3,
    "local_epochs": 1,
    "seed": 5,
}  # `privet simulate` is reproducible by default; the in-process run says so explicitly


def cli_flags(output: Path) -> list[str]:
    flags = []
    for key, value in FLAGS.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return [*flags, "--output", str(output)]


def checkpoint_round(output: Path) -> int:
    try:
        return int(json.loads((output / "checkpoint.json").read_text())["round"])
    except (OSError, ValueError, KeyError):
        return 0


def kill_after_first_round(output: Path) -> None:
    """Start `privet simulate` as its own process group and SIGKILL it once round 1 is saved."""
    privet = Path(sys.executable).with_name("privet")
    process = subprocess.Popen(
        [str(privet), "simulate", *cli_flags(output)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while checkpoint_round(output) < 1:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the server and its Ray workers, by PID
        process.wait()


@pytest.mark.long
def test_a_killed_run_resumes_to_the_uninterrupted_results(tmp_path, capsys):
    straight = tmp_path / "straight"
    # The uninterrupted reference runs in process: for a seed it is the Flower engine's run bit for
    # bit (tests/simulations/test_inprocess_engine.py), and it saves this test a third Ray start.
    run_in_process(RunConfig(**FLAGS, reproducible=True, output=str(straight)))
    resumed = tmp_path / "resumed"
    kill_after_first_round(resumed)
    killed_at = checkpoint_round(resumed)
    assert 1 <= killed_at < FLAGS["rounds"]
    assert main(["resume", str(resumed)]) == 0
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((resumed / "results.json").read_text())
    assert b["resumed_after_rounds"] == [killed_at] and b["finished"] is True
    assert [r["round"] for r in b["rounds"]] == [1, 2, 3]  # each round once
    for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
        # The restored sampling and noise generators reproduce the uninterrupted run.
        assert rb["sampled"] == ra["sampled"]
        assert rb["accuracy"] == ra["accuracy"] and rb["loss"] == ra["loss"]
        assert rb["epsilon_client_level"] == ra["epsilon_client_level"]
    for key, value in torch.load(straight / "model.pt", weights_only=True).items():
        assert torch.equal(value, torch.load(resumed / "model.pt", weights_only=True)[key])
    # ε continued from the ledgers, never from zero; a round interrupted after a client had
    # already trained is charged twice (the release happened), never less.
    for client in b["clients"]:
        before = next(c for c in a["clients"] if c["id"] == client["id"])
        assert client["epsilon"] >= before["epsilon"]
    assert b["client_level"]["epsilon"] == a["client_level"]["epsilon"]
    assert main(["budget", "--verify", str(resumed)]) == 0
    assert "refuted" not in capsys.readouterr().out.lower()


class CrashAfterRoundError(RuntimeError):
    """Stands in for a server killed right after a round's checkpoint was written."""


def _as_schema_1(ledger_file: Path) -> None:
    """Rewrite a server ledger the way Privet wrote it before the count's sensitivity was kept:
    schema 1, the count recorded as multiplier 2·σ_b (while that code released the raw count)."""
    data = json.loads(ledger_file.read_text())
    data["schema_version"] = 1
    for entry in data["entries"]:
        event = entry["event"]
        std = event.pop("count_noise_std")
        event.pop("count_sensitivity")
        event["count_noise_multiplier"] = None if std is None else 2 * std
    ledger_file.write_text(json.dumps(data))
    # ... beside a schema-1 checkpoint, which had no digest and did not bind the ledgers.
    checkpoint_file = ledger_file.parent.parent / "checkpoint.json"
    checkpoint = json.loads(checkpoint_file.read_text())
    checkpoint["schema_version"] = 1
    del checkpoint["ledgers"], checkpoint["digest"]
    checkpoint_file.write_text(json.dumps(checkpoint))


def test_resume_recharges_an_old_ledgers_adaptive_rounds_at_their_real_sensitivity(
    tmp_path, capsys, caplog
):
    import dp_accounting

    from tests.reference_accounting import ORDERS

    output = tmp_path / "run"
    config = RunConfig(
        clients=20,
        clients_per_round=5,
        client_noise_multiplier=1.0,
        adaptive_clipping=True,
        clip_count_stddev=2.0,
        delta=1e-3,
        rounds=3,
        local_epochs=1,
        seed=5,
        reproducible=True,
        output=str(output),
    )

    def crash(record) -> None:
        raise CrashAfterRoundError(f"crashed after round {record.round}")

    with pytest.raises(CrashAfterRoundError):
        run_in_process(config, crash)
    assert checkpoint_round(output) == 1
    _as_schema_1(output / "ledgers" / "server.json")
    assert main(["resume", str(output)]) == 0
    assert "re-charged at sensitivity 1" in caplog.text
    results = json.loads((output / "results.json").read_text())
    level = results["client_level"]
    z_update = level["update_noise_multiplier"]
    sigma_b = level["adaptive_clipping"]["count_stddev"]
    assert level["adaptive_clipping"]["count_sensitivity"] == 0.5

    def round_event(count_sensitivity: float) -> dp_accounting.DpEvent:
        return dp_accounting.PoissonSampledDpEvent(
            0.25,
            dp_accounting.ComposedDpEvent(
                [
                    dp_accounting.GaussianDpEvent(z_update),
                    dp_accounting.GaussianDpEvent(sigma_b / count_sensitivity),
                ]
            ),
        )

    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    accountant.compose(round_event(1.0))  # round 1, by the old code: the raw count
    accountant.compose(dp_accounting.SelfComposedDpEvent(round_event(0.5), 2))  # rounds 2, 3
    assert level["epsilon"] == pytest.approx(accountant.get_epsilon(1e-3), rel=1e-3)
    assert main(["budget", "--verify", str(output)]) == 0
    assert "refuted" not in capsys.readouterr().out.lower()


# -- one writer per run, ledgers bound to the checkpoint, runs that move -------------------------

INTERRUPTED = {
    "clients": 6,
    "clients_per_round": 4,
    "client_noise_multiplier": 1.0,
    "rounds": 4,
    "local_epochs": 1,
    "seed": 5,
    "reproducible": True,
}
PRIVET = Path(sys.executable).with_name("privet")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """An in-process run with client-level DP that crashed right after round 2 of 4."""
    output = tmp_path_factory.mktemp("template") / "run"

    def crash(record) -> None:
        if record.round == 2:
            raise CrashAfterRoundError("crashed after round 2")

    with pytest.raises(CrashAfterRoundError):
        run_in_process(RunConfig(**INTERRUPTED, output=str(output)), crash)
    assert checkpoint_round(output) == 2
    return output


def copy_run(template: Path, target: Path) -> Path:
    """`cp -a`: the whole folder, modes and times kept."""
    shutil.copytree(template, target, symlinks=True)
    return target


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def trained_client_ledger(run: Path) -> Path:
    return next(
        path
        for path in sorted((run / "ledgers").glob("client-*.json"))
        if json.loads(path.read_text())["entries"]
    )


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


LEDGER_DAMAGE = {
    "server.json deleted": lambda run: (run / "ledgers" / "server.json").unlink(),
    "steps lowered": lambda run: edit_json(
        trained_client_ledger(run), lambda d: d["entries"][0]["event"].update(steps=1)
    ),
    "entries dropped": lambda run: edit_json(
        run / "ledgers" / "server.json", lambda d: d.update(entries=d["entries"][:1])
    ),
}


@pytest.mark.parametrize("damage", sorted(LEDGER_DAMAGE))
def test_a_missing_shortened_or_edited_ledger_stops_resume_and_verify(
    interrupted, tmp_path, capsys, damage
):
    run = copy_run(interrupted, tmp_path / "run")
    LEDGER_DAMAGE[damage](run)
    before = snapshot(run)
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("privet: error: privacy ledger")
    assert "restore the ledger" in err
    assert main(["budget", "--verify", str(run)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "restore the ledger" in err
    assert "CONFIRMED" not in captured.out
    assert snapshot(run) == before  # nothing ran, nothing was rewritten


def test_a_ledger_that_grew_past_the_checkpoint_resumes(interrupted, tmp_path):
    """A write-ahead entry of round 3, recorded before the crash, is kept and charged."""
    from privet.privacy import PoissonGaussianSteps, PrivacyLedger

    run = copy_run(interrupted, tmp_path / "run")
    ledger = PrivacyLedger.load(trained_client_ledger(run))
    before = ledger.entries
    ledger.record(3, [PoissonGaussianSteps(1.0, 0.01, 3)])
    assert main(["resume", str(run)]) == 0
    after = PrivacyLedger.load(ledger.path).entries
    assert after[: len(before) + 1] == (*before, ledger.entries[-1])


def test_a_copied_run_resumes_in_the_copy_and_a_moved_run_where_it_is(interrupted, tmp_path):
    original = copy_run(interrupted, tmp_path / "A")
    before = snapshot(original)
    copy = copy_run(original, tmp_path / "B")  # cp -a A B
    assert main(["resume", str(copy)]) == 0
    assert snapshot(original) == before  # A is untouched
    results = json.loads((copy / "results.json").read_text())
    assert results["finished"] is True and results["config"]["output"] == str(copy)
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3, 4]
    moved = tmp_path / "C"
    original.rename(moved)
    assert main(["resume", str(moved)]) == 0
    assert json.loads((moved / "results.json").read_text())["finished"] is True
    assert not (tmp_path / "A").exists()
    # Owner-only files and folders; nothing half-written left behind.
    for path in [copy, *copy.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        assert not path.name.endswith(".tmp"), path


def test_stale_temporaries_of_interrupted_writes_are_removed_on_resume(interrupted, tmp_path):
    run = copy_run(interrupted, tmp_path / "run")
    ours = [
        run / "ledgers" / ".client-0.json.k2j4h6g8.tmp",
        run / "ledgers" / ".server.json.a1b2c3d4.tmp",
        run / ".results.json.zz00yy11.tmp",
        run / ".checkpoint-model-3.npz.q1w2e3r4.tmp",
    ]
    others = [run / "ledgers" / ".client-0.json.tmp", run / "notes.tmp", run / ".mine.x1y2z3w4.tmp"]
    for path in ours + others:
        path.write_text('{"half": ')
    assert main(["resume", str(run)]) == 0
    assert [path for path in ours if path.exists()] == []
    assert all(path.exists() for path in others)


HOLD_RUN = """
import sys, time
from pathlib import Path
from privet.server.checkpoint import lock_run_folder
lock_run_folder(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(300)
"""
HOLD_LEDGER = HOLD_RUN.replace(
    "privet.server.checkpoint import lock_run_folder", "privet.privacy.ledger import ledger_lock"
).replace("lock_run_folder(Path(sys.argv[1]))", "ledger_lock(sys.argv[1]).acquire()")


def hold(script: str, path: Path) -> subprocess.Popen:
    """Another process that holds a lock until it is killed; waits (bounded) until it does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], 120)
    assert ready and holder.stdout.readline().strip() == "held", "the holder did not start"
    return holder


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def test_a_run_held_by_another_process_refuses_resume_and_simulate_until_it_dies(
    interrupted, tmp_path, capsys
):
    run = copy_run(interrupted, tmp_path / "run")
    fresh = tmp_path / "fresh"
    holders = [hold(HOLD_RUN, run), hold(HOLD_RUN, fresh)]
    try:
        assert main(["resume", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert f"run folder {run} is in use by process {holders[0].pid}" in err
        flags = ["--engine", "in-process", "--rounds", "1", "--clients", "3"]
        assert main(["simulate", *flags, "--output", str(fresh)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"in use by process {holders[1].pid}" in err
        assert checkpoint_round(run) == 2 and not (fresh / "results.json").exists()
    finally:
        for holder in holders:
            kill(holder)
    assert main(["resume", str(run)]) == 0  # the lock died with its process: no stale lock


@pytest.mark.long
def test_two_privet_resumes_of_one_run_one_is_refused_naming_the_other(interrupted, tmp_path):
    run = copy_run(interrupted, tmp_path / "run")
    lock_file = run / ".privet.lock"

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [str(PRIVET), "resume", str(run)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    first = start()
    second = None
    try:
        deadline = time.monotonic() + 180
        while lock_file.read_text().strip() != str(first.pid):
            assert first.poll() is None, "the first resume ended before it took the lock"
            assert time.monotonic() < deadline, "the first resume did not take the lock"
            time.sleep(0.02)
        # Paused while it holds the lock, so the two surely overlap however fast it would run.
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            second = start()
            _, second_err = second.communicate(timeout=300)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        _, first_err = first.communicate(timeout=300)
    finally:
        for process in (first, second):
            if process is not None:
                kill(process)
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    line = second_err.strip()
    assert line.count("\n") == 0 and f"is in use by process {first.pid}" in line
    results = json.loads((run / "results.json").read_text())
    assert results["finished"] is True and results["resumed_after_rounds"] == [2]
    assert main(["budget", "--verify", str(run)]) == 0


def test_a_client_still_training_elsewhere_is_refused_and_its_ledger_kept(
    interrupted, tmp_path, caplog
):
    run = copy_run(interrupted, tmp_path / "run")
    busy = trained_client_ledger(run)
    before = busy.read_bytes()
    holder = hold(HOLD_LEDGER, busy)
    try:
        assert main(["resume", str(run)]) == 0
    finally:
        kill(holder)
    # Refused before it trained, naming the process that holds the ledger.
    assert f"raised InUseError: privacy ledger {busy} is in use by process {holder.pid}" in (
        caplog.text
    )
    assert busy.read_bytes() == before  # never overwritten by a second writer
    client = int(busy.stem.removeprefix("client-"))
    rounds = json.loads((run / "results.json").read_text())["rounds"]
    assert all(client not in r["sampled"] or r["failed"] >= 1 for r in rounds[2:])


def test_overwrite_moves_the_earlier_run_aside_with_its_ledgers(interrupted, tmp_path):
    run = copy_run(interrupted, tmp_path / "run")
    ledgers = {p.name: p.read_bytes() for p in (run / "ledgers").glob("*.json")}
    flags = ["--engine", "in-process", "--rounds", "1", "--clients", "3", "--overwrite"]
    assert main(["simulate", *flags, "--output", str(run)]) == 0
    (replaced,) = (run / "replaced").iterdir()
    assert {p.name: p.read_bytes() for p in (replaced / "ledgers").glob("*.json")} == ledgers
    assert (replaced / "checkpoint.json").exists()
    assert json.loads((run / "results.json").read_text())["config"]["rounds"] == 1
