"""Budgets and client-level DP in real simulations, checked against independent computations."""

from __future__ import annotations

import json
import math
import re

import dp_accounting
import pytest

from privet.cli import main
from privet.simulations.inprocess_engine import run_in_process
from privet.task.config import RunConfig
from tests.reference_accounting import ORDERS, opacus_epsilon


@pytest.mark.long
def test_clients_decline_exactly_when_predicted_and_the_run_ends_cleanly(tmp_path, capsys):
    sigma, budget = 1.0, 3.0
    config = RunConfig(
        clients=3,
        rounds=8,
        local_epochs=1,
        partition="dirichlet",
        alpha=2.0,
        seed=4,
        noise_multiplier=sigma,
        epsilon_budget=budget,
        output=str(tmp_path / "run"),
    )
    results = run_in_process(config)  # the clients' own decline logic; no Ray needed for it
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    predicted = {}
    for client in data["clients"]:
        batches = math.ceil(client["num_examples"] / config.batch_size)
        r = 1
        while opacus_epsilon(1 / batches, sigma, r * batches, config.delta) <= budget:
            r += 1
        predicted[client["id"]] = r
        # The client trained in every round before its decline, and stayed within its budget.
        assert client["rounds_participated"] == r - 1
        assert client["epsilon"] <= budget
    assert max(predicted.values()) <= config.rounds, "every client should run out in this test"
    assert data["declined"] == [{"id": k, "round": r} for k, r in sorted(predicted.items())]
    last = max(predicted.values())
    assert [r["round"] for r in data["rounds"]] == list(range(1, last + 1))
    assert data["stop_reason"] == "every client has used its example-level privacy budget"
    assert data["finished"] is True and results.stop_reason == data["stop_reason"]
    assert main(["budget", "--verify", str(tmp_path / "run")]) == 0
    assert "refuted" not in capsys.readouterr().out.lower()


def dp_accounting_client_level(q, z, rounds, delta):
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return accountant.get_epsilon(delta)


@pytest.mark.long
@pytest.mark.parametrize("adaptive", [False, True])
def test_client_level_epsilon_with_poisson_sampling_matches_dp_accounting(tmp_path, adaptive):
    config = RunConfig(
        clients=6,
        clients_per_round=3,
        rounds=3,
        local_epochs=1,
        seed=2,
        client_noise_multiplier=1.2,
        client_clip_norm=0.5,
        adaptive_clipping=adaptive,
        clip_count_stddev=1.0 if adaptive else None,
        output=str(tmp_path / "run"),
    )
    # In process: for a seed the same results as Flower's runtime, adaptive clipping's count
    # included (tests/simulations/test_inprocess_engine.py runs that check on both engines).
    run_in_process(config)
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    level = data["client_level"]
    sampled = [len(r["sampled"]) for r in data["rounds"]]
    assert len(data["rounds"]) == 3 and level["rounds"] == 3
    assert sampled != [6, 6, 6], "Poisson sampling at q = 0.5 should leave clients out"
    z = 1.2
    assert level["noise_multiplier"] == z
    if adaptive:
        # The update sum gets less noise, so that together with the count query (σ_b = 1 on the
        # centred count, sensitivity ½: multiplier 2) the round is exactly a Gaussian with
        # multiplier z (Andrew et al. 2021).
        z_update = level["update_noise_multiplier"]
        count = level["adaptive_clipping"]
        assert (count["count_stddev"], count["count_sensitivity"]) == (1.0, 0.5)
        assert (z_update**-2 + 2.0**-2) ** -0.5 == pytest.approx(z, rel=1e-9)
        assert len({r["clip_norm"] for r in data["rounds"]}) == 3  # S moved every round
    expected = dp_accounting_client_level(0.5, z, 3, config.delta)
    assert level["epsilon"] == pytest.approx(expected, rel=1e-3)
    assert data["rounds"][-1]["epsilon_client_level"] == level["epsilon"]
    assert main(["budget", "--verify", str(tmp_path / "run")]) == 0


def test_the_audited_adaptive_clipping_command_prints_the_epsilon_of_what_ran(tmp_path, capsys):
    """Issue 11's reproduction: the printed client-level ε is that of the two Gaussians as
    results.json records them (update sum at z_Δ; count at σ_b over its measured sensitivity,
    tests/test_sensitivity.py), composed by dp-accounting."""
    output = tmp_path / "run"
    argv = ["simulate", "--client-noise-multiplier", "1.0", "--clients", "20"]
    argv += ["--clients-per-round", "5", "--delta", "1e-3", "--engine", "in-process"]
    argv += ["--rounds", "3", "--adaptive-clipping", "--clip-count-stddev", "2"]
    assert main([*argv, "--output", str(output)]) == 0
    printed = float(re.search(r"Client-level ε = ([0-9.]+)", capsys.readouterr().out).group(1))
    level = json.loads((output / "results.json").read_text())["client_level"]
    count = level["adaptive_clipping"]
    assert count["count_stddev"] == 2.0
    ratio = count["count_stddev"] / count["count_sensitivity"]
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    round_event = dp_accounting.PoissonSampledDpEvent(
        level["sample_rate"],
        dp_accounting.ComposedDpEvent(
            [
                dp_accounting.GaussianDpEvent(level["update_noise_multiplier"]),
                dp_accounting.GaussianDpEvent(ratio),
            ]
        ),
    )
    accountant.compose(dp_accounting.SelfComposedDpEvent(round_event, level["rounds"]))
    assert level["rounds"] == 3
    assert printed == pytest.approx(accountant.get_epsilon(1e-3), rel=0.01)
    assert level["epsilon"] == pytest.approx(accountant.get_epsilon(1e-3), rel=1e-3)
