"""A real simulation on Flower's Ray runtime, checked against independent privacy computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from opacus.accountants.utils import get_noise_multiplier

from privet.simulations.flower_engine import run_flower_simulation
from privet.simulations.plan import plan_simulation
from privet.task.config import RunConfig
from tests.reference_accounting import opacus_epsilon

TARGET = 6.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three clients with unequal (Dirichlet) shards, three rounds, calibrated to ε = 6."""
    output = tmp_path_factory.mktemp("sim")
    config = RunConfig(
        clients=3,
        rounds=3,
        local_epochs=1,
        partition="dirichlet",
        alpha=1.0,
        target_epsilon=TARGET,
        output=str(output),
        seed=11,
    )
    seen_rounds = []
    results = run_flower_simulation(config, on_round=seen_rounds.append)
    data = json.loads((output / "results.json").read_text())
    return config, results, data, seen_rounds, output


@pytest.mark.long
def test_epsilon_accumulates_and_matches_opacus_after_every_round(run):
    config, _, data, _, _ = run
    clients = {c["id"]: c for c in data["clients"]}
    sizes = {c["id"]: c["num_examples"] for c in data["clients"]}
    assert len(set(sizes.values())) > 1, "shards should differ in size for this test to bite"
    for record in data["rounds"]:
        r = record["round"]
        for client_id, reported in record["epsilon_by_client"].items():
            n = sizes[int(client_id)]
            batches = math.ceil(n / config.batch_size)
            q, steps = 1 / batches, r * config.local_epochs * batches
            sigma = clients[int(client_id)]["noise_multiplier"]
            expected = opacus_epsilon(q, sigma, steps, config.delta)
            assert reported == pytest.approx(expected, rel=1e-6), (r, client_id)
        assert record["epsilon_max"] == max(record["epsilon_by_client"].values())
    per_round = [max(r["epsilon_by_client"].values()) for r in data["rounds"]]
    assert per_round[0] < per_round[1] < per_round[2] <= TARGET


def test_reported_sample_rate_steps_and_noise_are_what_was_planned(run):
    config, _, data, _, _ = run
    for client in data["clients"]:
        batches = math.ceil(client["num_examples"] / config.batch_size)
        assert client["sample_rate"] == pytest.approx(1 / batches, rel=1e-12)
        assert client["steps"] == config.rounds * config.local_epochs * batches
        assert client["rounds_participated"] == config.rounds
        opacus_sigma = get_noise_multiplier(
            target_epsilon=TARGET,
            target_delta=config.delta,
            sample_rate=1 / batches,
            steps=client["steps"],
            accountant="rdp",
            epsilon_tolerance=0.001,
        )
        assert client["noise_multiplier"] == pytest.approx(opacus_sigma, rel=0.02)
        assert client["epsilon"] <= TARGET


def test_plan_matches_what_ran(run):
    config, _, data, _, _ = run
    plan = plan_simulation(config)
    assert [p.train_examples for p in plan.clients] == [c["num_examples"] for c in data["clients"]]
    assert plan.planned_epsilon_max == pytest.approx(data["privacy"]["epsilon_max"], rel=1e-9)


def test_results_file_layout_progress_and_model(run):
    config, results, data, seen_rounds, output = run
    assert [r.round for r in seen_rounds] == [1, 2, 3]
    assert data["finished"] is True
    assert {"privet_version", "config", "rounds", "clients"} <= set(data)
    assert data["config"]["clients"] == 3
    assert set(data["rounds"][0]) >= {"round", "accuracy", "loss", "epsilon_max"}
    assert set(data["clients"][0]) >= {
        "id",
        "num_examples",
        "epsilon",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
    }
    assert data["rounds"][-1]["accuracy"] > data["initial"]["accuracy"]
    state = torch.load(Path(output) / "model.pt", weights_only=True)
    assert set(state) == {"1.weight", "1.bias"}
    assert results.rounds[-1].accuracy == data["rounds"][-1]["accuracy"]
