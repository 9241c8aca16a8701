"""A simulation killed after a round and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def test_resume_recharges_an_old_ledgers_adaptive_rounds_at_their_real_sensitivity(
    tmp_path, capsys, caplog
):
    import dp_accounting

    from simulations.inprocess_engine import run_in_process
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
