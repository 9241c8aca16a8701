"""PrivetFedAvg's aggregation and bookkeeping, driven with Flower messages but no runtime."""

import itertools

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from privacy import PrivacyLedger
from server.aggregation import ClientLevelAggregator
from server.client_dp import ClientLevelPlan
from server.federation_privacy import ClientPrivacy, ClientReportError, FederationPrivacy
from server.strategy import PrivetFedAvg

SHAPES = [(3, 4), (4,)]


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def reply(client_id, update, n, epsilon, declined=False, within=None):
    values = {
        "num-examples": n,
        "client-id": client_id,
        "declined": int(declined),
        "epsilon": epsilon,
        "delta": 1e-5,
        "noise-multiplier": 1.0,
        "sample-rate": 0.1,
        "steps": 10,
        "rounds-participated": 1,
    }
    if within is not None:
        values["within-clip"] = int(within)
    content = {"metrics": MetricRecord(values)}
    if not declined:
        content["arrays"] = ArrayRecord(update)
    return Message(content=RecordDict(content), dst_node_id=100 + client_id, message_type="train")


def client_update(seed, norm=None):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    if norm is not None:
        scale = norm / np.sqrt(sum(float((p.astype(np.float64) ** 2).sum()) for p in parts))
        parts = [(p * scale).astype(np.float32) for p in parts]
    return parts


def strategy_for(clients, **kwargs):
    strategy = PrivetFedAvg(
        kwargs.pop("privacy", FederationPrivacy()),
        client_sample_rate=1.0,
        sampling_rng=np.random.default_rng(0),
        **kwargs,
    )
    strategy.client_of_node = {100 + c: c for c in clients}
    strategy._current = ArrayRecord([np.zeros(s, dtype=np.float32) for s in SHAPES])
    return strategy


def test_fedavg_of_updates_is_weighted_and_independent_of_arrival_order():
    updates = {k: client_update(k) for k in range(4)}
    sizes = {0: 10, 1: 30, 2: 25, 3: 35}
    results = []
    for order in itertools.permutations(range(4)):
        strategy = strategy_for(range(4))
        arrays, metrics = strategy.aggregate_train(
            1, [reply(k, updates[k], sizes[k], 0.5 + k) for k in order]
        )
        results.append(arrays.to_numpy_ndarrays())
        assert metrics["epsilon-max"] == 3.5 and metrics["clients-trained"] == 4
    total = sum(sizes.values())
    expected = [
        sum(updates[k][i].astype(np.float64) * sizes[k] / total for k in range(4)) for i in range(2)
    ]
    for got in results:
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        assert all(np.array_equal(a, b) for a, b in zip(got, results[0], strict=True))


def test_federation_epsilon_is_the_maximum_never_the_mean():
    privacy = FederationPrivacy()
    strategy = strategy_for([0, 1], privacy=privacy)
    strategy.aggregate_train(
        1, [reply(0, client_update(0), 1000, 1.0), reply(1, client_update(1), 10, 9.0)]
    )
    assert privacy.epsilon_max() == 9.0  # an example-weighted mean would say ~1.08
    assert privacy.epsilon_by_client(1) == {0: 1.0, 1: 9.0}


def test_declining_client_is_recorded_and_never_sampled_again():
    strategy = strategy_for([0, 1])
    arrays, metrics = strategy.aggregate_train(
        2, [reply(0, client_update(0), 10, 1.0), reply(1, None, 10, 4.0, declined=True)]
    )
    assert strategy.declined_at == {1: 2}
    assert metrics["clients-declined"] == 1 and metrics["clients-trained"] == 1
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], client_update(0)[0], rtol=1e-6)
    messages = list(strategy.configure_train(3, arrays, ConfigRecord(), None))
    assert [m.metadata.dst_node_id for m in messages] == [100]
    assert strategy.stop_reason_before(3) is None
    strategy.declined_at[0] = 3
    assert "every client" in strategy.stop_reason_before(4)


def test_client_level_round_is_in_the_ledger_before_the_model_is_returned(tmp_path):
    plan = ClientLevelPlan(1.0, 1.0, 1.0, 2.0, None)
    ledger = PrivacyLedger(
        owner="server", level="client", delta=1e-5, path=tmp_path / "server.json"
    )
    aggregator = ClientLevelAggregator(1.0, 1.0, 2.0, np.random.default_rng(0))
    strategy = strategy_for([0, 1], client_level=plan, aggregator=aggregator, server_ledger=ledger)
    seen_on_disk = []
    original = aggregator.aggregate

    def spy(*args, **kwargs):
        seen_on_disk.append(PrivacyLedger.load(tmp_path / "server.json").rounds())
        return original(*args, **kwargs)

    aggregator.aggregate = spy
    strategy.aggregate_train(
        1,
        [
            reply(0, client_update(0, 0.5), 10, 1.0, within=True),
            reply(1, client_update(1, 3.0), 10, 1.0, within=False),
        ],
    )
    assert seen_on_disk == [[1]]
    assert strategy.outcomes[1].rejected == [1]  # norm 3 > clip 1: never aggregated
    assert strategy.outcomes[1].epsilon_client_level == pytest.approx(ledger.epsilon("rdp"))


def test_client_level_budget_stops_before_the_round_that_would_exceed_it():
    plan = ClientLevelPlan(1.0, 1.0, 0.5, 2.0, None)
    ledger = PrivacyLedger(owner="server", level="client", delta=1e-5)
    one_round = ledger.epsilon_if([plan.round_event()], "rdp")
    strategy = strategy_for(
        [0, 1],
        client_level=plan,
        aggregator=ClientLevelAggregator(1.0, 1.0, 2.0, np.random.default_rng(0)),
        server_ledger=ledger,
        client_epsilon_budget=one_round * 1.0001,
    )
    assert strategy.stop_reason_before(1) is None
    ledger.record(1, [plan.round_event()])
    assert "client-level epsilon" in strategy.stop_reason_before(2)


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
    strategy = strategy_for([0])
    bad = Message(
        content=RecordDict(
            {
                "arrays": ArrayRecord(client_update(0)),
                "metrics": MetricRecord({"num-examples": 5, "client-id": 0}),
            }
        ),
        dst_node_id=100,
        message_type="train",
    )
    with pytest.raises(ClientReportError, match="epsilon"):
        strategy.aggregate_train(1, [bad])


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ([np.zeros((4, 3), np.float32), np.zeros(4, np.float32)], "shapes"),
        ([np.zeros((3, 4), np.float32)], "shapes"),
        ([np.full((3, 4), np.nan, np.float32), np.zeros(4, np.float32)], "NaN or infinite"),
        ([np.zeros((3, 4), np.float32), np.array([0, np.inf, 0, 0], np.float32)], "NaN"),
    ],
)
def test_malformed_updates_are_rejected_logged_and_never_aggregated(bad, reason, caplog):
    good = {k: client_update(k) for k in range(2)}
    strategy = strategy_for(range(3))
    arrays, metrics = strategy.aggregate_train(
        1, [reply(0, good[0], 10, 1.0), reply(1, good[1], 30, 1.0), reply(2, bad, 20, 2.0)]
    )
    expected = [(good[0][i] * 10 + good[1][i] * 30) / 40 for i in range(2)]
    for got, want in zip(arrays.to_numpy_ndarrays(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    outcome = strategy.outcomes[1]
    assert outcome.rejected == [2] and outcome.trained == [0, 1]
    assert metrics["clients-trained"] == 2
    assert strategy.privacy.epsilon_max() == 2.0  # its training still counts for privacy
    assert reason in caplog.text and "client 2" in caplog.text
