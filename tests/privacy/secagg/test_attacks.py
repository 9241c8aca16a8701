"""A server that lies, a survivor set that falls apart, a network that replays: each is refused.

The tests play the attacker (or the faulty network) by hand against the plain protocol classes.
Where it is cheap, a test also bypasses the defence and shows that the attack then works, so
that it would notice the defence going away.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from privet.privacy.secagg import (
    STAGES,
    KeysBroadcast,
    MaskedInput,
    Refusal,
    SecAggClient,
    SecAggConfig,
    SecAggProtocolError,
    SecAggRefusal,
    SecAggServer,
    SecAggSplit,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    run_round,
    shamir,
)
from privet.privacy.secagg.crypto import agree, derive_mask_seed, expand_mask, load_private_key
from privet.privacy.secagg.protocol import DONE_STAGE, decode_vector

BITS, LENGTH, ROUND = 20, 64, 77
MASK = np.uint64(2**BITS - 1)


def _inputs(ids, seed=5):
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 2**16, size=LENGTH, dtype=np.uint64) for u in ids}


def _sum(inputs, ids):
    total = np.zeros(LENGTH, dtype=np.uint64)
    for u in ids:
        total = (total + inputs[u]) & MASK
    return total


def _ring(n, degree):
    """The Harary graph on 0..n-1 in ring order: each client joined to degree/2 on each side."""
    return {
        u: frozenset((u + s) % n for s in range(-degree // 2, degree // 2 + 1) if s)
        for u in range(n)
    }


# ---------------------------------------------------------------------------------------------
# Item 3: the client checks the threshold itself


class LyingServer:
    """Plays the server by hand on a complete graph of ``n`` clients, with any threshold."""

    def __init__(self, n, threshold):
        self.config = SecAggConfig(ROUND, threshold, BITS, LENGTH)
        self.clients = {u: SecAggClient(u, self.config) for u in range(n)}
        self.keys = {u: c.advertise_keys() for u, c in self.clients.items()}

    def broadcast(self, u, neighbours=None):
        nbrs = tuple(v for v in self.keys if v != u) if neighbours is None else tuple(neighbours)
        return KeysBroadcast(
            ROUND,
            u,
            nbrs,
            tuple(self.keys[v].cipher_public_key for v in nbrs),
            tuple(self.keys[v].mask_public_key for v in nbrs),
        )

    def share_keys(self):
        """Stage 1 for every client (each told the whole graph)."""
        self.shares = {u: c.share_keys(self.broadcast(u)) for u, c in self.clients.items()}

    def delivery(self, v, senders=None):
        senders = [u for u in self.shares if u != v] if senders is None else senders
        blobs = [
            dict(zip(self.shares[u].receiver_ids, self.shares[u].ciphertexts, strict=True))[v]
            for u in senders
        ]
        return SharesDelivery(ROUND, v, tuple(senders), tuple(blobs))

    def masked(self, inputs, deliveries):
        return {
            u: decode_vector(c.masked_input(deliveries[u], inputs[u]).masked, LENGTH, BITS)
            for u, c in self.clients.items()
        }

    def ask(self, holder, survivors, dropped=()):
        """One unmask request to ``holder``; returns its b shares and key shares by peer."""
        reply = self.clients[holder].unmask(
            UnmaskRequest(ROUND, holder, tuple(sorted(survivors)), tuple(sorted(dropped)))
        )
        return dict(zip(reply.survivor_ids, reply.self_mask_shares, strict=True)), dict(
            zip(reply.dropped_ids, reply.key_shares, strict=True)
        )

    def strip(self, victim, y, self_seed, mask_key=None):
        """The victim's input from its masked vector, its self-mask seed and (if needed) its key."""
        x = (y - expand_mask(self_seed, LENGTH, BITS)) & MASK
        if mask_key is not None:
            key = load_private_key(mask_key)
            for v, advertised in self.keys.items():
                if v == victim:
                    continue
                seed = derive_mask_seed(agree(key, advertised.mask_public_key), self.config.context)
                p = expand_mask(seed, LENGTH, BITS)
                x = (x - p) & MASK if v > victim else (x + p) & MASK
        return x


def threshold_one_attack(inputs):
    """t = 1, and an empty share delivery to client 0: its own share rebuilds its self mask."""
    server = LyingServer(4, threshold=1)
    server.share_keys()
    deliveries = {v: server.delivery(v) for v in server.clients}
    deliveries[0] = server.delivery(0, senders=[])  # "all your neighbours dropped"
    y = server.masked(inputs, deliveries)
    b_shares, _ = server.ask(0, survivors=[0])
    seed = shamir.reconstruct({1: b_shares[0]}, 1)
    return server.strip(0, y[0], seed)


def different_stories_attack(inputs):
    """t = 2 of 4: clients 0, 1 are told 0 survived, clients 2, 3 that it dropped."""
    server = LyingServer(4, threshold=2)
    server.share_keys()
    y = server.masked(inputs, {v: server.delivery(v) for v in server.clients})
    b0 = {h + 1: server.ask(h, survivors=[0, 1])[0][0] for h in (0, 1)}
    s0 = {h + 1: server.ask(h, survivors=[2, 3], dropped=[0])[1][0] for h in (2, 3)}
    return server.strip(0, y[0], shamir.reconstruct(b0, 2), shamir.reconstruct(s0, 2))


@pytest.mark.parametrize(
    ("closed", "threshold", "refused"),
    [(4, 1, True), (4, 2, True), (5, 2, True), (6, 3, True), (1, 1, True), (2, 1, True)]
    + [(4, 3, False), (3, 2, False), (5, 3, False), (2, 2, False), (6, 4, False)],
)
def test_client_refuses_a_threshold_that_is_not_a_strict_majority_before_any_share(
    closed, threshold, refused
):
    server = LyingServer(closed, threshold)
    client = server.clients[0]
    if not refused:
        shares = client.share_keys(server.broadcast(0))
        assert len(shares.ciphertexts) == closed - 1
        return
    with pytest.raises(SecAggRefusal, match=f"threshold {threshold} is not a strict majority"):
        client.share_keys(server.broadcast(0))
    assert not client._self_shares and not client._key_shares  # no share was made
    assert client.to_state()["stage"] == DONE_STAGE  # and it answers nothing more this round


def test_threshold_one_with_an_empty_delivery_is_refused_and_would_reveal_an_input(monkeypatch):
    inputs = _inputs(range(4))
    with pytest.raises(SecAggRefusal, match="threshold 1 is not a strict majority"):
        threshold_one_attack(inputs)
    # The attack is real: without the client's own check the server reads client 0's input.
    monkeypatch.setattr(SecAggClient, "_refuse_weak_threshold", lambda self, closed: None)
    assert np.array_equal(threshold_one_attack(inputs), inputs[0])


def test_different_stories_with_threshold_two_of_four_are_refused_and_would_reveal_an_input(
    monkeypatch,
):
    inputs = _inputs(range(4))
    with pytest.raises(SecAggRefusal, match="threshold 2 is not a strict majority of its closed"):
        different_stories_attack(inputs)
    monkeypatch.setattr(SecAggClient, "_refuse_weak_threshold", lambda self, closed: None)
    assert np.array_equal(different_stories_attack(inputs), inputs[0])


def test_honest_server_refuses_a_threshold_below_two():
    with pytest.raises(SecAggProtocolError, match="threshold 1 is below 2"):
        SecAggServer(SecAggConfig(ROUND, 1, BITS, LENGTH), {0: frozenset(), 1: frozenset()})


# ---------------------------------------------------------------------------------------------
# Item 4: the survivors must be connected in the masking graph


@pytest.mark.parametrize(
    ("n", "degree", "threshold", "drops", "sizes"),
    [
        (6, 2, 2, {"masked_input": [1, 4]}, (2, 2)),
        (6, 2, 2, {"advertise_keys": [1], "share_keys": [4]}, (2, 2)),
        (10, 4, 3, {"masked_input": [2, 3, 7, 8]}, (3, 3)),
        (12, 2, 2, {"masked_input": [2, 5, 9]}, (4, 3, 2)),
    ],
)
def test_survivors_split_in_the_masking_graph_abort_before_any_unmask_request(
    n, degree, threshold, drops, sizes
):
    ids = list(range(n))
    graph = _ring(n, degree)
    config = SecAggConfig(ROUND, threshold, BITS, LENGTH)
    inputs = _inputs(ids)
    # A single run of dropouts leaves the ring connected: the sum comes out exactly.
    one_run = {"masked_input": list(range(degree // 2))}
    clients = [SecAggClient(u, config) for u in ids]
    result = run_round(clients, SecAggServer(config, graph), inputs, one_run)
    assert np.array_equal(result.aggregate, _sum(inputs, result.survivor_ids))
    # Runs at two places pass every threshold check but split the survivors: no sum at all.
    clients = [SecAggClient(u, config) for u in ids]
    server = SecAggServer(config, graph)
    with pytest.raises(SecAggSplit, match="not connected in the masking graph") as raised:
        run_round(clients, server, inputs, drops)
    assert raised.value.stage == "masked_input" and raised.value.sizes == sizes
    assert not server._requests  # no unmask request was made
    with pytest.raises(SecAggProtocolError, match="out of order"):
        server.unmask([])


# ---------------------------------------------------------------------------------------------
# Item 5: every client reply is bound to its round and stage


def _complete(n):
    return {u: frozenset(v for v in range(n) if v != u) for u in range(n)}


def _staged_round(round_id, n=6, threshold=4, inputs=None, tamper=None):
    """Run one round stage by stage; ``tamper(stage, replies)`` may rewrite the reply list."""
    config = SecAggConfig(round_id, threshold, BITS, LENGTH)
    server = SecAggServer(config, _complete(n))
    clients = {u: SecAggClient(u, config) for u in range(n)}
    inputs = inputs if inputs is not None else _inputs(range(n))
    tamper = tamper or (lambda stage, replies: replies)
    replies = tamper(STAGES[0], [c.advertise_keys() for c in clients.values()])
    messages = server.receive_keys(replies)
    replies = tamper(STAGES[1], [clients[u].share_keys(m) for u, m in messages.items()])
    messages = server.route_shares(replies)
    replies = [clients[u].masked_input(m, inputs[u]) for u, m in messages.items()]
    messages = server.collect_masked(tamper(STAGES[2], replies))
    replies = tamper(STAGES[3], [clients[u].unmask(m) for u, m in messages.items()])
    return server.unmask(replies), server, replies


def test_a_replayed_masked_input_from_an_earlier_round_drops_only_that_client(caplog):
    inputs = _inputs(range(6))
    earlier = {}

    def keep(stage, replies):
        if stage == "masked_input":
            earlier.update({r.client_id: r for r in replies})
        return replies

    _staged_round(round_id=1, inputs=inputs, tamper=keep)

    def replay(stage, replies):
        if stage == "masked_input":
            return [earlier[3] if r.client_id == 3 else r for r in replies]
        return replies

    with caplog.at_level(logging.WARNING, logger="privet.privacy.secagg.protocol"):
        result, server, _ = _staged_round(round_id=2, inputs=inputs, tamper=replay)
    assert result.dropped_ids == (3,) and 3 not in result.survivor_ids
    assert np.array_equal(result.aggregate, _sum(inputs, result.survivor_ids))
    assert "stale reply" in server.rejected[3] and server.rejected[3].startswith("masked_input")
    assert "client 3 dropped at 'masked_input': stale reply" in caplog.text


@pytest.mark.parametrize("stage", STAGES)
def test_a_duplicate_reply_drops_only_that_client_and_the_round_completes(stage, caplog):
    inputs = _inputs(range(6))

    def duplicate(at, replies):
        if at == stage:
            return [*replies, next(r for r in replies if r.client_id == 2)]
        return replies

    with caplog.at_level(logging.WARNING, logger="privet.privacy.secagg.protocol"):
        result, server, _ = _staged_round(round_id=5, inputs=inputs, tamper=duplicate)
    # Dropped at unmask, client 2 had already sent its masked input: it is still in the sum.
    assert (2 in result.survivor_ids) == (stage == "unmask")
    assert np.array_equal(result.aggregate, _sum(inputs, result.survivor_ids))
    assert server.rejected == {2: f"{stage}: replied more than once in this stage"}
    assert f"client 2 dropped at '{stage}': replied more than once" in caplog.text


def test_a_reply_for_another_stage_or_round_drops_that_client():
    inputs = _inputs(range(6))

    def mislabel(stage, replies):
        if stage == "share_keys":
            return [
                dataclasses.replace(r, stage="unmask") if r.client_id == 1 else r for r in replies
            ]
        if stage == "unmask":
            return [dataclasses.replace(r, round_id=6) if r.client_id == 4 else r for r in replies]
        return replies

    result, server, _ = _staged_round(round_id=5, inputs=inputs, tamper=mislabel)
    assert result.survivor_ids == (0, 2, 3, 4, 5)  # 4 sent its masked input before its bad reply
    assert np.array_equal(result.aggregate, _sum(inputs, result.survivor_ids))
    assert sorted(server.rejected) == [1, 4]
    assert "'unmask'" in server.rejected[1] and "stale reply" in server.rejected[4]


def test_a_refusal_is_counted_and_a_stale_one_is_not(caplog):
    config = SecAggConfig(ROUND, 4, BITS, LENGTH)
    server = SecAggServer(config, _complete(6))
    clients = {u: SecAggClient(u, config) for u in range(6)}
    messages = server.receive_keys([c.advertise_keys() for c in clients.values()])
    with caplog.at_level(logging.WARNING, logger="privet.privacy.secagg.protocol"):
        server.refuse(Refusal(1, ROUND, "share_keys", "client 1 refuses: threshold\nforged line"))
    assert "client 1 refused stage 'share_keys': client 1 refuses: threshold forged line" in (
        caplog.text
    )
    server.refuse(Refusal(2, ROUND + 1, "share_keys", "an old refusal"))
    replies = [clients[u].share_keys(m) for u, m in messages.items() if u not in (1, 2)]
    replies.append(ShareKeys(1, ROUND, "share_keys", (), ()))  # ignored: 1 has refused
    deliveries = server.route_shares(replies)
    assert sorted(deliveries) == [0, 3, 4, 5]
    assert server.refusals == {1: "share_keys"}
    assert list(server.rejected) == [2] and "stale refusal" in server.rejected[2]


def test_client_messages_name_their_round_and_stage():
    config = SecAggConfig(ROUND, 2, BITS, LENGTH)
    server = SecAggServer(config, _complete(3))
    clients = {u: SecAggClient(u, config) for u in range(3)}
    keys = [c.advertise_keys() for c in clients.values()]
    assert {(k.round_id, k.stage) for k in keys} == {(ROUND, "advertise_keys")}
    shares = [clients[u].share_keys(m) for u, m in server.receive_keys(keys).items()]
    assert {(s.round_id, s.stage) for s in shares} == {(ROUND, "share_keys")}
    deliveries = server.route_shares(shares)
    masked = clients[0].masked_input(deliveries[0], np.zeros(LENGTH, dtype=np.uint64))
    assert isinstance(masked, MaskedInput)
    assert (masked.round_id, masked.stage) == (ROUND, "masked_input")


def test_a_malformed_share_list_or_masked_vector_drops_only_its_sender():
    inputs = _inputs(range(6))

    def garble(stage, replies):
        if stage == "share_keys":  # client 1 leaves out a neighbour
            return [
                dataclasses.replace(
                    r, receiver_ids=r.receiver_ids[1:], ciphertexts=r.ciphertexts[1:]
                )
                if r.client_id == 1
                else r
                for r in replies
            ]
        if stage == "masked_input":  # client 4's vector is cut short
            return [
                dataclasses.replace(r, masked=r.masked[:-1]) if r.client_id == 4 else r
                for r in replies
            ]
        return replies

    result, server, _ = _staged_round(round_id=5, inputs=inputs, tamper=garble)
    assert result.survivor_ids == (0, 2, 3, 5)
    assert np.array_equal(result.aggregate, _sum(inputs, result.survivor_ids))
    assert server.rejected[1] == "share_keys: did not encrypt shares to its neighbours"
    assert server.rejected[4].startswith("masked_input: masked vector must be")


@pytest.mark.parametrize(
    ("tamper_keys", "dropped", "reason"),
    [
        (  # client 1 advertises client 0's keys: which one copied cannot be told, both go
            lambda keys: {**keys, 1: dataclasses.replace(keys[0], client_id=1)},
            (0, 1),
            "advertised a public key that client",
        ),
        (
            lambda keys: {
                **keys,
                2: dataclasses.replace(keys[2], mask_public_key=keys[2].cipher_public_key),
            },
            (2,),
            "its two public keys are the same",
        ),
        (
            lambda keys: {**keys, 3: dataclasses.replace(keys[3], cipher_public_key=bytes(32))},
            (3,),
            "low-order point",
        ),
    ],
)
def test_a_bad_or_copied_public_key_drops_its_advertisers_before_any_broadcast(
    tamper_keys, dropped, reason
):
    """Without the server's check every honest neighbour fails at share keys, every round."""
    n = 7
    inputs = _inputs(range(n))

    def tamper(stage, replies):
        if stage == "advertise_keys":
            return list(tamper_keys({r.client_id: r for r in replies}).values())
        return replies

    result, server, _ = _staged_round(round_id=9, n=n, inputs=inputs, tamper=tamper)
    assert result.dropped_ids == dropped
    assert np.array_equal(result.aggregate, _sum(inputs, result.survivor_ids))
    assert sorted(server.rejected) == list(dropped)
    assert all(reason in server.rejected[u] for u in dropped)
    # What an honest client does with a broadcast that repeats a key (the old failure).
    config = SecAggConfig(9, 4, BITS, LENGTH)
    clients = {u: SecAggClient(u, config) for u in range(n)}
    keys = tamper_keys({u: c.advertise_keys() for u, c in clients.items()})
    honest = next(u for u in range(n) if u not in dropped)
    others = [u for u in range(n) if u != honest]
    broadcast = KeysBroadcast(
        9,
        honest,
        tuple(others),
        tuple(keys[u].cipher_public_key for u in others),
        tuple(keys[u].mask_public_key for u in others),
    )
    with pytest.raises(Exception, match="repeated public keys|low-order"):
        clients[honest].share_keys(broadcast)
