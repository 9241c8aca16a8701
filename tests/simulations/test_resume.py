"""A simulation killed after a round and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from privet.cli import main
from simulations.flower_engine import run_flower_simulation
from task.config import RunConfig

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


def test_a_killed_run_resumes_to_the_uninterrupted_results(tmp_path, capsys):
    straight = tmp_path / "straight"
    run_flower_simulation(RunConfig(**FLAGS, reproducible=True, output=str(straight)))
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
