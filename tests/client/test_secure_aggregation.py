"""The ClientApp's secure-aggregation handlers, driven through Flower's Message API in-process.

Three ClientApps train with DP, keep their updates on the node, and answer the three protocol
queries; the server side is the plain driver of `server.secure_aggregation`.
"""

import logging

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from privet.client.app import SECAGG_STATE_KEY, make_client_app
from privet.client.secure_aggregation import SecAggRequest
from privet.privacy.secagg import (
    KeysBroadcast,
    MaskedInput,
    Refusal,
    SecAggProtocolError,
    ShareKeys,
)
from privet.privacy.secagg.wire import (
    INPUT_KEY,
    NEXT_INPUT_KEY,
    NEXT_RECORD_KEY,
    RECORD_KEY,
    STAGE_ACTIONS,
    read_reply,
    to_wire,
)
from privet.server.evaluation import ServerEvaluator
from privet.server.secure_aggregation import (
    SecAggSettings,
    decode_secure_sum,
    plan_round,
    run_secure_sum,
)
from privet.task.config import RunConfig

CLIP = 10.0


def secagg_states(state) -> list[str]:
    """The node-state records that hold a secure-aggregation round (keys or shares)."""
    return [key for key in state.config_records if key.startswith(SECAGG_STATE_KEY)]


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def context_for(partition_id):
    return Context(
        run_id=1,
        node_id=partition_id,
        node_config={"partition-id": partition_id, "num-partitions": 3},
        state=RecordDict(),
        run_config={},
    )


def query(stage, content):
    return Message(
        content=RecordDict(content), dst_node_id=1, message_type=f"query.{STAGE_ACTIONS[stage]}"
    )


def secure_round(tmp_path, tamper=None, extra=None, **overrides):
    """One round of three ClientApps; ``tamper(stage, client, wire)`` plays a lying server.

    ``extra(stage)``: records added to each message of that stage (the next round's parts).
    """
    config = RunConfig(
        clients=3,
        rounds=1,
        local_epochs=1,
        output=str(tmp_path),
        secure_aggregation=True,
        **overrides,
    )
    app = make_client_app(config)
    weights = ServerEvaluator(config).initial_weights()
    num_params = sum(w.size for w in weights)
    settings = SecAggSettings(threshold=2 / 3, degree=None, levels=2**16, stage_timeout=5)
    plan = plan_round(settings, [0, 1, 2], num_params, CLIP)
    round_settings = {**plan.train_config(), "clip-norm": CLIP}
    train_config = ConfigRecord({"server-round": 1, "clip-norm": CLIP, **plan.train_config()})
    contexts = {u: context_for(u) for u in range(3)}
    counts, seen = {}, {}

    def exchange(stage, messages):
        out = {}
        for u, wire in messages.items():
            wire = tamper(stage, u, wire) if tamper is not None else wire
            if stage == "advertise_keys":
                msg = query(stage, {INPUT_KEY: ConfigRecord(round_settings)})
            elif stage == "masked_input":
                weight = counts[u] / max(counts.values())
                msg = Message(
                    content=RecordDict(
                        {
                            "arrays": ArrayRecord(weights),
                            "config": train_config,
                            RECORD_KEY: ConfigRecord(wire),
                            INPUT_KEY: ConfigRecord({**round_settings, "weight": weight}),
                        }
                    ),
                    dst_node_id=u,
                    message_type="train",
                )
            else:
                msg = query(stage, {RECORD_KEY: ConfigRecord(wire)})
            for key, record in (extra(stage) if extra is not None else {}).items():
                msg.content.config_records[key] = record
            reply = app(msg, contexts[u])
            assert not reply.has_error(), reply.error
            if stage == "advertise_keys":
                counts[u] = int(reply.content["metrics"]["num-examples"])
            if stage == "masked_input":
                assert "arrays" not in reply.content  # no update leaves the node in the clear
            out[u] = dict(reply.content.config_records[RECORD_KEY])
            seen[(stage, u)] = reply
        return out

    result = run_secure_sum(plan, exchange)
    return config, app, plan, result, contexts, seen, weights


def test_a_full_round_through_the_client_app_leaves_no_update_or_secret_behind(tmp_path):
    config, app, plan, result, contexts, seen, weights = secure_round(tmp_path)
    secure = decode_secure_sum(plan, result, [w.shape for w in weights])
    assert secure.survivors == (0, 1, 2) and secure.within_clip == 3
    norm = np.sqrt(sum(float(np.sum(p**2)) for p in secure.weighted_update_sum))
    assert 0 < norm <= 3 * CLIP  # a real, clipped, weighted sum of three updates
    for u in range(3):
        train_reply = seen[("masked_input", u)].content["metrics"]
        assert int(train_reply["quantization-clipped"]) == 0 and train_reply["epsilon"] > 0
        state = contexts[u].state
        assert not secagg_states(state)  # no key or share left behind
        assert not state.array_records  # the plain update was never stored
        assert "privet-ledger" in state.config_records  # privacy accounting is kept


def test_a_replayed_stage_is_refused_and_ends_the_clients_round(tmp_path):
    config, app, plan, result, contexts, seen, weights = secure_round(tmp_path)
    request = {
        "round-id": plan.config.round_id,
        "client-id": 0,
        "survivor-ids": [0, 1, 2],
        "dropped-ids": [],
    }
    replay = query("unmask", {RECORD_KEY: ConfigRecord(request)})
    with pytest.raises(RuntimeError, match="no such round in progress"):
        app(replay, contexts[0])  # Flower's runtime turns this into an error reply


def test_a_stage_out_of_order_ends_the_round_for_that_client(tmp_path):
    config = RunConfig(clients=3, rounds=1, local_epochs=1, output=str(tmp_path))
    app = make_client_app(config)
    weights = ServerEvaluator(config).initial_weights()
    num_params = sum(w.size for w in weights)
    settings = SecAggSettings(threshold=2 / 3, degree=None, levels=2**16, stage_timeout=5)
    plan = plan_round(settings, [0, 1, 2], num_params, CLIP)
    context = context_for(1)
    round_settings = {**plan.train_config(), "clip-norm": CLIP}
    reply = app(query("advertise_keys", {INPUT_KEY: ConfigRecord(round_settings)}), context)
    assert not reply.has_error() and secagg_states(context.state)
    early = {
        "round-id": plan.config.round_id,
        "client-id": 1,
        "survivor-ids": [0, 1, 2],
        "dropped-ids": [],
    }
    with pytest.raises(SecAggProtocolError, match="out of order"):
        app(query("unmask", {RECORD_KEY: ConfigRecord(early)}), context)
    # The keys are gone: nothing more can be asked of this client this round.
    assert not secagg_states(context.state)


def test_train_config_with_partial_secure_aggregation_keys_is_refused():
    values = {"secagg-round": 1, "secagg-threshold": 2}
    with pytest.raises(SecAggProtocolError, match="lacks the secure-aggregation key"):
        SecAggRequest.from_train_config(values, 1.0)
    full = {
        "secagg-round": 1,
        "secagg-threshold": 2,
        "secagg-bits": 18,
        "secagg-levels": 65536,
        "secagg-clients": 3,
        "secagg-length": 11,
    }
    with pytest.raises(SecAggProtocolError, match="clip-norm"):
        SecAggRequest.from_train_config(full, None)
    with pytest.raises(SecAggProtocolError, match="must be an int"):
        SecAggRequest.from_train_config({**full, "secagg-bits": 18.0}, 1.0)
    assert SecAggRequest.from_train_config({"server-round": 1}, None) is None


def test_a_weak_threshold_is_refused_with_a_normal_reply_and_no_state_is_left(tmp_path):
    config = RunConfig(clients=3, rounds=1, local_epochs=1, output=str(tmp_path))
    app = make_client_app(config)
    num_params = sum(w.size for w in ServerEvaluator(config).initial_weights())
    settings = SecAggSettings(threshold=2 / 3, degree=None, levels=2**16, stage_timeout=5)
    plan = plan_round(settings, [0, 1, 2], num_params, CLIP)
    # A lying server: threshold 1 (its own share would rebuild the client's self mask).
    weak = {**plan.train_config(), "secagg-threshold": 1, "clip-norm": CLIP}
    context = context_for(0)
    assert not app(query("advertise_keys", {INPUT_KEY: ConfigRecord(weak)}), context).has_error()
    keys = (bytes([1]) * 32, bytes([2]) * 32)
    broadcast = KeysBroadcast(
        plan.config.round_id, 0, (1, 2), keys, (bytes([3]) * 32, bytes([4]) * 32)
    )
    reply = app(query("share_keys", {RECORD_KEY: ConfigRecord(to_wire(broadcast))}), context)
    assert not reply.has_error()  # a refusal is an answer the server can count, not a crash
    refusal = read_reply(ShareKeys, dict(reply.content.config_records[RECORD_KEY]))
    assert isinstance(refusal, Refusal)
    assert (refusal.client_id, refusal.round_id, refusal.stage) == (
        0,
        plan.config.round_id,
        "share_keys",
    )
    assert "threshold 1 is not a strict majority of its closed neighbourhood of 3" in refusal.reason
    assert not secagg_states(context.state)  # no key left behind


def test_a_client_told_all_its_neighbours_dropped_refuses_to_mask_but_reports_its_privacy(
    tmp_path,
):
    def empty_delivery(stage, client, wire):
        if stage == "masked_input" and client == 0:
            return {**wire, "sender-ids": [], "ciphertexts": []}
        return wire

    config, app, plan, result, contexts, seen, weights = secure_round(tmp_path, empty_delivery)
    reply = seen[("masked_input", 0)]
    assert reply.content["metrics"]["epsilon"] > 0  # it trained: its privacy spend is reported
    assert "arrays" not in reply.content
    refusal = read_reply(MaskedInput, dict(reply.content.config_records[RECORD_KEY]))
    assert isinstance(refusal, Refusal) and refusal.stage == "masked_input"
    assert "1 live neighbourhood members, needs 2" in refusal.reason
    assert plan.server.refusals == {0: "masked_input"}
    assert result.survivor_ids == (1, 2) and result.dropped_ids == (0,)
    assert not secagg_states(contexts[0].state)


@pytest.mark.parametrize("client_level", [False, True])
def test_under_client_level_dp_the_client_app_rounds_within_the_clip_norm(
    tmp_path, monkeypatch, client_level
):
    """The noise is calibrated to S only under client-level DP; there the rounded update that
    enters the sum must have norm ≤ S (conditional rounding), elsewhere rounding stays unbiased."""
    import privet.client.secure_aggregation as client_secagg
    from privet.privacy.secagg.quantization import rounded_norm

    real = client_secagg.encode_update
    calls = []

    def spy(update, weight, within_clip, spec, rng=None, norm_bound=None):
        encoded = real(update, weight, within_clip, spec, rng, norm_bound)
        calls.append((norm_bound, rounded_norm(encoded.values[:-1], spec), spec.clip_norm))
        return encoded

    monkeypatch.setattr(client_secagg, "encode_update", spy)
    overrides = {"client_noise_multiplier": 1.0, "client_clip_norm": CLIP} if client_level else {}
    secure_round(tmp_path, **overrides)
    assert len(calls) == 3
    for norm_bound, norm, clip in calls:
        assert clip == CLIP
        if client_level:
            assert norm_bound == CLIP and norm <= CLIP
        else:
            assert norm_bound is None


def test_a_next_round_part_that_fails_costs_the_client_nothing_of_this_round(tmp_path, caplog):
    """Stage folding: the next round's parts ride in this round's TRAIN and unmask messages. A
    part the client cannot answer is left out of its reply (and logged); this round completes."""
    broken = {
        # Settings lacking most secagg-* keys: the next round's keys cannot be made.
        "masked_input": {NEXT_INPUT_KEY: ConfigRecord({"secagg-round": 7, "clip-norm": CLIP})},
        # A key broadcast for a round this client holds no keys for.
        "unmask": {NEXT_RECORD_KEY: ConfigRecord({"round-id": 7, "client-id": 0})},
    }
    with caplog.at_level(logging.WARNING):
        config, app, plan, result, contexts, seen, weights = secure_round(
            tmp_path, extra=lambda stage: broken.get(stage, {})
        )
    assert result.survivor_ids == (0, 1, 2)  # this round's sum was formed
    for u in range(3):
        for stage in ("masked_input", "unmask"):
            assert NEXT_RECORD_KEY not in seen[(stage, u)].content.config_records
        assert not secagg_states(contexts[u].state)
    assert "no keys for the next round" in caplog.text
    assert "no key shares for the next round" in caplog.text
    assert "no such round in progress" in caplog.text
