"""Budgets and client-level DP in real simulations, checked against independent computations."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest

from privet.cli import main
from simulations.flower_engine import run_flower_simulation
from task.config import RunConfig
from tests.reference_accounting import ORDERS, opacus_epsilon


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
    results = run_flower_simulation(config)
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
    run_flower_simulation(config)
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    level = data["client_level"]
    sampled = [len(r["sampled"]) for r in data["rounds"]]
    assert len(data["rounds"]) == 3 and level["rounds"] == 3
    assert sampled != [6, 6, 6], "Poisson sampling at q = 0.5 should leave clients out"
    z = 1.2
    assert level["noise_multiplier"] == z
    if adaptive:
        # The update sum gets less noise, so that together with the count query (multiplier
        # 2·σ_b) the round is exactly a Gaussian with multiplier z (Andrew et al. 2021).
        z_update = level["update_noise_multiplier"]
        assert (z_update**-2 + 2.0**-2) ** -0.5 == pytest.approx(z, rel=1e-9)
        assert len({r["clip_norm"] for r in data["rounds"]}) == 3  # S moved every round
    expected = dp_accounting_client_level(0.5, z, 3, config.delta)
    assert level["epsilon"] == pytest.approx(expected, rel=1e-3)
    assert data["rounds"][-1]["epsilon_client_level"] == level["epsilon"]
    assert main(["budget", "--verify", str(tmp_path / "run")]) == 0
