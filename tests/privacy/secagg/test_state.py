"""SecAggClient survives between its four calls as plain ConfigRecord data (to_state/from_state)."""

import dataclasses
import hashlib

import numpy as np
import pytest
from flwr.app import ConfigRecord

from privet.privacy.secagg import (
    STAGES,
    KeysBroadcast,
    SecAggClient,
    SecAggConfig,
    SecAggProtocolError,
    SecAggRefusal,
    SecAggServer,
    SeededRandom,
    build_graph,
    run_round,
)
from privet.privacy.secagg.protocol import STATE_SCHEMA

N, BITS, LENGTH = 8, 20, 64
SECRET_KEYS = {
    "cipher_private_key",
    "mask_private_key",
    "self_mask_seed",
    "share_keys",
    "self_mask_shares",
    "key_shares",
}
# (degree, threshold): the complete graph, and a random Harary graph of degree 4
GRAPHS = {"complete": (None, 5), "harary": (4, 3)}


def _seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _inputs(ids):
    rng = np.random.default_rng(5)
    return {u: rng.integers(0, 2 ** (BITS - 4), size=LENGTH, dtype=np.uint64) for u in ids}


def _expected(inputs, survivors):
    total = np.zeros(LENGTH, dtype=np.uint64)
    for u in survivors:
        total = (total + inputs[u]) & np.uint64(2**BITS - 1)
    return total


def _through_flower(state):
    """What a ClientApp would keep: a ConfigRecord, serialised to bytes and read back."""
    record = ConfigRecord(state)
    return dict(ConfigRecord.inflate(record.deflate()))


class _Stateless:
    """Runs clients as Flower does: each call rebuilds the client from its stored state."""

    def __init__(self, clients):
        self.states = {c.client_id: _through_flower(c.to_state()) for c in clients}
        self.seen = []  # every state written, for the type checks

    def call(self, u, method, *args):
        client = SecAggClient.from_state(self.states[u])
        reply = getattr(client, method)(*args)
        state = client.to_state()
        self.seen.append(state)
        self.states[u] = _through_flower(state)
        return reply


def _serialised_round(clients, server, inputs, drop_before=None):
    """`run_round`, but every client is a fresh object from its state at every stage."""
    drops = {stage: set(ids) for stage, ids in (drop_before or {}).items()}
    gone: set[int] = set()
    store = _Stateless(clients)

    def alive(stage, addressed):
        gone.update(drops.get(stage, ()))
        return [u for u in addressed if u not in gone]

    ids = [c.client_id for c in clients]
    keys = [store.call(u, "advertise_keys") for u in alive(STAGES[0], ids)]
    broadcasts = server.receive_keys(keys)
    shares = [store.call(u, "share_keys", broadcasts[u]) for u in alive(STAGES[1], broadcasts)]
    deliveries = server.route_shares(shares)
    masked = [
        store.call(u, "masked_input", deliveries[u], inputs[u])
        for u in alive(STAGES[2], deliveries)
    ]
    requests = server.collect_masked(masked)
    result = server.unmask(
        [store.call(u, "unmask", requests[u]) for u in alive(STAGES[3], requests)]
    )
    return result, store


def _pair(ids, degree, threshold):
    """Two identical setups (same graph) for the in-memory and the serialised round."""
    cfg = SecAggConfig(round_id=9, threshold=threshold, bits=BITS, vector_length=LENGTH)
    graph = build_graph(ids, degree, SeededRandom(_seed("graph")))
    setups = []
    for _ in range(2):
        clients = [SecAggClient(u, cfg) for u in ids]
        setups.append((clients, SecAggServer(cfg, graph)))
    return graph, setups


@pytest.mark.parametrize("graph_kind", GRAPHS)
def test_fully_serialised_round_matches_in_memory_round(graph_kind):
    degree, threshold = GRAPHS[graph_kind]
    ids = list(range(N))
    graph, [(plain_clients, plain_server), (clients, server)] = _pair(ids, degree, threshold)
    if degree is not None:
        assert all(len(graph[u]) == degree for u in ids)
    inputs = _inputs(ids)
    plain = run_round(plain_clients, plain_server, inputs)
    result, store = _serialised_round(clients, server, inputs)
    assert np.array_equal(result.aggregate, plain.aggregate)
    assert np.array_equal(result.aggregate, _expected(inputs, ids))
    assert result.survivor_ids == plain.survivor_ids == tuple(ids)
    assert {s["stage"] for s in store.seen} == {*STAGES[1:], "done"}
    assert all(s["stage"] == "done" for s in store.states.values())


@pytest.mark.parametrize("graph_kind", GRAPHS)
@pytest.mark.parametrize(
    "drops",
    [
        {"share_keys": [1], "masked_input": [5]},
        {"advertise_keys": [2], "unmask": [6]},
        {"masked_input": [0], "unmask": [7]},
    ],
)
def test_serialised_round_with_dropouts_at_two_stages(graph_kind, drops):
    degree, threshold = GRAPHS[graph_kind]
    ids = list(range(N))
    _, [(plain_clients, plain_server), (clients, server)] = _pair(ids, degree, threshold)
    inputs = _inputs(ids)
    plain = run_round(plain_clients, plain_server, inputs, drops)
    result, _ = _serialised_round(clients, server, inputs, drops)
    assert result.survivor_ids == plain.survivor_ids
    assert result.dropped_ids == plain.dropped_ids
    assert np.array_equal(result.aggregate, plain.aggregate)
    assert np.array_equal(result.aggregate, _expected(inputs, plain.survivor_ids))


def _states_at_every_stage(ids=range(5), threshold=3):
    """One client's state before each call and after the last, from a real round."""
    ids = list(ids)
    cfg = SecAggConfig(round_id=2**64 - 1, threshold=threshold, bits=BITS, vector_length=LENGTH)
    clients = [SecAggClient(u, cfg) for u in ids]
    server = SecAggServer(cfg, build_graph(ids))
    first = clients[0]
    states = [first.to_state()]
    broadcasts = server.receive_keys([c.advertise_keys() for c in clients])
    states.append(first.to_state())
    deliveries = server.route_shares([c.share_keys(broadcasts[c.client_id]) for c in clients])
    states.append(first.to_state())
    inputs = _inputs(ids)
    masked = [c.masked_input(deliveries[c.client_id], inputs[c.client_id]) for c in clients]
    states.append(first.to_state())
    requests = server.collect_masked(masked)
    first.unmask(requests[first.client_id])
    states.append(first.to_state())
    return states, clients, deliveries, requests, masked, inputs


def test_states_hold_only_config_record_types_and_round_trip():
    # Flower-sized node ids (up to 2^64 - 2) and round id 2^64 - 1 must survive the record too.
    ids = [3, 2**63 + 5, 2**64 - 2, 17, 2**40]
    states, *_ = _states_at_every_stage(sorted(ids))
    assert [s["stage"] for s in states] == [*STAGES, "done"]
    for state in states:
        ConfigRecord(state)  # raises TypeError on anything a ConfigRecord cannot hold
        assert state["schema"] == STATE_SCHEMA
        for key, value in state.items():
            assert isinstance(key, str)
            if isinstance(value, list):
                assert len({type(v) for v in value}) <= 1 and all(
                    type(v) in (int, bytes) for v in value
                ), key
            else:
                assert type(value) in (int, bytes, str), key
        restored = _through_flower(state)
        assert restored == state
        assert SecAggClient.from_state(restored).to_state() == state


def test_private_keys_are_raw_32_bytes_and_secrets_are_dropped_when_done():
    states, *_ = _states_at_every_stage()
    before_share = states[1]
    assert len(before_share["cipher_private_key"]) == 32
    assert len(before_share["mask_private_key"]) == 32
    assert "cipher_private_key" not in states[2]  # no longer needed after share_keys
    assert not SECRET_KEYS & set(states[0])
    assert not SECRET_KEYS & set(states[4])
    assert set(states[3]) & SECRET_KEYS == {"self_mask_shares", "key_shares"}


def test_restored_client_masks_exactly_like_the_original():
    states, clients, deliveries, _, masked, inputs = _states_at_every_stage()
    twin = SecAggClient.from_state(_through_flower(states[2]))
    assert twin.config == clients[0].config
    # masked_input draws no randomness: the restored client must send the original's bytes
    assert twin.masked_input(deliveries[0], inputs[0]) == masked[0]


def test_unmask_is_single_use_across_serialisation():
    states, _, _, requests, *_ = _states_at_every_stage()
    done = SecAggClient.from_state(states[4])
    with pytest.raises(SecAggProtocolError, match="out of order"):
        done.unmask(requests[0])
    # a refusal also consumes the stage, and that survives serialisation
    client = SecAggClient.from_state(states[3])
    greedy = dataclasses.replace(requests[0], dropped_ids=(1,))  # 1 is also a survivor
    with pytest.raises(SecAggRefusal, match="asked for both secrets"):
        client.unmask(greedy)
    refused = client.to_state()
    assert refused["stage"] == "done" and not SECRET_KEYS & set(refused)
    again = SecAggClient.from_state(_through_flower(refused))
    with pytest.raises(SecAggProtocolError, match="out of order"):
        again.unmask(requests[0])
    # restoring a pre-unmask state is the only way back; it is the caller's to discard
    for method, args in [("advertise_keys", ()), ("share_keys", (None,))]:
        with pytest.raises(SecAggProtocolError, match="out of order"):
            getattr(again, method)(*args)


def test_a_call_that_fails_midway_leaves_a_done_state():
    states, *_ = _states_at_every_stage()
    client = SecAggClient.from_state(states[1])
    with pytest.raises(SecAggProtocolError):
        client.share_keys(KeysBroadcast(0, 0, (), (), ()))  # advances, then fails (wrong round)
    assert client.to_state()["stage"] == "done"


def _tampered_cases():
    states, *_ = _states_at_every_stage()
    by_stage = {s["stage"]: s for s in states}
    cases = []
    for stage, state in by_stage.items():
        for key in state:
            cases.append((stage, key, "delete", f"missing key '{key}'"))
    cases += [
        ("advertise_keys", "schema", 2, "malformed key 'schema': unsupported schema 2"),
        ("advertise_keys", "schema", "1", "malformed key 'schema': expected an int"),
        ("advertise_keys", "stage", "finished", "malformed key 'stage': unknown stage"),
        ("advertise_keys", "client_id", True, "malformed key 'client_id': expected an int"),
        ("advertise_keys", "client_id", -1, "malformed key 'client_id': client ids lie"),
        ("advertise_keys", "threshold", 0, "malformed config: threshold must be at least 1"),
        ("advertise_keys", "bits", 2.0, "malformed key 'bits': expected an int"),
        ("share_keys", "mask_private_key", b"\x01" * 31, "'mask_private_key': expected 32 bytes"),
        ("share_keys", "cipher_private_key", "x" * 32, "'cipher_private_key': expected 32 bytes"),
        ("masked_input", "self_mask_seed", b"", "'self_mask_seed': expected 32 bytes, got 0"),
        ("masked_input", "neighbour_ids", [4, 3, 2, 1], "'neighbour_ids': ids must be distinct"),
        ("masked_input", "neighbour_ids", [0, 1, 2, 3], "'neighbour_ids': lists the client"),
        ("masked_input", "neighbour_ids", (1, 2, 3, 4), "'neighbour_ids': expected a list"),
        ("masked_input", "share_keys", [b"\x00" * 32] * 3, "'share_keys': expected 4 entries"),
        ("masked_input", "mask_public_keys", [b"k"] * 4, "'mask_public_keys': expected entries"),
        ("masked_input", "held_ids", [0, 1], "'held_ids': lists peers' shares"),
        ("unmask", "held_ids", [1, 2, 3, 4], "'held_ids': lacks the client's own shares"),
        ("unmask", "key_shares", [b"\x00" * 66] * 4, "'key_shares': expected 5 entries"),
        ("unmask", "self_mask_shares", [1, 2, 3, 4, 5], "'self_mask_shares': expected entries"),
        ("done", "mask_private_key", b"\x00" * 32, "unexpected key 'mask_private_key'"),
        ("unmask", "share_keys", [], "unexpected key 'share_keys' at stage 'unmask'"),
    ]
    return by_stage, cases


_BY_STAGE, _CASES = _tampered_cases()


@pytest.mark.parametrize(("stage", "key", "value", "message"), _CASES)
def test_tampered_or_missing_state_keys_are_rejected(stage, key, value, message):
    state = dict(_BY_STAGE[stage])
    if value == "delete":
        del state[key]
    else:
        state[key] = value
    with pytest.raises(SecAggProtocolError) as info:
        SecAggClient.from_state(state)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_non_mapping_state_is_rejected():
    with pytest.raises(SecAggProtocolError, match="must be a mapping"):
        SecAggClient.from_state([("schema", 1)])
