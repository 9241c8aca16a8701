import json
import math

import numpy as np
import torch

from server.federation_privacy import ClientPrivacy
from server.results import RoundRecord, RunResults, write_model, write_results
from task.config import RunConfig
from task.models import build_model, get_weights


def test_results_json_layout_and_atomic_write(tmp_path):
    results = RunResults(config=RunConfig(output=str(tmp_path)), engine="test")
    results.rounds.append(
        RoundRecord(
            1,
            0.5,
            1.2,
            2.5,
            {0: 2.5, 1: 1.0},
            2,
            0.4,
            sampled=[0, 1, 2],
            declined=[2],
            epsilon_client_level=0.7,
            clip_norm=0.1,
        )
    )
    results.declines = {2: 1}
    results.stop_reason = "budget"
    results.clients = [
        ClientPrivacy(0, 100, 2.5, 1e-5, 1.1, 0.1, 20, 1),
        ClientPrivacy(1, 90, math.inf, 1e-5, 0.0, 0.1, 20, 1),
    ]
    path = write_results(tmp_path, results)
    data = json.loads(path.read_text())
    assert data["rounds"] == [
        {
            "round": 1,
            "accuracy": 0.5,
            "loss": 1.2,
            "epsilon_max": 2.5,
            "epsilon_by_client": {"0": 2.5, "1": 1.0},
            "clients_trained": 2,
            "local_accuracy": 0.4,
            "sampled": [0, 1, 2],
            "declined": [2],
            "failed": 0,
            "rejected": [],
            "epsilon_client_level": 0.7,
            "clip_norm": 0.1,
            "noised_within_fraction": None,
            "secure_aggregation": None,
        }
    ]
    assert data["secure_aggregation"] is None  # off in this run
    assert data["declined"] == [{"id": 2, "round": 1}] and data["stop_reason"] == "budget"
    assert data["clients"][0] == {
        "id": 0,
        "num_examples": 100,
        "epsilon": 2.5,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "sample_rate": 0.1,
        "steps": 20,
        "rounds_participated": 1,
    }
    assert data["clients"][1]["epsilon"] == "inf"  # valid JSON, never a bare Infinity
    assert data["privacy"]["epsilon_max"] == "inf"
    assert data["config"]["clients"] == 5 and "privet_version" in data
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_model_file_loads_with_weights_only(tmp_path):
    model = build_model("mlp", (1, 8, 8), 10, seed=3)
    weights = get_weights(build_model("mlp", (1, 8, 8), 10, seed=4))
    path = write_model(tmp_path, model, weights)
    state = torch.load(path, weights_only=True)
    assert all(np.array_equal(state[key].numpy(), w) for key, w in zip(state, weights, strict=True))
