"""The server's secure-aggregation round driver, run against the real client-side code in-process.

The exchange below plays the network: it hands each stage's messages to the clients'
`client.secure_aggregation.answer` as plain data and returns the replies, dropping the clients a
test chooses. Everything else is the code a Flower round runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest

from privet.client.secure_aggregation import PendingInput, SecAggRequest, answer, begin
from privet.client.training_round import clip_update
from privet.privacy.secagg import SecAggAbort, SecAggProtocolError, SecAggSplit, sum_mod
from privet.privacy.secagg.update_vector import encode_update
from privet.server.aggregation import ClientUpdate, weighted_mean_update
from privet.server.secure_aggregation import (
    COMPLETE_GRAPH_UP_TO,
    SecAggSettings,
    decode_secure_sum,
    plan_round,
    run_secure_sum,
    split_warning,
    threshold_for,
)
from privet.task.config import RunConfig

SHAPES = [(7, 3), (3,)]
NUM_PARAMS = sum(math.prod(s) for s in SHAPES)


def settings(threshold=2 / 3, degree=None, levels=2**16):
    return SecAggSettings(threshold=threshold, degree=degree, levels=levels, stage_timeout=5.0)


def updates_for(ids, clip, seed=0):
    """Random updates, some above the clip norm, clipped the way a client clips them."""
    rng = np.random.default_rng(seed)
    out = {}
    for u in ids:
        scale = rng.uniform(0.2, 2.0) * clip / math.sqrt(NUM_PARAMS)
        raw = [rng.normal(0, scale, size=s).astype(np.float32) for s in SHAPES]
        out[u] = clip_update(raw, clip)
    return out


class Round:
    """Clients and server of one round, with chosen clients silent from a chosen stage on.

    ``drop`` may be a function of the round's graph. ``tamper(stage, replies)`` may rewrite the
    replies (client id → reply) into what the network delivers; ``requests`` gives chosen
    clients other settings than the server's (an attacking server).
    """

    def __init__(
        self, ids, clip=1.0, weights=None, drop=None, tamper=None, requests=None, run=True, **kw
    ):
        self.ids = list(ids)
        self.plan = plan_round(settings(**kw), self.ids, NUM_PARAMS, clip)
        request = SecAggRequest.from_train_config(self.plan.train_config(), clip)
        self.updates = updates_for(self.ids, clip)
        self.weights = weights or {u: 1.0 for u in self.ids}
        drop = drop(self.plan.graph) if callable(drop) else drop
        self.drop = {stage: set(v) for stage, v in (drop or {}).items()}
        self.tamper = tamper or (lambda stage, replies: replies)
        self.requests = requests or {}
        self.request = request
        self.gone: set[int] = set()
        self.states = {}
        self.pending = {
            u: PendingInput(upd, within, request.spec, dither_seed=100 + u)
            for u, (upd, within) in self.updates.items()
        }
        self.inputs = {}
        self.stages = []
        if run:
            self.run()

    def run(self):
        self.result = run_secure_sum(self.plan, self.exchange)
        return self.result

    def exchange(self, stage, messages):
        self.stages.append(stage)
        self.gone |= self.drop.get(stage, set())
        replies = {}
        for u, message in messages.items():
            if u in self.gone:
                continue
            if stage == "advertise_keys":
                request = self.requests.get(u, self.request)
                self.states[u], replies[u] = begin(u, request, NUM_PARAMS)
                continue
            self.states[u], reply, _ = answer(
                stage, self.states[u], message, self.pending[u], self.weights[u]
            )
            replies[u] = reply
        return self.tamper(stage, replies)

    def encoded(self, u):
        """The exact integer vector client u fed into the sum (same dither seed)."""
        update, within = self.updates[u]
        spec = self.plan.spec
        return encode_update(
            update, self.weights[u], within, spec, np.random.default_rng(100 + u)
        ).values


def test_threshold_is_a_majority_of_the_neighbourhood_and_counts_are_checked():
    assert threshold_for(10, 0.6) == 6
    assert threshold_for(10, 2 / 3) == 7
    assert threshold_for(10, 0.51) == 6  # at least a strict majority
    assert threshold_for(2, 2 / 3) == 2
    assert threshold_for(10, 8) == 8 and threshold_for(10, 3) == 6
    with pytest.raises(SecAggProtocolError, match="exceeds"):
        threshold_for(5, 6)


def test_graph_is_complete_for_small_cohorts_and_logarithmic_above():
    small = plan_round(settings(), list(range(COMPLETE_GRAPH_UP_TO)), 10, 1.0)
    assert small.neighbours == COMPLETE_GRAPH_UP_TO - 1
    large = plan_round(settings(), list(range(100)), 10, 1.0)
    assert large.neighbours == 2 * math.ceil(math.log2(100))  # 14 of 99
    assert large.config.threshold == math.ceil(2 / 3 * 15)
    chosen = plan_round(settings(degree=4), list(range(10)), 10, 1.0)
    assert chosen.neighbours == 4 and chosen.config.threshold == 4
    # bits: 10 clients × 65535 levels must not overflow
    assert 2**chosen.config.bits > 10 * 65535 >= 2 ** (chosen.config.bits - 1)
    with pytest.raises(SecAggProtocolError, match="at least 2"):
        plan_round(settings(), [4], 10, 1.0)


def test_unmasked_sum_equals_the_plain_sum_of_quantized_inputs_exactly():
    r = Round(range(8))
    expected = sum_mod([r.encoded(u) for u in range(8)], r.plan.spec)
    assert np.array_equal(r.result.aggregate, expected)
    assert r.result.survivor_ids == tuple(range(8)) and r.result.dropped_ids == ()


def test_weighted_mean_matches_plain_fedavg_within_the_stated_bound():
    counts = {0: 120, 1: 300, 2: 80, 3: 300, 4: 45}
    largest = max(counts.values())
    weights = {u: n / largest for u, n in counts.items()}
    r = Round(counts, clip=1.0, weights=weights)
    secure = decode_secure_sum(r.plan, r.result, SHAPES)
    total_weight = sum(weights.values())
    mean = [part / total_weight for part in secure.weighted_update_sum]
    plain = weighted_mean_update([ClientUpdate(u, r.updates[u][0], n) for u, n in counts.items()])
    bound = secure.error_bound / total_weight
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(mean, plain, strict=True))
    assert worst < bound
    assert worst > 0  # quantization did happen: the test would see a broken grid
    assert secure.within_clip == sum(within for _, within in r.updates.values())


@pytest.mark.parametrize("stage", ["advertise_keys", "share_keys", "masked_input", "unmask"])
def test_ten_clients_threshold_six_recover_from_dropouts_at_every_stage(stage):
    dropped = {1, 4, 7, 9}  # 6 of 10 survive
    r = Round(range(10), threshold=0.6, drop={stage: dropped})
    assert r.plan.config.threshold == 6
    # Clients that drop at unmask had already sent their masked inputs: they are in the sum.
    summed = range(10) if stage == "unmask" else [u for u in range(10) if u not in dropped]
    expected = sum_mod([r.encoded(u) for u in summed], r.plan.spec)
    assert np.array_equal(r.result.aggregate, expected)
    assert r.result.survivor_ids == tuple(summed)


@pytest.mark.parametrize("stage", ["advertise_keys", "share_keys", "masked_input", "unmask"])
def test_five_survivors_of_ten_with_threshold_six_fail_cleanly(stage):
    with pytest.raises(SecAggAbort) as raised:
        Round(range(10), threshold=0.6, drop={stage: {0, 2, 4, 6, 8}})
    assert raised.value.needed == 6 and raised.value.alive == 5


def test_malformed_or_misaddressed_replies_count_as_dropouts():
    ids = list(range(6))
    plan = plan_round(settings(threshold=0.6), ids, NUM_PARAMS, 1.0)
    request = SecAggRequest.from_train_config(plan.train_config(), 1.0)
    states = {}
    updates = updates_for(ids, 1.0)

    def exchange(stage, messages):
        out = {}
        if stage == "advertise_keys":
            for u in messages:
                states[u], out[u] = begin(u, request, NUM_PARAMS)
            out[5] = {**out[5], "mask-public-key": "not bytes"}  # malformed
            out[4] = out[3]  # claims to be client 3
            return out
        for u, m in messages.items():
            pending = PendingInput(*updates[u], request.spec, 1)
            states[u], out[u], _ = answer(stage, states[u], m, pending, 1.0)
        return out

    result = run_secure_sum(plan, exchange)
    assert result.survivor_ids == (0, 1, 2, 3) and result.dropped_ids == (4, 5)


def ring_order(graph):
    """The clients of a degree-2 graph (a cycle) in ring order."""
    order = [min(graph)]
    while len(order) < len(graph):
        order.append(min(graph[order[-1]] - set(order[-2:])))
    return order


def test_a_round_whose_survivors_split_is_refused_before_unmasking():
    # Degree 2 (a ring), t = 2 of 3: two dropouts three apart pass every threshold check but
    # leave two pairs of survivors that share no mask.
    r = Round(range(6), degree=2, drop=lambda g: {"masked_input": ring_order(g)[1::3]}, run=False)
    assert r.plan.config.threshold == 2 and r.plan.neighbours == 2
    with pytest.raises(SecAggSplit, match="not connected in the masking graph") as raised:
        r.run()
    assert raised.value.stage == "masked_input" and raised.value.sizes == (2, 2)
    assert "unmask" not in r.stages  # no unmask request went out
    # One dropout leaves a path: the sum comes out exactly.
    r = Round(range(6), degree=2, drop={"masked_input": {3}})
    expected = sum_mod([r.encoded(u) for u in r.result.survivor_ids], r.plan.spec)
    assert np.array_equal(r.result.aggregate, expected) and r.result.dropped_ids == (3,)


@pytest.mark.parametrize(
    ("settings_", "warned"),
    [
        (dict(clients=6, secagg_degree=2), True),
        (dict(clients=20, secagg_degree=4, secagg_threshold=0.6), True),
        (dict(clients=20, secagg_degree=4, secagg_threshold=3), True),
        (dict(clients=100, clients_per_round=64, secagg_threshold=0.51), True),
        (dict(clients=20, secagg_degree=4), False),  # t = 4 of 5: a split trips the threshold
        (dict(clients=20, secagg_degree=4, secagg_threshold=4), False),
        (dict(clients=9, secagg_degree=4, secagg_threshold=0.6), False),  # too few to split
        (dict(clients=5, secagg_degree=2), False),
        (dict(clients=30, secagg_threshold=0.51), False),  # complete graph
        (dict(clients=100, clients_per_round=64), False),  # default t = 9 of 13
    ],
)
def test_settings_that_let_dropouts_split_the_survivors_get_one_warning_at_run_start(
    settings_, warned, caplog, tmp_path
):
    config = RunConfig(**settings_, secure_aggregation=True, output=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="privet.server.secure_aggregation"):
        assert SecAggSettings.from_config(config) is not None
    lines = [r.getMessage() for r in caplog.records if "split the survivors" in r.getMessage()]
    assert len(lines) == warned
    assert (split_warning(config) is not None) == warned
    if warned:
        assert "secagg-degree" in lines[0] and "secagg-threshold" in lines[0]
        assert "\n" not in lines[0]
    assert split_warning(dataclasses.replace(config, secure_aggregation=False)) is None


def test_a_client_sent_a_weak_threshold_refuses_and_is_counted(caplog):
    # An attacking server tells client 0 t = 2 in a complete graph of 6 (closed 6: 2·2 ≤ 6).
    r = Round(range(6), threshold=0.6, run=False)
    told = {**r.plan.train_config(), "secagg-threshold": 2}
    r.requests = {0: SecAggRequest.from_train_config(told, 1.0)}
    with caplog.at_level(logging.WARNING):
        r.run()
    assert r.plan.server.refusals == {0: "share_keys"} and not r.plan.server.rejected
    assert r.result.survivor_ids == (1, 2, 3, 4, 5)
    expected = sum_mod([r.encoded(u) for u in r.result.survivor_ids], r.plan.spec)
    assert np.array_equal(r.result.aggregate, expected)
    assert "client 0 refuses secure-aggregation stage 'share_keys'" in caplog.text  # client log
    assert "client 0 refused stage 'share_keys'" in caplog.text  # server log


def test_a_replayed_masked_input_from_an_earlier_round_drops_that_client(caplog):
    kept = {}

    def keep(stage, replies):
        if stage == "masked_input":
            kept.update(replies)
        return replies

    first = Round(range(6), threshold=0.6, tamper=keep)

    def replay(stage, replies):
        if stage == "masked_input":
            return {**replies, 3: kept[3]}
        return replies

    with caplog.at_level(logging.WARNING):
        second = Round(range(6), threshold=0.6, tamper=replay)
    assert first.plan.config.round_id != second.plan.config.round_id  # fresh per round
    assert second.result.dropped_ids == (3,)
    expected = sum_mod([second.encoded(u) for u in (0, 1, 2, 4, 5)], second.plan.spec)
    assert np.array_equal(second.result.aggregate, expected)
    assert list(second.plan.server.rejected) == [3]
    assert "client 3 dropped at 'masked_input': stale reply" in caplog.text


@pytest.mark.parametrize("stage", ["advertise_keys", "share_keys", "masked_input", "unmask"])
def test_a_client_that_replies_twice_is_dropped_and_the_round_completes(stage):
    def twice(at, replies):
        pairs = list(replies.items())
        return pairs + [(2, replies[2])] if at == stage else pairs

    r = Round(range(6), threshold=0.6, tamper=twice)
    assert r.plan.server.rejected == {2: f"{stage}: replied more than once in this stage"}
    summed = (0, 1, 2, 3, 4, 5) if stage == "unmask" else (0, 1, 3, 4, 5)
    assert r.result.survivor_ids == summed
    expected = sum_mod([r.encoded(u) for u in summed], r.plan.spec)
    assert np.array_equal(r.result.aggregate, expected)


def test_every_round_gets_a_fresh_64_bit_round_id():
    ids = [plan_round(settings(), [0, 1, 2], 10, 1.0).config.round_id for _ in range(20)]
    assert len(set(ids)) == 20 and all(0 <= i < 2**64 for i in ids)
    assert max(ids) >= 2**60  # drawn from all 64 bits, not a small counter
