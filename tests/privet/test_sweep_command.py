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
from simulations.inprocess_engine import run_in_process
from task.config import RunConfig

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
    assert "privet report" in out and "sweep.csv" in out


def checkpointed_rounds(output: Path) -> list[int]:
    rounds = []
    for checkpoint in output.glob("runs/*/checkpoint.json"):
        try:
            rounds.append(int(json.loads(checkpoint.read_text())["round"]))
        except (OSError, ValueError, KeyError):
            continue
    return rounds


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
