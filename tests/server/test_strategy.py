"""PrivetFedAvg's aggregation and bookkeeping, driven with Flower messages but no runtime."""

import itertools
import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from privet.privacy import PrivacyLedger
from privet.server.aggregation import ClientLevelAggregator
from privet.server.client_dp import ClientLevelPlan
from privet.server.federation_privacy import ClientPrivacy, ClientReportError, FederationPrivacy
from privet.server.sampling import ClientSampler
from privet.server.strategy import PrivetFedAvg, RoundOutcome
from privet.server.update_release import ClientLevelRelease

SHAPES = [(3, 4), (4,)]


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def reply_from(client_id, content, message_type="train"):
    """A reply from client `client_id`'s node (node 100 + id), as the grid hands it over."""
    request = Message(content=RecordDict(), dst_node_id=100 + client_id, message_type=message_type)
    return Message(content=RecordDict(content), reply_to=request)


def reply(client_id, update, n, epsilon, declined=False, within=None, **changes):
    values = {
        "num-examples": n,
        "client-id": client_id,
        "declined": int(declined) if isinstance(declined, bool) else declined,
        "epsilon": epsilon,
        "delta": 1e-5,
        "noise-multiplier": 1.0,
        "sample-rate": 0.1,
        "steps": 10,
        "rounds-participated": 1,
    }
    if within is not None:
        values["within-clip"] = int(within)
    values.update(changes)
    values = {k: v for k, v in values.items() if v is not None}
    content = {"metrics": MetricRecord(values)}
    if declined is not True:
        content["arrays"] = ArrayRecord(update)
    return reply_from(client_id, content)


def client_update(seed, norm=None):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    if norm is not None:
        scale = norm / np.sqrt(sum(float((p.astype(np.float64) ** 2).sum()) for p in parts))
        parts = [(p * scale).astype(np.float32) for p in parts]
    return parts


def strategy_for(
    clients,
    privacy=None,
    client_level=None,
    aggregator=None,
    server_ledger=None,
    client_epsilon_budget=None,
):
    """A strategy over `clients` (node 100 + id); client-level DP when a plan is given."""
    release = None
    if client_level is not None:
        release = ClientLevelRelease(
            client_level,
            aggregator,
            server_ledger,
            accountant="rdp",
            delta=server_ledger.delta,
            epsilon_budget=client_epsilon_budget,
        )
    strategy = PrivetFedAvg(
        privacy if privacy is not None else FederationPrivacy(),
        sampler=ClientSampler(np.random.default_rng(0), rate=1.0),
        release=release,
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


# ---------------------------------------------------------------------------------------------
# One bad reply never ends the run (issue 12, item 5): it drops that client for the round.

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("bad", "reason", "epsilon_unknown"),
    [
        (lambda: reply(2, client_update(2), INF, 2.0), "'num-examples' is not a whole number", 1),
        (lambda: reply(2, client_update(2), NAN, 2.0), "'num-examples' is not a whole number", 1),
        (lambda: reply(2, client_update(2), 20, NAN), "reported epsilon nan", 1),
        (lambda: reply(2, client_update(2), 20, None), "no 'epsilon' metric", 1),
        (lambda: reply(2, client_update(2), 20, -1.0), "reported epsilon -1.0", 1),
        (lambda: reply(2, client_update(2), 20, 2.0, **{"client-id": 0}), "names client 0", 1),
        (lambda: reply(2, client_update(2), 20, 2.0, declined=0.5), "'declined' is not 0 or", 1),
        (lambda: reply_from(2, {"arrays": ArrayRecord(client_update(2))}), "no metrics", 1),
        (lambda: reply(2, client_update(2), 20, 2.0, **{"within-clip": 7}), "not 0 or 1: 7", 0),
    ],
)
def test_a_bad_train_reply_drops_only_that_client_and_never_lowers_epsilon(
    bad, reason, epsilon_unknown, caplog
):
    good = {k: client_update(k) for k in range(2)}
    privacy = FederationPrivacy()
    strategy = strategy_for(range(3), privacy=privacy)
    strategy.outcomes[1] = RoundOutcome(sampled=[0, 1, 2])
    arrays, metrics = strategy.aggregate_train(
        1, [reply(0, good[0], 10, 1.0), bad(), reply(1, good[1], 30, 1.5)]
    )
    expected = [(good[0][i] * 10 + good[1][i] * 30) / 40 for i in range(2)]
    for got, want in zip(arrays.to_numpy_ndarrays(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    outcome = strategy.outcomes[1]
    assert outcome.trained == [0, 1] and metrics["clients-trained"] == 2
    ((dropped),) = outcome.bad_replies
    assert dropped["client"] == 2 and dropped["stage"] == "train" and reason in dropped["reason"]
    assert reason in caplog.text and "client 2" in caplog.text
    if epsilon_unknown:  # it may have trained: what it spent is unknown, so it counts as ∞
        assert privacy.epsilon_max() == INF and privacy.epsilon_by_client(1)[2] == INF
        assert list(privacy.unknown()) == [2] and outcome.epsilon_unknown == [2]
    else:  # its report is usable: its ε is what it said, its update is not used
        assert privacy.epsilon_max() == 2.0 and outcome.rejected == [2]


def test_an_unknown_epsilon_ends_with_the_next_usable_cumulative_report():
    privacy = FederationPrivacy()
    strategy = strategy_for(range(2), privacy=privacy)
    strategy.aggregate_train(1, [reply(0, client_update(0), 10, 1.0)])
    strategy.aggregate_train(2, [reply(0, client_update(0), 10, NAN), reply(1, None, 5, 0.5)])
    assert privacy.epsilon_max() == INF and privacy.epsilon_by_client(2)[0] == INF
    assert [c.epsilon for c in privacy.clients()] == [INF, 0.5]
    restored = FederationPrivacy.from_state(json.loads(json.dumps(privacy.to_state())))
    assert restored.epsilon_max() == INF  # a checkpoint keeps it unknown
    strategy.aggregate_train(3, [reply(0, client_update(0), 10, 3.0)])
    assert privacy.epsilon_max() == 3.0 and privacy.unknown() == {}
    assert privacy.epsilon_by_client(2)[0] == INF  # the history still says what was known


def test_a_reply_from_an_unknown_node_or_a_second_reply_is_dropped():
    strategy = strategy_for(range(2))
    stranger = reply(7, client_update(7), 10, 1.0)  # node 107 never said who it is
    first, again = reply(0, client_update(0), 10, 1.0), reply(0, client_update(1), 10, 1.0)
    strategy.aggregate_train(1, [first, stranger, again])
    outcome = strategy.outcomes[1]
    assert outcome.trained == [0]
    assert [(b["client"], b["reason"]) for b in outcome.bad_replies] == [
        (None, "a reply from unknown node 107"),
        (0, "replied more than once; its first reply counts"),
    ]


def evaluate_reply(client_id, n, accuracy):
    metrics = {"num-examples": n, "client-id": client_id, "loss": 0.5, "accuracy": accuracy}
    return reply_from(client_id, {"metrics": MetricRecord(metrics)}, "evaluate")


@pytest.mark.parametrize(
    ("n", "accuracy", "reason"),
    [(10, 1e300, "'accuracy' is not a number in [0, 1]"), (INF, 0.5, "'num-examples' is not")],
)
def test_a_bad_evaluation_reply_is_dropped(n, accuracy, reason):
    strategy = strategy_for(range(3))
    local = strategy.aggregate_evaluate(
        1, [evaluate_reply(0, 10, 0.5), evaluate_reply(1, n, accuracy), evaluate_reply(2, 30, 0.9)]
    )
    assert local["accuracy"] == pytest.approx(0.8)
    ((dropped),) = strategy.outcomes[1].bad_replies
    assert dropped["client"] == 1 and dropped["stage"] == "evaluate" and reason in dropped["reason"]


def nan_update():
    return [np.full(s, np.nan, np.float32) for s in SHAPES]


def play_round(strategy, server_round, replies_of):
    """configure_train, the replies of the sampled clients, aggregate_train, close_round."""
    list(strategy.configure_train(server_round, strategy._current, ConfigRecord(), None))
    sampled = strategy.outcomes[server_round].sampled
    arrays, _ = strategy.aggregate_train(server_round, [replies_of(c) for c in sampled])
    strategy._current = arrays
    strategy.close_round(server_round)
    return sampled


def test_a_client_that_keeps_misbehaving_is_excluded_from_sampling(caplog):
    strategy = strategy_for(range(3))

    def replies_of(round_):
        def of(c):
            bad = c == 2 and round_ != 2  # round 2: a good reply resets the count
            return reply(c, nan_update() if bad else client_update(c), 10, float(round_))

        return of

    for round_ in range(1, 7):  # client 2 is bad in rounds 1, 3, 4 and 5
        sampled = play_round(strategy, round_, replies_of(round_))
        assert sampled == ([0, 1, 2] if round_ <= 5 else [0, 1])
        assert strategy.outcomes[round_].excluded == ([2] if round_ == 5 else [])
    (at, why) = strategy.excluded[2]
    assert at == 5 and why.startswith("a bad reply in 3 rounds in a row (last: train: update")
    assert "client 2 is excluded from sampling after round 5" in caplog.text
    assert strategy.privacy.epsilon_by_client(5)[2] == 5.0  # its reports were still recorded
    assert strategy.failure_before(7) is None  # the others go on
    restored = strategy_for(range(3))
    restored.restore_state(json.loads(json.dumps(strategy.checkpoint_state())))
    assert restored.excluded == strategy.excluded and restored.bad_streak == strategy.bad_streak


def test_every_update_rejected_as_nan_while_epsilon_is_spent_fails_the_run():
    """`--lr` too large: every update is NaN, every round charges ε: the run stops, says why."""
    strategy = strategy_for(range(2))
    for round_ in (1, 2, 3):
        play_round(strategy, round_, lambda c, r=round_: reply(c, nan_update(), 10, float(r)))
        assert strategy.outcomes[round_].no_update.startswith(
            "2 train replies dropped (client 0: update rejected: the update contains NaN"
        )
    assert strategy.failure_before(4) == (
        "no client is left to sample: 2 excluded for bad replies (clients 0, 1)"
    )
    assert strategy.privacy.epsilon_max() == 3.0  # the privacy they spent is on the books
    np.testing.assert_array_equal(strategy._current.to_numpy_ndarrays()[0], np.zeros(SHAPES[0]))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_three_rounds_that_charge_privacy_without_changing_the_model_fail_the_run():
    strategy = strategy_for(range(2))
    huge = [np.full(s, 3e38, np.float32) for s in SHAPES]
    strategy._current = ArrayRecord(huge)
    for round_ in (1, 2):
        play_round(strategy, round_, lambda c: reply(c, huge, 10, 1.0))
        assert strategy.failure_before(round_ + 1) is None
    play_round(strategy, 3, lambda c: reply(c, huge, 10, 1.0))
    assert strategy.failure_before(4) == (
        "3 rounds in a row charged clients' privacy but no client update reached the model "
        "(round 3: the aggregated update made the model non-finite (kept the model))"
    )
    assert strategy.excluded == {}  # nobody to blame: the sum overflowed


def test_a_round_without_an_update_that_charged_nobody_does_not_count_towards_failure():
    strategy = strategy_for(range(2))
    for round_ in (1, 2, 3):
        play_round(strategy, round_, lambda c: reply(c, None, 10, 1.0, declined=True))
    assert strategy.fruitless_streak == 0
    assert strategy.outcomes[1].no_update == "2 declined (budget)"
    assert strategy.outcomes[3].no_update == "no client was sampled"
    assert "every client" in strategy.stop_reason_before(4)  # a budget stop, not a failure
    assert strategy.failure_before(4) is None


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_an_aggregate_that_makes_the_model_non_finite_is_not_applied():
    strategy = strategy_for(range(1))
    huge = [np.full(s, 3e38, np.float32) for s in SHAPES]
    strategy._current = ArrayRecord([np.full(s, 3e38, np.float32) for s in SHAPES])
    arrays, _ = strategy.aggregate_train(1, [reply(0, huge, 10, 1.0)])
    assert all(np.all(np.isfinite(a)) for a in arrays.to_numpy_ndarrays())
    assert strategy.outcomes[1].trained == []
    assert "non-finite" in strategy.outcomes[1].no_update


# -- discovery: which nodes are admitted, as which client ---------------------------------------


def claiming_grid(claims, contacted):
    """Nodes 1001, 1002, ... (real ClientApp calls in this process) that answer the server's
    query with the client id in `claims` (None: a reply that names none)."""
    from flwr.clientapp import ClientApp

    from privet.simulations.inprocess_engine import FIRST_NODE_ID, InProcessGrid

    app = ClientApp()

    @app.query()
    def query(msg, context):
        contacted.append(context.node_id)
        claim = claims[context.node_id - FIRST_NODE_ID]
        metrics = MetricRecord({} if claim is None else {"client-id": claim})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return InProcessGrid(app, num_nodes=len(claims))


def test_discovery_admits_only_the_listed_nodes_each_as_its_client(caplog):
    contacted = []
    # 1001 and 1002 are the partners; 1003 is registered but unlisted and claims client 0; 1004 is
    # listed as client 2 but claims client 0; 1005 is listed but names no client.
    grid = claiming_grid([0, 1, 0, 0, None], contacted)
    strategy = strategy_for([])
    strategy.client_of_node = {}
    listed = {1001: 0, 1002: 1, 1004: 2, 1005: 3}
    strategy.discover_clients(grid, expected=4, timeout=5, node_clients=listed)
    assert strategy.client_of_node == {1001: 0, 1002: 1}
    assert 1003 not in contacted  # an unlisted node is never even asked
    assert set(strategy.refused_nodes) == {1003, 1004, 1005}
    assert "node 1003 refused: it is not in node-clients" in caplog.text
    assert "node 1004 refused: it claims client id 0 but node-clients gives it 2" in caplog.text
    assert "node 1005 refused: its reply names no client id" in caplog.text
    # The refused nodes are never sampled.
    strategy.configure_train(1, ArrayRecord([np.zeros(3, dtype=np.float32)]), ConfigRecord(), grid)
    assert set(strategy.outcomes[1].sampled) <= {0, 1}


def test_every_node_that_takes_no_part_is_listed_with_its_reason():
    """results.json's `left_out`: refused nodes, and listed nodes that never connected."""
    grid = claiming_grid([0, 1, 0], [])
    strategy = strategy_for([])
    strategy.client_of_node = {}
    listed = {1001: 0, 1002: 1, 1009: 2}  # 1009 never connects
    strategy.discover_clients(grid, expected=3, timeout=0.5, node_clients=listed)
    assert strategy.left_out() == {
        1003: "it is not in node-clients (not contacted, never sampled)",
        1009: "listed in node-clients as client 2 but not connected within 0.5 s (round-timeout)",
    }


def test_discovery_without_node_clients_asks_every_node_and_names_a_double_claim():
    grid = claiming_grid([0, 1, 0], [])
    strategy = strategy_for([])
    strategy.client_of_node = {}
    with pytest.raises(ClientReportError, match=r"nodes 1001, 1003 all claim client id 0; .*"):
        strategy.discover_clients(grid, expected=3, timeout=5)
    strategy = strategy_for([])
    strategy.client_of_node = {}
    strategy.discover_clients(claiming_grid([4, 1], []), expected=2, timeout=5)
    assert strategy.client_of_node == {1001: 4, 1002: 1}


def test_discovery_fails_in_one_line_when_no_listed_node_comes_or_is_admitted():
    strategy = strategy_for([])
    strategy.client_of_node = {}
    with pytest.raises(TimeoutError, match=r"only 0 of 2 nodes came within 0.2 s; .*node-clients"):
        strategy.discover_clients(
            claiming_grid([0, 1], []), expected=2, timeout=0.2, node_clients={7: 0, 8: 1}
        )
    with pytest.raises(ClientReportError, match=r"only 0 node\(s\) were admitted, 1 needed"):
        strategy.discover_clients(
            claiming_grid([5, 6], []), expected=2, timeout=5, node_clients={1001: 0, 1002: 1}
        )


def test_discovery_sends_the_schema_digest_and_notes_a_node_with_one_class():
    """A node's own rows holding one class are trained on, and named in the run's warnings."""
    from flwr.clientapp import ClientApp

    from privet.server.results import RunResults
    from privet.simulations.inprocess_engine import InProcessGrid
    from privet.task.config import RunConfig

    app, asked = ClientApp(), []

    @app.query()
    def query(msg, context):
        asked.append(dict(msg.content.config_records["config"]))
        claim = context.node_id - 1001
        present = {"classes-present": 1} if claim == 1 else {"classes-present": 10}
        metrics = MetricRecord({"client-id": claim, **present})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    strategy = strategy_for([])
    strategy.client_of_node = {}
    strategy.discover_clients(InProcessGrid(app, num_nodes=2), 2, 5, schema_digest="ab" * 32)
    assert asked == [{"schema-sha256": "ab" * 32}] * 2
    assert strategy.data_notes == {
        1: "client 1's training rows hold 1 class(es) of the run's labels"
    }
    results = RunResults(config=RunConfig(), engine="in-process")
    results.data_notes = dict(strategy.data_notes)
    assert strategy.data_notes[1] in results.warnings()
