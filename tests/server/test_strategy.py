import itertools

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.federation_privacy import ClientPrivacy, ClientReportError, FederationPrivacy
from server.strategy import PrivetFedAvg


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def reply(client_id, weights, n, epsilon):
    metrics = MetricRecord(
        {
            "num-examples": n,
            "client-id": client_id,
            "epsilon": epsilon,
            "delta": 1e-5,
            "noise-multiplier": 1.0,
            "sample-rate": 0.1,
            "steps": 10,
            "rounds-participated": 1,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(weights), "metrics": metrics})
    return Message(content=content, dst_node_id=100 + client_id, message_type="train")


def client_weights(seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]


def test_aggregate_is_weighted_mean_and_independent_of_arrival_order():
    weights = {k: client_weights(k) for k in range(4)}
    sizes = {0: 10, 1: 30, 2: 25, 3: 35}
    results = []
    for order in itertools.permutations(range(4)):
        strategy = PrivetFedAvg(FederationPrivacy())
        replies = [reply(k, weights[k], sizes[k], 0.5 + k) for k in order]
        arrays, metrics = strategy.aggregate_train(1, replies)
        results.append(arrays.to_numpy_ndarrays())
        assert metrics["epsilon-max"] == 3.5
        assert metrics["clients-trained"] == 4
    total = sum(sizes.values())
    expected = [
        sum(weights[k][i].astype(np.float64) * sizes[k] / total for k in range(4)) for i in range(2)
    ]
    for got in results:
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        for a, b in zip(got, results[0], strict=True):
            assert np.array_equal(a, b), "aggregation must be bit-identical in any arrival order"


def test_federation_epsilon_is_the_maximum_never_the_mean():
    privacy = FederationPrivacy()
    strategy = PrivetFedAvg(privacy)
    strategy.aggregate_train(
        1, [reply(0, client_weights(0), 1000, 1.0), reply(1, client_weights(1), 10, 9.0)]
    )
    assert privacy.epsilon_max() == 9.0  # a weighted mean would say ~1.08
    assert privacy.epsilon_by_client(1) == {0: 1.0, 1: 9.0}
    assert privacy.clients_trained(1) == 2


def test_clients_absent_from_a_round_keep_their_epsilon():
    privacy = FederationPrivacy()
    privacy.record(
        1,
        [
            ClientPrivacy(0, 10, 1.0, 1e-5, 1.0, 0.1, 10, 1),
            ClientPrivacy(1, 10, 2.0, 1e-5, 1.0, 0.1, 10, 1),
        ],
    )
    privacy.record(2, [ClientPrivacy(0, 10, 1.5, 1e-5, 1.0, 0.1, 20, 2)])
    assert privacy.epsilon_by_client(2) == {0: 1.5, 1: 2.0}
    assert privacy.epsilon_max() == 2.0
    assert privacy.clients_trained(2) == 1


def test_a_decreasing_epsilon_is_never_accepted(caplog):
    privacy = FederationPrivacy()
    privacy.record(1, [ClientPrivacy(0, 10, 3.0, 1e-5, 1.0, 0.1, 10, 1)])
    privacy.record(2, [ClientPrivacy(0, 10, 0.1, 1e-5, 1.0, 0.1, 20, 2)])
    assert privacy.epsilon_by_client(2) == {0: 3.0}
    assert "below its earlier" in caplog.text


@pytest.mark.parametrize("epsilon", [float("nan"), -1.0])
def test_malformed_privacy_reports_are_rejected(epsilon):
    with pytest.raises(ClientReportError):
        ClientPrivacy(0, 10, epsilon, 1e-5, 1.0, 0.1, 10, 1)


def test_reply_without_privacy_metrics_is_rejected():
    strategy = PrivetFedAvg(FederationPrivacy())
    bad = Message(
        content=RecordDict(
            {
                "arrays": ArrayRecord(client_weights(0)),
                "metrics": MetricRecord({"num-examples": 5, "client-id": 0}),
            }
        ),
        dst_node_id=1,
        message_type="train",
    )
    with pytest.raises(ClientReportError, match="epsilon"):
        strategy.aggregate_train(1, [bad])
