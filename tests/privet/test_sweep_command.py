"""`privet sweep` as a user meets it: one-line errors, a TOML grid, a killed sweep resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privet.cli import main
from privet.simulations.inprocess_engine import run_in_process
from privet.simulations.sweep import SweepError
from privet.task.config import ConfigError, RunConfig

PRIVET = str(Path(sys.executable).parent / "privet")


def one_line_error(capsys, argv) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured
    assert len(lines) == 1 and lines[0].startswith("privet: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "nothing to sweep: give at least one --vary"),
        (["--vary", "seed=a"], "--vary seed: seed must be an integer, got 'a'"),
        (["--vary", "epsilon=1,2"], "unknown configuration key 'epsilon'"),
        (
            ["--vary", "seed=0,1", "--jobs", "2", "--engine", "flower"],
            "--jobs above 1 needs --engine in-process",
        ),
        (["--vary", "clients=5,5000"], "run-001 (clients=5000): 5000 clients but only 1437"),
        (
            ["--vary", "target-epsilon=8,1e-9"],
            "run-001 (target-epsilon=1e-09): target epsilon 1e-09 is unreachable",
        ),
    ],
)
def test_bad_sweeps_are_one_line_errors_that_write_nothing(capsys, tmp_path, flags, message):
    output = tmp_path / "sweep"
    line = one_line_error(capsys, ["sweep", *flags, "--output", str(output)])
    assert message in line
    assert not output.exists()


def test_bad_jobs_and_a_bad_vary_table_are_one_line_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["sweep", "--vary", "seed=0", "--jobs", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected a positive integer, got '0'" in err[0]
    config = tmp_path / "grid.toml"
    config.write_text("rounds = 1\n[vary]\nseed = 3\n")
    output = tmp_path / "sweep"
    line = one_line_error(capsys, ["sweep", "--config", str(config), "--output", str(output)])
    assert "[vary] seed must be a list of values" in line
    config.write_text("rounds = 1\n[variations]\nseed = [3]\n")
    line = one_line_error(capsys, ["sweep", "--config", str(config), "--output", str(output)])
    assert "unexpected table(s) variations" in line
    assert not output.exists()


def test_resuming_a_damaged_sweep_is_a_one_line_error(capsys, tmp_path):
    output = tmp_path / "sweep"
    output.mkdir()
    (output / "sweep.json").write_text('{"format": "privet-sweep", "version": 1')
    line = one_line_error(capsys, ["resume", str(output)])
    assert "sweep.json is not a readable sweep file" in line
    assert (output / "sweep.json").read_text().endswith('"version": 1')  # left as it was


def test_another_sweep_in_the_folder_is_refused_and_kept(capsys, tmp_path):
    output = tmp_path / "sweep"
    args = ["sweep", "--rounds", "1", "--clients", "2", "--output", str(output)]
    assert main([*args, "--vary", "seed=0"]) == 0
    before = (output / "sweep.json").read_text()
    capsys.readouterr()
    line = one_line_error(capsys, [*args, "--vary", "seed=1"])
    assert "holds a different sweep" in line
    assert (output / "sweep.json").read_text() == before


@pytest.mark.long
def test_a_toml_file_gives_the_settings_and_the_grid(capsys, tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(
        'clients = 3\nrounds = 1\nlocal-epochs = 1\n\n[vary]\n"partition/alpha" = '
        '[["iid", 0.5], ["dirichlet", 0.3]]\nseed = [0, 1]\n'
    )
    output = tmp_path / "grid"
    assert (
        main(["sweep", "--config", str(config), "--vary", "seed=4", "--output", str(output)]) == 0
    )
    saved = json.loads((output / "sweep.json").read_text())
    assert saved["base"] == {"clients": 3, "rounds": 1, "local-epochs": 1}
    # The flag replaced the file's list for seed; the file's linked keys stayed.
    assert saved["vary"] == {"partition/alpha": [["iid", 0.5], ["dirichlet", 0.3]], "seed": [4]}
    with (output / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["partition"], r["alpha"], r["seed"], r["status"]) for r in rows] == [
        ("iid", "0.5", "4", "done"),
        ("dirichlet", "0.3", "4", "done"),
    ]
    out = capsys.readouterr().out
    flat = out.replace("\n", "")  # the console wraps long paths mid-name
    assert "privet report" in flat and "sweep.csv" in flat


def checkpointed_rounds(output: Path) -> list[int]:
    rounds = []
    for checkpoint in output.glob("runs/*/checkpoint.json"):
        try:
            rounds.append(int(json.loads(checkpoint.read_text())["round"]))
        except (OSError, ValueError, KeyError):
            continue
    return rounds


@pytest.mark.long
def test_a_killed_sweep_resumes_to_the_results_of_each_run_alone(tmp_path):
    output = tmp_path / "sweep"
    settings = ["--clients", "4", "--rounds", "4", "--local-epochs", "1"]
    process = subprocess.Popen(
        [
            PRIVET,
            "sweep",
            *settings,
            "--vary",
            "seed=0,1,2,3",
            "--jobs",
            "2",
            "--output",
            str(output),
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not checkpointed_rounds(output):
            assert process.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no run checkpointed within 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and its workers, by process group
        process.wait()
    statuses = json.loads((output / "sweep.json").read_text())["runs"]
    assert len(statuses) == 4
    unfinished = [
        p
        for p in output.glob("runs/*")
        if not (p / "results.json").exists()
        or not json.loads((p / "results.json").read_text())["finished"]
    ]
    assert len(unfinished) + (4 - len(list(output.glob("runs/*")))) >= 1
    assert main(["resume", str(output)]) == 0
    with (output / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["done"] * 4
    for seed, row in enumerate(rows):
        alone = run_in_process(
            RunConfig(
                clients=4,
                rounds=4,
                local_epochs=1,
                seed=seed,
                reproducible=True,
                output=str(tmp_path / f"alone-{seed}"),
            )
        )
        # The same model sequence (the restored generators replay the same noise) ...
        assert float(row["final_accuracy"]) == alone.rounds[-1].accuracy
        # ... and never less privacy spent: a round cut short after its clients trained is
        # charged again when it reruns (the ledger was written before the update left).
        assert float(row["epsilon_max"]) >= max(c.epsilon for c in alone.clients)
        results = json.loads((output / row["results"]).read_text())
        assert [r["round"] for r in results["rounds"]] == [1, 2, 3, 4]
        assert main(["budget", "--verify", str(output / "runs" / row["run"])]) == 0


@pytest.mark.long
def test_parallel_workers_start_cleanly_after_the_sweep_has_used_torch(tmp_path, mnist_dir):
    """Planning MNIST runs uses torch's OpenMP threads in the sweep's own process; a worker
    forked from that process would hang in its first parallel operation (GNU OpenMP does not
    survive fork), so workers must come from a clean fork server."""
    output = tmp_path / "sweep"
    command = [
        PRIVET,
        "sweep",
        "--dataset",
        "mnist",
        "--data-dir",
        str(mnist_dir),
        "--model",
        "mlp",
        "--clients",
        "2",
        "--rounds",
        "1",
        "--local-epochs",
        "1",
        "--batch-size",
        "512",
        "--vary",
        "seed=0,1",
        "--jobs",
        "2",
        "--output",
        str(output),
    ]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        assert process.wait(timeout=300) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the hung sweep and its workers, by PID
            process.wait()
    with (output / "sweep.csv").open() as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["done", "done"]


def live_processes_in_group(group: int) -> list[int]:
    """PIDs of the processes of a process group that have not ended (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) "
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def rounds_by_run(output: Path) -> dict[str, int]:
    rounds = {}
    for checkpoint in output.glob("runs/*/checkpoint.json"):
        try:
            rounds[checkpoint.parent.name] = int(json.loads(checkpoint.read_text())["round"])
        except (OSError, ValueError, KeyError):
            continue
    return rounds


def ledger_entries(folder: Path) -> dict[str, list]:
    return {
        str(path.relative_to(folder)): json.loads(path.read_text())["entries"]
        for path in folder.glob("runs/*/ledgers/*.json")
    }


@pytest.mark.long
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_sweep_killed_alone_stops_its_workers_and_resumes_after_a_move(tmp_path):
    """kill -9 of the sweep process alone: its workers notice and stop after their round (they
    do not write on beside a later resume); the folder, moved elsewhere, resumes there, and no
    ledger entry is lost."""
    output = tmp_path / "sweep"
    process = subprocess.Popen(
        [
            PRIVET,
            "sweep",
            *("--clients", "3", "--rounds", "12", "--local-epochs", "1"),
            *("--noise-multiplier", "1.0", "--vary", "seed=0,1", "--jobs", "2"),
            *("--output", str(output)),
        ],
        start_new_session=True,  # its own process group: the sweep, its fork server, its workers
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (seen := rounds_by_run(output)):
            assert process.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no run checkpointed within 240 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # the sweep process only, by its PID
        process.wait(10)
        deadline = time.monotonic() + 120
        while live_processes_in_group(process.pid):
            assert time.monotonic() < deadline, "the workers outlived their sweep by 120 s"
            time.sleep(0.1)
    finally:
        if live_processes_in_group(process.pid):
            os.killpg(process.pid, signal.SIGKILL)  # clean up after a failure, by group id
    assert not list(output.glob("runs/*/error.txt"))  # stopped, not failed
    # Each worker finished at most the round it was in (a round is far shorter than the 12 a
    # worker left to itself would have run): seen + 1, and + 1 for a round ending as we looked.
    for run, last in rounds_by_run(output).items():
        assert last <= seen.get(run, 0) + 2 < 12, (run, last, seen)
    before = ledger_entries(output)
    assert before
    moved = tmp_path / "elsewhere" / "sweep"
    moved.parent.mkdir()
    os.rename(output, moved)
    assert main(["resume", str(moved)]) == 0
    with (moved / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["done", "done"]
    after = ledger_entries(moved)
    for name, entries in before.items():
        _, run, _, ledger = name.split("/")  # runs/<run>/ledgers/<ledger>
        kept = [after[name]] if name in after else []
        kept += [  # a run started again: its earlier attempt's ledgers are set aside, kept
            json.loads(path.read_text())["entries"]
            for path in moved.glob(f"runs/{run}/replaced/*/ledgers/{ledger}")
        ]
        assert any(now[: len(entries)] == entries for now in kept), name
    for row in rows:
        assert main(["budget", "--verify", str(moved / "runs" / row["run"])]) == 0
    assert not output.exists()


# -- issue 12 item 10: conflicts that were resolved silently ------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--vary", "seed=0,1", "--vary", "seed=2,3"],
            "--vary seed is given twice; list all its values in one --vary seed=V1,V2,...",
        ),
        (
            ["--noise-multiplier", "1", "--vary", "target-epsilon=1,3"],
            "--noise-multiplier is fixed while --vary target-epsilon varies the same noise",
        ),
        (["--seed", "3", "--vary", "seed=0,1"], "--seed is fixed while --vary seed varies it"),
        (
            ["--client-noise-multiplier", "1", "--vary", "client-target-epsilon=2,4"],
            "--client-noise-multiplier is fixed while --vary client-target-epsilon varies",
        ),
        (
            ["--vary", "secagg-levels=16,256"],
            "--vary secagg-levels has no effect in any run: it needs --secure-aggregation",
        ),
        (
            ["--secagg-levels", "1024", "--vary", "seed=0,1"],
            "--secagg-levels has no effect in any run: it needs --secure-aggregation",
        ),
        (["--vary", "seed=0,1", "--output", "/proc/sweep"], "--output /proc/sweep cannot be"),
    ],
)
def test_conflicting_sweep_settings_are_one_line_errors(capsys, tmp_path, flags, message):
    output = tmp_path / "sweep"
    line = one_line_error(capsys, ["sweep", "--output", str(output), *flags])
    assert message in line
    assert not output.exists()


def test_a_setting_used_by_some_runs_and_a_flag_over_the_files_value_are_fine(tmp_path):
    from privet.cli import build_parser
    from privet.sweep_command import spec_from_args

    def spec(*argv):
        args = build_parser().parse_args(["sweep", "--output", str(tmp_path / "s"), *argv])
        return spec_from_args(args)[0]

    both = spec("--secagg-levels", "1024", "--vary", "secure-aggregation=true,false")
    assert both.base["secagg-levels"] == 1024
    config = tmp_path / "grid.toml"
    config.write_text("noise-multiplier = 1.0\nrounds = 1\n")
    over = spec("--config", str(config), "--vary", "target-epsilon=1,3")
    assert over.base == {"rounds": 1}  # sweep.json records what ran: no σ beside the targets
    config.write_text("noise-multiplier = 1.0\n[vary]\ntarget-epsilon = [1, 3]\n")
    with pytest.raises(SweepError, match="noise-multiplier in .* is fixed while --vary"):
        spec("--config", str(config))
    config.write_text("[vary]\nlocal-epochs = [1]\nlocal_epochs = [2]\n")
    with pytest.raises(ConfigError, match="sets local-epochs twice"):
        spec("--config", str(config))
