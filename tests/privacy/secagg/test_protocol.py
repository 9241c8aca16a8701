import dataclasses
import hashlib
import os

import numpy as np
import pytest
from scipy import stats

from privet.privacy.secagg import (
    STAGES,
    QuantizationSpec,
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggCryptoError,
    SecAggProtocolError,
    SecAggRefusal,
    SecAggServer,
    SeededRandom,
    build_graph,
    default_degree,
    dequantize_sum,
    quantize,
    run_round,
    sum_mod,
)
from privet.privacy.secagg.protocol import decode_vector

N, T, LENGTH = 10, 6, 500


def _seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _setup(ids, threshold=T, degree=None, length=LENGTH, bits=20, seeded=False):
    cfg = SecAggConfig(round_id=3, threshold=threshold, bits=bits, vector_length=length)
    graph = build_graph(ids, degree, SeededRandom(_seed("graph")) if seeded else os.urandom)
    clients = [
        SecAggClient(u, cfg, SeededRandom(_seed(f"client {u}")) if seeded else os.urandom)
        for u in ids
    ]
    return cfg, graph, clients, SecAggServer(cfg, graph)


def _float_updates(ids, spec, length, rng):
    floats, quantized = {}, {}
    for u in ids:
        x = rng.normal(size=length)
        x *= min(1.0, spec.clip_norm / np.linalg.norm(x))
        floats[u] = x
        q = quantize([x], spec, rng)
        assert q.clipped == 0
        quantized[u] = q.values
    return floats, quantized


@pytest.mark.parametrize("degree", [None, 6, 4])
def test_unmasked_aggregate_is_exact(degree):
    ids = list(range(N))
    spec = QuantizationSpec(1.0, N, levels=2**12)
    threshold = T if degree in (None, 6) else 3
    cfg, graph, clients, server = _setup(ids, threshold, degree, bits=spec.bits)
    if degree is not None:
        assert all(len(graph[u]) == degree for u in ids)
    floats, quantized = _float_updates(ids, spec, LENGTH, np.random.default_rng(0))
    result = run_round(clients, server, quantized)
    assert result.survivor_ids == tuple(ids) and result.dropped_ids == ()
    assert np.array_equal(result.aggregate, sum_mod(list(quantized.values()), spec))
    (approx,) = dequantize_sum(result.aggregate, N, spec, [(LENGTH,)])
    assert np.max(np.abs(approx - sum(floats.values()))) < spec.error_bound(N)


def test_every_client_at_the_extreme_through_secure_aggregation():
    ids = list(range(N))
    spec = QuantizationSpec(0.5, N, levels=2**16)
    cfg, graph, clients, server = _setup(ids, bits=spec.bits, length=8)
    inputs = {u: quantize([np.full(8, 0.5)], spec).values for u in ids}
    result = run_round(clients, server, inputs)
    assert [int(v) for v in result.aggregate] == [N * (2**16 - 1)] * 8
    (approx,) = dequantize_sum(result.aggregate, N, spec, [(8,)])
    np.testing.assert_allclose(approx, N * 0.5)


def _inputs(ids, bits=20, length=LENGTH):
    rng = np.random.default_rng(7)
    return {u: rng.integers(0, 2 ** (bits - 4), size=length, dtype=np.uint64) for u in ids}


@pytest.mark.parametrize("stage", STAGES)
def test_four_dropouts_at_any_stage_are_recovered_exactly(stage):
    ids = list(range(N))
    dropped = [0, 3, 5, 9]
    cfg, graph, clients, server = _setup(ids)
    inputs = _inputs(ids)
    result = run_round(clients, server, inputs, {stage: dropped})
    # Clients that drop during unmask already sent their masked input: they are in the sum.
    summed = ids if stage == "unmask" else [u for u in ids if u not in dropped]
    assert list(result.survivor_ids) == summed
    spec_mask = np.uint64(2**20 - 1)
    expected = np.zeros(LENGTH, dtype=np.uint64)
    for u in summed:
        expected = (expected + inputs[u]) & spec_mask
    assert np.array_equal(result.aggregate, expected)


def test_dropouts_spread_over_all_stages():
    ids = list(range(N))
    cfg, graph, clients, server = _setup(ids)
    inputs = _inputs(ids)
    drops = {"advertise_keys": [1], "share_keys": [2], "masked_input": [4], "unmask": [8]}
    result = run_round(clients, server, inputs, drops)
    assert result.survivor_ids == (0, 3, 5, 6, 7, 8, 9)
    expected = sum(inputs[u] for u in result.survivor_ids) & np.uint64(2**20 - 1)
    assert np.array_equal(result.aggregate, expected)


@pytest.mark.parametrize("stage", STAGES)
def test_five_survivors_abort_cleanly(stage):
    ids = list(range(N))
    cfg, graph, clients, server = _setup(ids)
    with pytest.raises(SecAggAbort, match=f"stage '{stage}'") as info:
        run_round(clients, server, _inputs(ids), {stage: [0, 1, 3, 5, 9]})
    assert info.value.stage == stage
    assert (info.value.alive, info.value.needed) == (5, T)
    with pytest.raises(SecAggProtocolError, match="out of order"):
        server.unmask([])  # no partial sum after an abort


def test_sparse_graph_tolerates_dropouts_and_checks_each_neighbourhood():
    ids = list(range(20))
    degree = default_degree(20)
    assert degree == 10
    cfg, graph, clients, server = _setup(ids, threshold=7, degree=degree)
    inputs = _inputs(ids)
    result = run_round(clients, server, inputs, {"masked_input": [0, 1], "unmask": [2, 3]})
    expected = sum(inputs[u] for u in result.survivor_ids) & np.uint64(2**20 - 1)
    assert np.array_equal(result.aggregate, expected)
    # Dropping one client's whole neighbourhood but two leaves it short even though 16 of 20 live.
    cfg, graph, clients, server = _setup(ids, threshold=7, degree=degree)
    victim = 5
    gone = sorted(graph[victim])[:5]
    with pytest.raises(SecAggAbort, match="neighbourhood has 6 live share holders"):
        run_round(clients, server, inputs, {"share_keys": gone})


def test_large_node_ids_like_flowers():
    rng = np.random.default_rng(11)
    ids = sorted({int(v) for v in rng.integers(1, 2**63, size=6)})
    cfg, graph, clients, server = _setup(ids, threshold=4)
    inputs = _inputs(ids)
    result = run_round(clients, server, inputs, {"masked_input": [ids[2]]})
    expected = sum(inputs[u] for u in result.survivor_ids) & np.uint64(2**20 - 1)
    assert np.array_equal(result.aggregate, expected)


def _run_to_unmask(clients, server, inputs):
    broadcasts = server.receive_keys([c.advertise_keys() for c in clients])
    deliveries = server.route_shares([c.share_keys(broadcasts[c.client_id]) for c in clients])
    masked = [c.masked_input(deliveries[c.client_id], inputs[c.client_id]) for c in clients]
    return masked, server.collect_masked(masked)


def test_masked_vector_is_uniform_and_uncorrelated_with_its_input():
    ids = list(range(5))
    bits, length = 20, 20_000
    cfg, graph, clients, server = _setup(ids, threshold=3, bits=bits, length=length, seeded=True)
    # A structured input, as quantized updates are: a ramp confined to the low 12 bits.
    ramp = np.arange(length, dtype=np.uint64) % np.uint64(2**12)
    inputs = {u: ramp for u in ids}
    masked, _ = _run_to_unmask(clients, server, inputs)
    y = decode_vector(masked[0].masked, length, bits)
    assert stats.kstest(y / 2**bits, "uniform").pvalue > 0.001
    counts = np.bincount((y >> np.uint64(bits - 4)).astype(np.int64), minlength=16)
    assert stats.chisquare(counts).pvalue > 0.001
    r = np.corrcoef(y.astype(np.float64), ramp.astype(np.float64))[0, 1]
    assert abs(r) < 4 / np.sqrt(length)
    # the test has power: the unmasked input fails it overwhelmingly
    assert stats.kstest(ramp / 2**bits, "uniform").pvalue < 1e-100


def test_seeded_simulation_is_reproducible():
    ids = list(range(4))
    outs = []
    for _ in range(2):
        cfg, graph, clients, server = _setup(ids, threshold=3, seeded=True, length=16)
        masked, _ = _run_to_unmask(clients, server, _inputs(ids, length=16))
        outs.append([m.masked for m in masked])
    assert outs[0] == outs[1]


def test_client_refuses_to_reveal_both_secrets_of_one_peer():
    ids = list(range(N))
    cfg, graph, clients, server = _setup(ids)
    _, requests = _run_to_unmask(clients, server, _inputs(ids))
    honest = requests[0]
    greedy = dataclasses.replace(honest, dropped_ids=(4,))  # 4 is also listed as a survivor
    with pytest.raises(SecAggRefusal, match="client 0 refuses: asked for both secrets"):
        clients[0].unmask(greedy)
    # and a second request in the same round is refused too, whatever it asks
    with pytest.raises(SecAggProtocolError, match="out of order"):
        clients[0].unmask(honest)


def test_client_refuses_when_told_too_few_survived():
    ids = list(range(N))
    cfg, graph, clients, server = _setup(ids)
    _, requests = _run_to_unmask(clients, server, _inputs(ids))
    few = dataclasses.replace(requests[0], survivor_ids=(0, 1, 2, 3, 4), dropped_ids=())
    with pytest.raises(SecAggAbort, match="told 5 neighbourhood members"):
        clients[0].unmask(few)


def test_tampered_share_ciphertext_fails_authentication():
    ids = list(range(6))
    cfg, graph, clients, server = _setup(ids, threshold=4)
    broadcasts = server.receive_keys([c.advertise_keys() for c in clients])
    deliveries = server.route_shares([c.share_keys(broadcasts[c.client_id]) for c in clients])
    d = deliveries[2]
    blob = bytearray(d.ciphertexts[0])
    blob[-1] ^= 0x80
    tampered = dataclasses.replace(d, ciphertexts=(bytes(blob), *d.ciphertexts[1:]))
    with pytest.raises(SecAggCryptoError, match="from client 0 to 2 in round 3 failed auth"):
        clients[2].masked_input(tampered, np.zeros(LENGTH, dtype=np.uint64))


def test_share_ciphertext_relabelled_to_another_sender_fails():
    ids = list(range(6))
    cfg, graph, clients, server = _setup(ids, threshold=4)
    broadcasts = server.receive_keys([c.advertise_keys() for c in clients])
    d = server.route_shares([c.share_keys(broadcasts[c.client_id]) for c in clients])[2]
    swapped = dataclasses.replace(
        d, ciphertexts=(d.ciphertexts[1], d.ciphertexts[0], *d.ciphertexts[2:])
    )
    with pytest.raises(SecAggCryptoError, match="failed authentication"):
        clients[2].masked_input(swapped, np.zeros(LENGTH, dtype=np.uint64))


def _expected_sum(inputs, ids, bits=20):
    total = np.zeros(LENGTH, dtype=np.uint64)
    for u in ids:
        total = (total + inputs[u]) & np.uint64(2**bits - 1)
    return total


def test_a_corrupted_key_share_is_traced_to_its_holder_and_the_sum_is_still_exact(caplog):
    ids = list(range(N))
    cfg, graph, clients, server = _setup(ids)
    inputs = _inputs(ids)
    broadcasts = server.receive_keys([c.advertise_keys() for c in clients])
    deliveries = server.route_shares([c.share_keys(broadcasts[c.client_id]) for c in clients])
    live = clients[1:]  # client 0 drops before sending its masked input
    requests = server.collect_masked(
        [c.masked_input(deliveries[c.client_id], inputs[c.client_id]) for c in live]
    )
    replies = [c.unmask(requests[c.client_id]) for c in live]
    first = replies[0]
    garbled = (bytes(66),) + first.key_shares[1:]  # a zero share: the key no longer matches
    replies[0] = dataclasses.replace(first, key_shares=garbled)
    result = server.unmask(replies)  # 9 holders of client 0's key, t = 6: the bad one is found
    assert result.survivor_ids == tuple(ids[1:])
    assert np.array_equal(result.aggregate, _expected_sum(inputs, ids[1:]))
    assert list(server.rejected) == [1]
    assert "does not fit the mask key of dropped client 0" in server.rejected[1]


def test_a_garbled_self_mask_share_is_traced_to_its_holder_and_the_sum_is_still_exact():
    ids = list(range(N))
    cfg, graph, clients, server = _setup(ids)
    inputs = _inputs(ids)
    _, requests = _run_to_unmask(clients, server, inputs)
    replies = [c.unmask(requests[c.client_id]) for c in clients]
    r = replies[2]
    noise = os.urandom(66)
    replies[2] = dataclasses.replace(r, self_mask_shares=(noise, *r.self_mask_shares[1:]))
    result = server.unmask(replies)
    assert np.array_equal(result.aggregate, _expected_sum(inputs, ids))
    assert list(server.rejected) == [2]
    assert "self-mask seed of client 0" in server.rejected[2]


def test_a_bad_share_among_exactly_t_cannot_be_traced_and_the_round_fails():
    ids = list(range(N))
    cfg, graph, clients, server = _setup(ids)
    inputs = _inputs(ids)
    _, requests = _run_to_unmask(clients, server, inputs)
    replies = [c.unmask(requests[c.client_id]) for c in clients[:T]]  # exactly t holders reply
    r = replies[0]
    replies[0] = dataclasses.replace(r, self_mask_shares=(os.urandom(66), *r.self_mask_shares[1:]))
    with pytest.raises(SecAggCryptoError, match="cannot be traced to its holder"):
        server.unmask(replies)
    assert server.rejected == {}


def test_protocol_misuse_is_reported():
    ids = list(range(4))
    cfg, graph, clients, server = _setup(ids, threshold=3, length=4)
    with pytest.raises(SecAggProtocolError, match="out of order"):
        clients[0].unmask(None)
    keys = [c.advertise_keys() for c in clients]
    broadcasts = server.receive_keys(keys)
    shares = [c.share_keys(broadcasts[c.client_id]) for c in clients]
    deliveries = server.route_shares(shares)
    with pytest.raises(SecAggProtocolError, match="integer vector of length 4"):
        clients[0].masked_input(deliveries[0], np.zeros(5, dtype=np.uint64))
    with pytest.raises(SecAggProtocolError, match=r"lie in \[0, 2\^20\)"):
        clients[1].masked_input(deliveries[1], np.full(4, 2**20, dtype=np.uint64))
    with pytest.raises(SecAggProtocolError, match="threshold 2 must exceed half"):
        SecAggServer(SecAggConfig(1, 2, 20, 4), graph)
    with pytest.raises(SecAggProtocolError, match="even int"):
        build_graph(range(10), 3)


def test_an_unmask_reply_that_differs_from_the_request_drops_only_its_sender():
    ids = list(range(N))
    cfg, graph, clients, server = _setup(ids)
    inputs = _inputs(ids)
    _, requests = _run_to_unmask(clients, server, inputs)
    replies = [c.unmask(requests[c.client_id]) for c in clients]
    r = replies[3]
    replies[3] = dataclasses.replace(
        r, survivor_ids=r.survivor_ids[:-1], self_mask_shares=r.self_mask_shares[:-1]
    )
    result = server.unmask(replies)
    assert result.survivor_ids == tuple(ids)  # its masked input is still in the sum
    assert np.array_equal(result.aggregate, _expected_sum(inputs, ids))
    assert server.rejected == {3: "unmask: did not return the shares it was asked for"}


def test_secagg_imports_neither_flower_nor_the_rest_of_the_project():
    import subprocess
    import sys

    code = (
        "import sys, privet.privacy.secagg; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('flwr', 'torch') or ("
        "m.startswith('privet.') and not m.startswith('privet.privacy'))]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_client_that_advertised_a_key_it_did_not_share_is_named_when_its_key_is_rebuilt():
    from privet.privacy.secagg.crypto import generate_private_key, public_bytes

    ids = list(range(N))
    cfg, graph, clients, server = _setup(ids)
    inputs = _inputs(ids)
    keys = [c.advertise_keys() for c in clients]
    keys[0] = dataclasses.replace(keys[0], mask_public_key=public_bytes(generate_private_key()))
    broadcasts = server.receive_keys(keys)
    deliveries = server.route_shares([c.share_keys(broadcasts[c.client_id]) for c in clients])
    live = clients[1:]  # client 0 drops: its mask key must be rebuilt, and it is not the one
    requests = server.collect_masked(
        [c.masked_input(deliveries[c.client_id], inputs[c.client_id]) for c in live]
    )
    with pytest.raises(SecAggCryptoError, match="client 0 advertised a key it did not share"):
        server.unmask([c.unmask(requests[c.client_id]) for c in live])
    assert server.rejected == {0: "unmask: its key shares rebuild a key it did not advertise"}


@pytest.mark.parametrize("bits", [1, 7, 8, 12, 16, 21, 24, 32, 33, 56, 57, 62])
def test_masked_vectors_travel_packed_at_their_bit_width(bits):
    from privet.privacy.secagg.protocol import encode_vector, packed_bytes

    rng = np.random.default_rng(bits)
    for length in (0, 1, 5, 1001):
        values = rng.integers(0, 1 << bits, size=length, dtype=np.uint64)
        wire = encode_vector(values, bits)
        assert len(wire) == packed_bytes(length, bits) == (length * bits + 7) // 8
        # The reference layout: every value's bits, least significant first, back to back.
        planes = np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
        assert wire == np.packbits(planes[:, :bits].ravel(), bitorder="little").tobytes()
        assert np.array_equal(decode_vector(wire, length, bits).astype(np.uint64), values)
    if (1001 * bits) % 8:
        tampered = bytearray(encode_vector(values, bits))
        tampered[-1] |= 0x80  # a padding bit
        with pytest.raises(SecAggProtocolError, match="padding bits"):
            decode_vector(bytes(tampered), 1001, bits)
    with pytest.raises(SecAggProtocolError, match="must be"):
        decode_vector(encode_vector(values, bits) + b"\x00", 1001, bits)
