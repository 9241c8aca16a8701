"""Sweeps as plain code: the grid, the folder, the table, failures and resuming."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import privet.simulations.engines as engines
from privet.server.checkpoint import RUN_LOCK_FILE
from privet.simulations import sweep_workers
from privet.simulations.inprocess_engine import run_in_process
from privet.simulations.sweep import (
    RoundProgress,
    RunOutcome,
    SweepError,
    SweepSpec,
    Variation,
    check_output,
    execute_run,
    load_spec,
    run_status,
    run_sweep,
)
from privet.task.config import RunConfig
from tests.reference_accounting import opacus_epsilon

BASE = {"clients": 3, "rounds": 2, "local-epochs": 1}
# For tests of the worker machinery: a fixed noise multiplier skips the calibration to a target ε
# (seconds of CPU per run), and the runs stay real.
QUICK = {**BASE, "noise-multiplier": 1.0}


def small_spec() -> SweepSpec:
    return SweepSpec(
        dict(BASE),
        (Variation.parse("target-epsilon=2,8"), Variation.parse("seed=0,1")),
    )


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, but lock files (their content is a PID)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.endswith(".lock")
    }


def read_table(output: Path) -> list[dict[str, str]]:
    with (output / "sweep.csv").open() as handle:
        return list(csv.DictReader(handle))


# -- the grid ---------------------------------------------------------------------------------


def test_variations_parse_and_convert_values_to_each_keys_type():
    eps = Variation.parse("target-epsilon=1,3,8")
    assert eps.keys == ("target-epsilon",) and eps.options == ((1.0,), (3.0,), (8.0,))
    linked = Variation.parse("partition/alpha=iid/0.5, dirichlet/0.1")
    assert linked.keys == ("partition", "alpha")
    assert linked.options == (("iid", 0.5), ("dirichlet", 0.1))
    secure = Variation.parse("secure_aggregation=false,true")
    assert secure.keys == ("secure-aggregation",) and secure.options == ((False,), (True,))
    from_toml = Variation.build("partition/alpha", [["iid", 0.5], ["dirichlet", 1]])
    assert from_toml.options == (("iid", 0.5), ("dirichlet", 1.0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("target-epsilon", "is not KEY=VALUE"),
        ("=1,2", "is not KEY=VALUE"),
        ("seed=a,b", "seed must be an integer, got 'a'"),
        ("learning-rate=0.1", "unknown configuration key 'learning-rate'"),
        ("partition/alpha=iid,dirichlet/0.1", "each value needs 2 parts"),
        ("output=a,b", "the sweep sets output for each run itself"),
        ("seed=1,1", "lists a value twice"),
    ],
)
def test_bad_variations_are_one_line_errors(text, message):
    with pytest.raises(SweepError, match=message) as raised:
        Variation.parse(text)
    assert "\n" not in str(raised.value)


def test_the_runs_are_the_product_of_the_variations_in_order():
    spec = SweepSpec(
        {"rounds": 2},
        (
            Variation.parse("target-epsilon=1,8"),
            Variation.parse("partition/alpha=iid/0.5,dirichlet/0.1"),
            Variation.parse("seed=0,1"),
        ),
    )
    runs = spec.runs()
    assert [run.name for run in runs] == [f"run-{i:03d}" for i in range(8)]
    assert runs[0].values == {"target-epsilon": 1.0, "partition": "iid", "alpha": 0.5, "seed": 0}
    assert runs[3].values == {
        "target-epsilon": 1.0,
        "partition": "dirichlet",
        "alpha": 0.1,
        "seed": 1,
    }
    assert runs[7].values["target-epsilon"] == 8.0
    assert spec.varied_keys == ["target-epsilon", "partition", "alpha", "seed"]
    with pytest.raises(SweepError, match="names seed twice"):
        SweepSpec({}, (Variation.parse("seed=0,1"), Variation.parse("seed=2")))


def test_a_varied_noise_key_replaces_the_other_noise_key_of_the_base(tmp_path):
    spec = SweepSpec(
        {"target-epsilon": 8.0, "client-target-epsilon": 5.0, "clients": 20, "delta": 1e-3},
        (
            Variation.parse("noise-multiplier=0.5,1.5"),
            Variation.parse("client-noise-multiplier=1.0"),
        ),
    )
    config = spec.config_of(spec.runs()[1], tmp_path)
    assert config.noise_multiplier == 1.5 and config.target_epsilon is None
    assert config.client_noise_multiplier == 1.0 and config.client_target_epsilon is None
    assert config.output == str(tmp_path / "runs" / "run-001")
    assert config.reproducible is True  # sweeps are simulations: reproducible by default


def test_an_invalid_combination_names_its_run(tmp_path):
    spec = SweepSpec(
        {"clients": 4},
        (Variation.parse("clients-per-round=2,9"),),
    )
    with pytest.raises(SweepError, match=r"run-001 \(clients-per-round=9\): clients-per-round"):
        check_output(spec, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_the_folder_must_hold_this_sweep_or_nothing(tmp_path):
    spec = small_spec()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="is not empty and holds no sweep"):
        run_sweep(spec, tmp_path / "busy", "in-process")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    with pytest.raises(SweepError, match="holds a single run, not a sweep"):
        check_output(spec, tmp_path / "run")
    other = SweepSpec(dict(BASE), (Variation.parse("seed=5"),))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "sweep.json").write_text(json.dumps(other.to_json()))
    with pytest.raises(SweepError, match="holds a different sweep"):
        check_output(spec, tmp_path / "other")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "sweep.json").write_text("{not json")
    with pytest.raises(SweepError, match="is not a readable sweep file"):
        load_spec(tmp_path / "broken")


# -- running ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The small sweep, run without interruption."""
    output = tmp_path_factory.mktemp("straight")
    outcomes = run_sweep(small_spec(), output, "in-process")
    return output, outcomes


def test_a_sweep_runs_every_combination_and_tables_them(straight):
    output, outcomes = straight
    assert [o.status for o in outcomes] == ["done"] * 4
    assert load_spec(output).to_json() == small_spec().to_json()
    rows = read_table(output)
    assert [row["run"] for row in rows] == ["run-000", "run-001", "run-002", "run-003"]
    assert [(row["target-epsilon"], row["seed"]) for row in rows] == [
        ("2.0", "0"),
        ("2.0", "1"),
        ("8.0", "0"),
        ("8.0", "1"),
    ]
    for row in rows:
        results = json.loads((output / row["results"]).read_text())
        assert row["status"] == "done" and results["finished"] is True
        assert float(row["epsilon_max"]) == results["privacy"]["epsilon_max"]
        independent = max(
            opacus_epsilon(c["sample_rate"], c["noise_multiplier"], c["steps"], c["delta"])
            for c in results["clients"]
        )
        assert float(row["epsilon_max"]) == pytest.approx(independent, rel=1e-6)
        assert float(row["final_accuracy"]) == results["rounds"][-1]["accuracy"]
        assert float(row["epsilon_max"]) <= float(row["target-epsilon"])
        assert int(row["rounds_completed"]) == 2 and row["engine"] == "in-process"
        assert results["config"]["seed"] == int(row["seed"])
    # Each run is exactly the simulation its settings describe.
    alone = run_in_process(
        RunConfig.from_mapping(
            {
                **BASE,
                "target-epsilon": 8.0,
                "seed": 1,
                "reproducible": True,
                "output": str(output.parent / "alone"),
            }
        )
    )
    assert alone.rounds[-1].accuracy == float(rows[3]["final_accuracy"])


def test_an_interrupted_sweep_continues_to_the_same_results(straight, tmp_path):
    output = tmp_path / "sweep"
    seen = []

    def interrupt(progress):
        seen.append((progress.run, progress.round))
        if (progress.run, progress.round) == ("run-001", 1):
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C after that round

    with pytest.raises(KeyboardInterrupt):
        run_sweep(small_spec(), output, "in-process", on_round=interrupt)
    assert run_status(output / "runs" / "run-000") == "done"
    assert run_status(output / "runs" / "run-001") == "interrupted"
    assert run_status(output / "runs" / "run-002") == "pending"
    again = []
    run_sweep(small_spec(), output, "in-process", on_round=lambda p: again.append((p.run, p.round)))
    assert ("run-000", 1) not in again  # finished runs are not run again
    assert again[0] == ("run-001", 2)  # the interrupted run continues after its last round
    reference = read_table(straight[0])
    for row, ref in zip(read_table(output), reference, strict=True):
        for key in ("status", "final_accuracy", "final_loss", "epsilon_max", "rounds_completed"):
            assert row[key] == ref[key], (row["run"], key)
    resumed = json.loads((output / "runs" / "run-001" / "results.json").read_text())
    assert resumed["resumed_after_rounds"] == [1]
    for name in ("run-001", "run-003"):
        with (
            np.load(output / "runs" / name / "checkpoint-model-2.npz") as a,
            np.load(straight[0] / "runs" / name / "checkpoint-model-2.npz") as b,
        ):
            assert all(np.array_equal(a[key], b[key]) for key in a.files)


def test_a_failed_run_is_recorded_the_sweep_goes_on_and_a_rerun_retries_it(tmp_path, monkeypatch):
    real = engines.run_simulation_with

    def flaky(engine, config, on_round=None, **kwargs):
        if config.output.endswith("run-000"):
            raise RuntimeError("the disk is full\nsecond line")
        return real(engine, config, on_round, **kwargs)

    monkeypatch.setattr(engines, "run_simulation_with", flaky)
    spec = SweepSpec(dict(BASE), (Variation.parse("seed=0,1"),))
    outcomes = run_sweep(spec, tmp_path, "in-process")
    assert [(o.run, o.status) for o in outcomes] == [("run-000", "failed"), ("run-001", "done")]
    assert outcomes[0].error == "RuntimeError: the disk is full second line"
    rows = read_table(tmp_path)
    assert rows[0]["status"] == "failed" and rows[0]["error"] == outcomes[0].error
    assert rows[1]["status"] == "done"
    monkeypatch.setattr(engines, "run_simulation_with", real)
    outcomes = run_sweep(spec, tmp_path, "in-process")
    assert [(o.run, o.status) for o in outcomes] == [("run-000", "done")]
    assert not (tmp_path / "runs" / "run-000" / "error.txt").exists()
    assert [row["status"] for row in read_table(tmp_path)] == ["done", "done"]


def test_parallel_workers_give_the_same_table_as_one_at_a_time(straight, tmp_path):
    output = tmp_path / "parallel"
    rounds = []
    outcomes = run_sweep(small_spec(), output, "in-process", jobs=2, on_round=rounds.append)
    assert sorted(o.run for o in outcomes) == ["run-000", "run-001", "run-002", "run-003"]
    assert {(p.run, p.round) for p in rounds} == {
        (f"run-00{i}", r) for i in range(4) for r in (1, 2)
    }
    for row, ref in zip(read_table(output), read_table(straight[0]), strict=True):
        for key in ("final_accuracy", "final_loss", "epsilon_max", "noise_multiplier_max"):
            assert row[key] == ref[key], (row["run"], key)


HOLD_SECONDS = 60.0


def worker_held_after_round_one(settings, name, engine, channel_folder, lifeline):
    """The sweep's worker, except that run-000 waits after reporting round 1 (to be killed).

    Module-level so that the fork server can import it. The wait makes the test independent of
    timing: however loaded the machine, run-000 is alive when the parent sees its round 1.
    """
    channel = sweep_workers.Channel(channel_folder)
    report = sweep_workers.worker_reporter(channel, lifeline)

    def report_then_wait(progress):
        report(progress)
        if name == "run-000":
            time.sleep(HOLD_SECONDS)  # bounded: the test kills it as soon as round 1 arrives

    channel.send(execute_run(settings, name, engine, report_then_wait))


def worker_killed_while_writing(settings, name, engine, channel_folder, lifeline):
    """run-000 reports round 1, then is killed half-way through writing its next report."""
    channel = sweep_workers.Channel(channel_folder)
    report = sweep_workers.worker_reporter(channel, lifeline)

    def report_then_die(progress):
        report(progress)
        if name == "run-000":
            with (Path(channel_folder) / ".00000002.tmp").open("w") as handle:
                handle.write('{"kind": "round", "run": "run-0')
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    channel.send(execute_run(settings, name, engine, report_then_die))


def test_a_worker_that_dies_is_a_failed_run_and_the_others_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_workers, "_worker", worker_held_after_round_one)
    killed = []

    def kill_first_worker(progress):
        if progress.run == "run-000" and progress.round == 1:
            # As if the kernel killed the worker (out of memory), found by its PID.
            (worker,) = [
                p for p in multiprocessing.active_children() if p.name == "privet-sweep-run-000"
            ]
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    spec = SweepSpec({**QUICK, "rounds": 3}, (Variation.parse("seed=0,1"),))
    outcomes = run_sweep(spec, tmp_path, "in-process", jobs=2, on_round=kill_first_worker)
    assert len(killed) == 1
    assert sorted((o.run, o.status) for o in outcomes) == [
        ("run-000", "failed"),
        ("run-001", "done"),
    ]
    failed = next(o for o in outcomes if o.run == "run-000")
    assert "exit code -9" in failed.error and "\n" not in failed.error
    assert "exit code -9" in (tmp_path / "runs" / "run-000" / "error.txt").read_text()
    assert [row["status"] for row in read_table(tmp_path)] == ["failed", "done"]
    assert multiprocessing.active_children() == []
    # Running the sweep again retries the failed run from scratch; the killed attempt's files
    # are moved aside with its ledgers, never deleted.
    ledgers = files_of(tmp_path / "runs" / "run-000" / "ledgers")
    assert any(name.startswith("client-") for name in ledgers)
    monkeypatch.undo()
    (again,) = run_sweep(spec, tmp_path, "in-process", jobs=2)
    assert (again.run, again.status) == ("run-000", "done")
    assert again.set_aside is not None and again.set_aside.startswith("runs/run-000/replaced/")
    kept = tmp_path / again.set_aside
    assert files_of(kept / "ledgers") == ledgers
    assert "exit code -9" in (kept / "error.txt").read_text()
    rows = read_table(tmp_path)
    assert [row["status"] for row in rows] == ["done", "done"]
    assert [row["earlier_attempts"] for row in rows] == [again.set_aside, ""]


def test_a_worker_killed_while_writing_a_report_blocks_nobody(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_workers, "_worker", worker_killed_while_writing)
    spec = SweepSpec(QUICK, (Variation.parse("seed=0,1,2"),))
    rounds = []
    outcomes = run_sweep(spec, tmp_path, "in-process", jobs=2, on_round=rounds.append)
    assert sorted((o.run, o.status) for o in outcomes) == [
        ("run-000", "failed"),
        ("run-001", "done"),
        ("run-002", "done"),
    ]
    assert "exit code -9" in next(o for o in outcomes if o.run == "run-000").error
    assert [(p.run, p.round) for p in rounds if p.run == "run-000"] == [("run-000", 1)]
    assert multiprocessing.active_children() == []


def test_reports_are_read_whole_in_order_and_a_damaged_one_is_skipped(tmp_path):
    channel, inbox = sweep_workers.Channel(tmp_path), sweep_workers.Inbox(tmp_path)
    assert inbox.receive() == []
    first = RoundProgress("run-000", 1, 2, 0.5, float("inf"))
    channel.send(first)
    (tmp_path / ".00000002.tmp").write_text('{"kind": "rou')  # a write cut short: never read
    assert inbox.receive() == [first]
    channel.sent = 1
    (tmp_path / "00000002.json").write_text("not json")
    channel.sent = 2
    outcome = RunOutcome("run-000", "failed", "why", None)
    channel.send(outcome)
    assert inbox.receive() == [outcome]  # the damaged report is logged and skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == [".00000002.tmp"]


def test_a_worker_whose_sweep_is_gone_stops_after_its_round_and_leaves_it_resumable(tmp_path):
    spec = SweepSpec({**QUICK, "rounds": 3}, (Variation.parse("seed=0"),))
    (run,) = spec.runs()
    settings = spec.settings_of(run, tmp_path)
    reader, writer = multiprocessing.Pipe(duplex=False)
    channel_folder = tmp_path / "channels" / "run-000"
    channel_folder.mkdir(parents=True)

    class ParentDiesAfterRoundOne(sweep_workers.Channel):
        def send(self, report):
            super().send(report)
            writer.close()  # the parent is killed right after it got round 1

    sweep_workers.work(
        settings, run.name, "in-process", ParentDiesAfterRoundOne(channel_folder), reader
    )
    reader.close()
    # It sent round 1 and no outcome, and removed its reports: nobody was left to read them.
    assert not (tmp_path / "channels").exists()
    run_dir = tmp_path / "runs" / "run-000"
    assert run_status(run_dir) == "interrupted"  # not failed: nothing went wrong with the run
    assert json.loads((run_dir / "checkpoint.json").read_text())["round"] == 2
    assert not (run_dir / "error.txt").exists()
    outcome = execute_run(settings, run.name, "in-process")
    assert (outcome.status, outcome.set_aside) == ("done", None)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_after_rounds"] == [2]


def test_an_interrupted_parallel_sweep_stops_every_worker(tmp_path):
    spec = SweepSpec({**QUICK, "rounds": 50}, (Variation.parse("seed=0,1,2"),))

    def interrupt(progress):
        if progress.round == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, "in-process", jobs=2, on_round=interrupt)
    assert multiprocessing.active_children() == []  # no worker outlives the sweep
    statuses = [run_status(tmp_path / "runs" / name) for name in ("run-000", "run-001", "run-002")]
    assert statuses[2] == "pending" and "done" not in statuses
    rounds = [
        json.loads((tmp_path / "runs" / name / "checkpoint.json").read_text())["round"]
        for name in ("run-000", "run-001")
        if (tmp_path / "runs" / name / "checkpoint.json").exists()
    ]
    assert rounds and max(rounds) < 50


# -- a sweep folder moved or copied; nothing is ever deleted -----------------------------------


def interrupted_sweep(output: Path) -> SweepSpec:
    """A two-run sweep stopped (Ctrl-C) after round 1 of run-000, as a user leaves it."""
    spec = SweepSpec(QUICK, (Variation.parse("seed=0,1"),))

    def interrupt(progress):
        if (progress.run, progress.round) == ("run-000", 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, output, "in-process", on_round=interrupt)
    assert run_status(output / "runs" / "run-000") == "interrupted"
    return spec


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_sweep_continues_where_it_now_is(tmp_path, how):
    first = tmp_path / "first"
    spec = interrupted_sweep(first)
    ledgers = files_of(first / "runs" / "run-000" / "ledgers")
    assert ledgers
    there = tmp_path / "elsewhere" / "sweep"
    there.parent.mkdir()
    if how == "moved":
        os.rename(first, there)
    else:
        shutil.copytree(first, there)
    before = files_of(first) if how == "copied" else {}
    outcomes = run_sweep(spec, there, "in-process")
    assert [(o.run, o.status, o.set_aside) for o in outcomes] == [
        ("run-000", "done", None),
        ("run-001", "done", None),
    ]
    results = json.loads((there / "runs" / "run-000" / "results.json").read_text())
    assert results["resumed_after_rounds"] == [1]  # continued, not started again
    assert [row["status"] for row in read_table(there)] == ["done", "done"]
    assert sorted(p.name for p in (there / "runs").iterdir()) == ["run-000", "run-001"]
    if how == "moved":
        assert not first.exists()  # nothing is written where the sweep used to be
    else:
        assert files_of(first) == before  # the original is untouched
    # The ledgers only grew: every release recorded before the move is still recorded.
    after = files_of(there / "runs" / "run-000" / "ledgers")
    for name, content in ledgers.items():
        if name.endswith(".json") and not name.startswith("."):
            old = json.loads(content)["entries"]
            assert json.loads(after[name])["entries"][: len(old)] == old


def test_a_run_cut_short_before_its_first_checkpoint_starts_again_keeping_its_ledgers(tmp_path):
    spec = SweepSpec(QUICK, (Variation.parse("seed=0"),))
    run_dir = tmp_path / "runs" / "run-000"
    # As a run killed during round 1 leaves it: ledgers written ahead, no checkpoint yet.
    (run_dir / "ledgers").mkdir(parents=True)
    (run_dir / "ledgers" / "client-0.json").write_text('{"as": "written before the kill"}')
    (tmp_path / "sweep.json").write_text(json.dumps(spec.to_json()))
    assert run_status(run_dir) == "pending"
    (outcome,) = run_sweep(spec, tmp_path, "in-process")
    assert (outcome.run, outcome.status) == ("run-000", "done")
    assert outcome.set_aside is not None and outcome.set_aside.startswith("runs/run-000/replaced/")
    kept = tmp_path / outcome.set_aside / "ledgers" / "client-0.json"
    assert kept.read_text() == '{"as": "written before the kill"}'
    (row,) = read_table(tmp_path)
    assert (row["status"], row["earlier_attempts"]) == ("done", outcome.set_aside)
    assert run_status(run_dir) == "done"


def test_a_run_folder_another_process_writes_is_left_alone(tmp_path):
    first = tmp_path / "sweep"
    spec = interrupted_sweep(first)
    run_dir = first / "runs" / "run-000"
    (run_dir / "error.txt").write_text("RuntimeError: as if it had failed\n")
    assert run_status(run_dir) == "failed"  # the sweep would set it aside and start again ...
    before = files_of(run_dir)
    holder = subprocess.Popen(  # ... but another process (a `privet resume`) holds its lock
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.pwrite(fd, str(os.getpid()).encode(), 0)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
            str(run_dir / RUN_LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        outcome = execute_run(spec.settings_of(spec.runs()[0], first), "run-000", "in-process")
    finally:
        holder.kill()  # by its PID
        holder.wait(10)
    assert outcome.status == "failed" and outcome.set_aside is None
    assert f"in use by process {holder.pid}" in outcome.error and "\n" not in outcome.error
    assert files_of(run_dir) == before  # nothing moved, nothing written
