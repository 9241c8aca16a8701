import json
import math

import numpy as np
import pytest
import torch

from privet.server.federation_privacy import ClientPrivacy
from privet.server.results import RoundRecord, RunResults, write_model, write_results
from privet.task.config import RunConfig
from privet.task.models import build_model, get_weights


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
            "bad_replies": [],
            "excluded": [],
            "no_update": None,
            "failures": [],
            "cost": None,
            "metrics": None,
        }
    ]
    assert data["failure_reason"] is None and data["warnings"] == []
    assert data["rounds_without_update"] == [] and data["model_worse_than_initial"] is None
    assert data["excluded"] == [] and data["privacy"]["epsilon_unknown"] == []
    assert data["left_out"] == []
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
        "lifetime_epsilon": 2.5,  # no earlier run on its ledger: the run's own
        "lifetime_steps": 20,
        "ledger": None,  # a report without a ledger summary (an older client)
    }
    assert data["clients"][1]["epsilon"] == "inf"  # valid JSON, never a bare Infinity
    assert data["clients"][1]["lifetime_epsilon"] == "inf"
    assert data["privacy"]["epsilon_max"] == "inf"
    assert data["config"]["clients"] == 5 and "privet_version" in data
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_model_file_loads_with_weights_only(tmp_path):
    model = build_model("mlp", (1, 8, 8), 10, seed=3)
    weights = get_weights(build_model("mlp", (1, 8, 8), 10, seed=4))
    path = write_model(tmp_path, model, weights)
    state = torch.load(path, weights_only=True)
    assert all(np.array_equal(state[key].numpy(), w) for key, w in zip(state, weights, strict=True))


def record(round_, accuracy, trained, no_update=None, **extra):
    return RoundRecord(round_, accuracy, 2.0, 1.0, {0: 1.0}, trained, no_update=no_update, **extra)


def test_a_client_value_of_nan_or_1e300_never_makes_results_json_invalid(tmp_path):
    """The issue's 'accuracy of 1e300' crashed json.dumps; every float is now written strictly."""
    results = RunResults(config=RunConfig(output=str(tmp_path)), engine="test")
    results.initial_accuracy, results.initial_loss = 0.1, math.inf
    results.rounds.append(
        RoundRecord(1, math.nan, math.inf, 1.0, {0: 1.0}, 1, local_accuracy=math.inf * 0)
    )
    results.conclude(None)
    data = json.loads(
        write_results(tmp_path, results).read_text(),
        parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"),
    )
    assert data["rounds"][0]["accuracy"] == "nan" and data["rounds"][0]["loss"] == "inf"
    assert data["initial"]["loss"] == "inf"
    restored = RunResults(config=RunConfig(output=str(tmp_path)), engine="test")
    restored.restore_state(json.loads(json.dumps(results.checkpoint_state(), allow_nan=False)))
    assert math.isnan(restored.rounds[0].accuracy) and restored.rounds[0].loss == math.inf


def test_nothing_trained_fails_the_run_with_one_line_reason(tmp_path):
    results = RunResults(config=RunConfig(output=str(tmp_path)), engine="test")
    results.initial_accuracy = 0.1
    results.rounds = [
        record(1, 0.1, 0, "5 train replies dropped (client 0: update rejected: NaN)"),
        record(2, 0.1, 0, "5 train replies dropped (client 0: update rejected: NaN)"),
    ]
    results.conclude(None)
    assert results.finished is False
    assert results.failure_reason == (
        "nothing trained: no client update reached the model in any of the 2 rounds; round 2: "
        "5 train replies dropped (client 0: update rejected: NaN)"
    )
    data = json.loads(write_results(tmp_path, results).read_text())
    assert data["finished"] is False and data["failure_reason"] == results.failure_reason
    assert data["rounds_without_update"] == [1, 2]
    assert data["warnings"][0].startswith("round 1: no client update reached the model (5 train")
    # A run stopped on a failure after some training is failed too, with the strategy's reason.
    results.rounds.append(record(3, 0.5, 3))
    results.conclude("3 rounds in a row charged clients' privacy but no client update ...")
    assert results.finished is False and results.failure_reason.startswith("3 rounds in a row")
    results.conclude(None)
    assert results.finished is True and results.failure_reason is None


def test_no_round_at_all_is_a_failure_and_a_worse_model_is_a_warning(tmp_path):
    results = RunResults(config=RunConfig(output=str(tmp_path)), engine="test")
    results.stop_reason = "every client has used its example-level privacy budget"
    results.conclude(None)
    assert results.finished is False
    assert results.failure_reason == (
        "nothing trained: no round ran (every client has used its example-level privacy budget)"
    )
    results.initial_accuracy = 0.108
    results.rounds = [record(1, 0.12, 9), record(2, 0.089, 4)]
    results.conclude(None)
    assert results.finished is True and results.model_worse_than_initial() is True
    assert results.warnings() == [
        "the final model is worse than the initial one: test accuracy 0.0890 after round 2, "
        "0.1080 before training"
    ]
    data = json.loads(write_results(tmp_path, results).read_text())
    assert data["model_worse_than_initial"] is True and data["warnings"] == results.warnings()


def test_an_unknown_epsilon_is_infinite_in_results_json(tmp_path):
    results = RunResults(config=RunConfig(output=str(tmp_path)), engine="test")
    results.clients = [ClientPrivacy(0, 100, 2.5, 1e-5, 1.1, 0.1, 20, 1)]
    results.epsilon_unknown = {3: (2, "a client reply's 'epsilon' is not a number: None")}
    data = json.loads(write_results(tmp_path, results).read_text())
    assert data["privacy"]["epsilon_max"] == "inf"
    assert data["privacy"]["epsilon_unknown"] == [
        {"id": 3, "round": 2, "reason": "a client reply's 'epsilon' is not a number: None"}
    ]


def test_a_progress_line_names_the_round_metrics_privacy_and_secure_status():
    from privet.server.results import RoundRecord, progress_line

    record = RoundRecord(
        round=2,
        accuracy=0.8722,
        loss=0.6237,
        epsilon_max=3.2109,
        epsilon_by_client={0: 3.2109},
        clients_trained=3,
        sampled=[0, 1, 2, 4],
        failed=1,
        epsilon_client_level=1.25,
        secure_aggregation={"status": "ok", "dropped": [4]},
    )
    assert progress_line(record, 5) == (
        "round 2/5: accuracy 0.8722, loss 0.6237; max epsilon 3.211 (example level); "
        "client-level epsilon 1.25; 3 of 4 sampled clients trained; 1 failed; "
        "secure aggregation ok (1 dropped)"
    )
