"""Secure aggregation on Flower's simulation runtime: exactness, dropouts, clean failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simulations.faults import Dropout
from simulations.flower_engine import run_flower_simulation
from task.config import RunConfig


def final_weights(folder):
    state = torch.load(folder / "model.pt", weights_only=True)
    return [value.numpy() for value in state.values()]


def results_of(folder):
    return json.loads((folder / "results.json").read_text())


def test_secure_client_level_round_matches_the_plaintext_round_within_the_bound(tmp_path):
    common = dict(
        clients=6,
        clients_per_round=4,
        rounds=1,
        local_epochs=1,
        client_noise_multiplier=0.8,
        adaptive_clipping=True,
        clip_count_stddev=1.0,
        client_clip_norm=0.5,
        seed=3,
        reproducible=True,  # the same noise in both runs
    )
    plain = RunConfig(**common, output=str(tmp_path / "plain"))
    secure = RunConfig(**common, secure_aggregation=True, output=str(tmp_path / "secure"))
    run_flower_simulation(plain)
    run_flower_simulation(secure)
    a, b = results_of(tmp_path / "plain"), results_of(tmp_path / "secure")
    ra, rb = a["rounds"][0], b["rounds"][0]
    summary = rb["secure_aggregation"]
    assert summary["status"] == "ok" and summary["dropped"] == []
    assert summary["survivors"] == ra["sampled"] == rb["sampled"] and len(ra["sampled"]) >= 2
    # Same clients, same DP-SGD, same server noise: the models differ only by quantization.
    worst = max(
        float(np.max(np.abs(x - y)))
        for x, y in zip(
            final_weights(tmp_path / "plain"), final_weights(tmp_path / "secure"), strict=True
        )
    )
    assert worst < summary["error_bound"]
    # The count query of adaptive clipping came out of the secure sum exactly.
    assert rb["noised_within_fraction"] == pytest.approx(ra["noised_within_fraction"], abs=1e-12)
    assert b["client_level"]["clip_norm_final"] == pytest.approx(
        a["client_level"]["clip_norm_final"], rel=1e-12
    )
    # Privacy accounting does not change with the transport.
    assert rb["epsilon_by_client"] == ra["epsilon_by_client"]
    assert rb["epsilon_client_level"] == ra["epsilon_client_level"]
    assert b["secure_aggregation"]["rounds_ok"] == 1 and a["secure_aggregation"] is None


def test_dropouts_are_recovered_above_the_threshold_and_fail_cleanly_below(tmp_path):
    config = RunConfig(
        clients=5,
        rounds=4,
        local_epochs=1,
        secure_aggregation=True,
        secagg_threshold=0.6,  # t = 3 of 5
        output=str(tmp_path / "run"),
    )
    run_flower_simulation(
        config,
        client_mods=[
            Dropout.at("train", [2], rounds=[1]),  # crashes while training / masking
            Dropout.at("query.secagg_share_keys", [0, 1, 3], rounds=[2]),
            Dropout.at("query.secagg_unmask", [0, 1, 3], rounds=[3]),
        ],
    )
    data = results_of(tmp_path / "run")
    first, second, third, fourth = data["rounds"]
    assert first["secure_aggregation"]["status"] == "ok"
    assert first["secure_aggregation"]["survivors"] == [0, 1, 3, 4]
    assert first["secure_aggregation"]["dropped"] == [2]
    assert first["clients_trained"] == 4
    # Round 2: only 2 of 5 shared keys, below t = 3: skipped before anyone trained.
    failed = second["secure_aggregation"]
    assert failed["status"] == "failed" and "share_keys" in failed["reason"]
    assert "threshold 3" in failed["reason"]
    assert second["clients_trained"] == 0
    assert second["accuracy"] == first["accuracy"] and second["loss"] == first["loss"]
    assert second["epsilon_by_client"] == first["epsilon_by_client"]  # nothing was released
    # Round 3: everyone trained and sent a masked update, then 3 left before unmasking: no sum,
    # no model change, but the privacy the clients spent training is on the books.
    failed = third["secure_aggregation"]
    assert failed["status"] == "failed" and "unmask" in failed["reason"]
    assert third["loss"] == second["loss"]
    assert sorted(third["epsilon_by_client"]) == list(map(str, range(5)))
    assert all(
        eps > second["epsilon_by_client"].get(k, 0.0)
        for k, eps in third["epsilon_by_client"].items()
    )
    # The run goes on.
    assert fourth["secure_aggregation"]["status"] == "ok" and fourth["loss"] != third["loss"]
    assert data["secure_aggregation"]["rounds_failed"] == [2, 3]
    assert data["secure_aggregation"]["min_survivors"] == 4
    assert data["finished"] is True
