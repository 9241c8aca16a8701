"""Secure aggregation in simulations: exactness, dropouts, clean failures, refused attacks."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from privet.cli import main
from privet.client.app import make_client_app
from privet.privacy.secagg.wire import INPUT_KEY, NEXT_INPUT_KEY, NEXT_RECORD_KEY, RECORD_KEY
from privet.server import secure_aggregation, secure_round
from privet.server.app import run_federated_training
from privet.simulations.faults import Dropout
from privet.simulations.inprocess_engine import (
    ENGINE_NAME,
    FIRST_NODE_ID,
    RUN_ID,
    InProcessGrid,
    run_in_process,
    server_task_identity,
)
from privet.task.config import RunConfig


def final_weights(folder):
    state = torch.load(folder / "model.pt", weights_only=True)
    return [value.numpy() for value in state.values()]


def results_of(folder):
    return json.loads((folder / "results.json").read_text())


@pytest.mark.long
def test_secure_client_level_round_matches_the_plaintext_round_within_the_bound(tmp_path):
    common = dict(
        clients=6,
        clients_per_round=4,
        rounds=1,
        local_epochs=1,
        client_noise_multiplier=0.8,
        adaptive_clipping=True,
        clip_count_stddev=1.0,
        client_clip_norm=0.5,
        seed=3,
        reproducible=True,  # the same noise in both runs
    )
    plain = RunConfig(**common, output=str(tmp_path / "plain"))
    secure = RunConfig(**common, secure_aggregation=True, output=str(tmp_path / "secure"))
    # Both run in process: for a seed that is the Flower engine's run bit for bit, secure
    # aggregation and adaptive clipping included (tests/simulations/test_inprocess_engine.py).
    run_in_process(plain)
    run_in_process(secure)
    a, b = results_of(tmp_path / "plain"), results_of(tmp_path / "secure")
    ra, rb = a["rounds"][0], b["rounds"][0]
    summary = rb["secure_aggregation"]
    assert summary["status"] == "ok" and summary["dropped"] == []
    assert summary["survivors"] == ra["sampled"] == rb["sampled"] and len(ra["sampled"]) >= 2
    # Same clients, same DP-SGD, same server noise: the models differ only by quantization.
    worst = max(
        float(np.max(np.abs(x - y)))
        for x, y in zip(
            final_weights(tmp_path / "plain"), final_weights(tmp_path / "secure"), strict=True
        )
    )
    assert worst < summary["error_bound"]
    # The count query of adaptive clipping came out of the secure sum exactly.
    assert rb["noised_within_fraction"] == pytest.approx(ra["noised_within_fraction"], abs=1e-12)
    assert b["client_level"]["clip_norm_final"] == pytest.approx(
        a["client_level"]["clip_norm_final"], rel=1e-12
    )
    # Privacy accounting does not change with the transport.
    assert rb["epsilon_by_client"] == ra["epsilon_by_client"]
    assert rb["epsilon_client_level"] == ra["epsilon_client_level"]
    assert b["secure_aggregation"]["rounds_ok"] == 1 and a["secure_aggregation"] is None


@pytest.mark.long
def test_dropouts_are_recovered_above_the_threshold_and_fail_cleanly_below(tmp_path):
    config = RunConfig(
        clients=5,
        rounds=4,
        local_epochs=1,
        secure_aggregation=True,
        secagg_threshold=0.6,  # t = 3 of 5
        output=str(tmp_path / "run"),
    )
    # In process: the same apps and message stages as Flower's runtime (the two engines agree bit
    # for bit, tests/simulations/test_inprocess_engine.py); a dropout is a ClientApp error reply.
    run_in_process(
        config,
        client_mods=[
            Dropout.at("train", [2], rounds=[1]),  # crashes while training / masking
            Dropout.at("query.secagg_share_keys", [0, 1, 3], rounds=[2]),
            Dropout.at("query.secagg_unmask", [0, 1, 3], rounds=[3]),
        ],
    )
    data = results_of(tmp_path / "run")
    first, second, third, fourth = data["rounds"]
    assert first["secure_aggregation"]["status"] == "ok"
    assert first["secure_aggregation"]["survivors"] == [0, 1, 3, 4]
    assert first["secure_aggregation"]["dropped"] == [2]
    assert first["clients_trained"] == 4
    # Round 2: only 2 of 5 shared keys, below t = 3: skipped before anyone trained.
    failed = second["secure_aggregation"]
    assert failed["status"] == "failed" and "share_keys" in failed["reason"]
    assert "threshold 3" in failed["reason"]
    assert second["clients_trained"] == 0
    assert second["accuracy"] == first["accuracy"] and second["loss"] == first["loss"]
    assert second["epsilon_by_client"] == first["epsilon_by_client"]  # nothing was released
    # Round 3: everyone trained and sent a masked update, then 3 left before unmasking: no sum,
    # no model change, but the privacy the clients spent training is on the books.
    failed = third["secure_aggregation"]
    assert failed["status"] == "failed" and "unmask" in failed["reason"]
    assert third["loss"] == second["loss"]
    assert sorted(third["epsilon_by_client"]) == list(map(str, range(5)))
    assert all(
        eps > second["epsilon_by_client"].get(k, 0.0)
        for k, eps in third["epsilon_by_client"].items()
    )
    # The run goes on.
    assert fourth["secure_aggregation"]["status"] == "ok" and fourth["loss"] != third["loss"]
    assert data["secure_aggregation"]["rounds_failed"] == [2, 3]
    assert data["secure_aggregation"]["min_survivors"] == 4
    assert data["finished"] is True


# ---------------------------------------------------------------------------------------------
# The same faults through the in-process engine (Privet's apps, no Ray): a lying server, a split
# set of survivors, a replayed and a duplicated reply, each seen in results.json.


def secure_config(tmp_path, **overrides):
    values = dict(
        clients=5, rounds=2, local_epochs=1, secure_aggregation=True, output=str(tmp_path / "run")
    )
    return RunConfig(**{**values, **overrides})


def test_a_client_refusing_a_weak_threshold_is_counted_in_results_json(tmp_path, caplog):
    def weak_threshold(msg, context, call_next):
        """An attacking server: client 0 is told t = 2 of its closed neighbourhood of 5."""
        if msg.metadata.message_type == "query.secagg_advertise_keys" and (
            context.node_config["partition-id"] == 0 and msg.metadata.group_id == "1"
        ):
            msg.content.config_records[INPUT_KEY]["secagg-threshold"] = 2
        return call_next(msg, context)

    with caplog.at_level(logging.WARNING):
        run_in_process(secure_config(tmp_path), client_mods=[weak_threshold])
    first, second = results_of(tmp_path / "run")["rounds"]
    summary = first["secure_aggregation"]
    assert summary["status"] == "ok" and summary["threshold"] == 4
    assert summary["refusals"] == 1 and summary["refused"] == [0]
    assert summary["survivors"] == [1, 2, 3, 4] and summary["dropped"] == [0]
    assert second["secure_aggregation"]["refusals"] == 0
    assert "client 0 refuses secure-aggregation stage 'share_keys'" in caplog.text
    assert "client 0 refused stage 'share_keys'" in caplog.text


def ring_graph(client_ids, degree=None, random_bytes=None):
    """The Harary graph with the clients on the ring in id order (instead of a random order)."""
    ids = sorted(client_ids)
    n, half = len(ids), (degree or 2) // 2
    return {
        u: frozenset(ids[(i + s) % n] for s in range(-half, half + 1) if s)
        for i, u in enumerate(ids)
    }


def test_a_round_whose_survivors_split_is_skipped_and_the_settings_were_warned(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(secure_aggregation, "build_graph", ring_graph)
    config = secure_config(tmp_path, clients=6, secagg_degree=2)
    # Ring 0-1-2-3-4-5-0: losing 1 and 4 leaves {2, 3} and {5, 0}, every neighbourhood still
    # holding t = 2 live share holders.
    with caplog.at_level(logging.WARNING):
        run_in_process(config, client_mods=[Dropout.at("train", [1, 4], rounds=[1])])
    warnings = [r.getMessage() for r in caplog.records if "split the survivors" in r.getMessage()]
    assert len(warnings) == 1 and "secagg-degree 2" in warnings[0]
    data = results_of(tmp_path / "run")
    first, second = data["rounds"]
    failed = first["secure_aggregation"]
    assert failed["status"] == "failed" and "masked_input" in failed["reason"]
    assert "not connected in the masking graph (groups of 2, 2)" in failed["reason"]
    assert first["clients_trained"] == 0
    assert first["accuracy"] == data["initial"]["accuracy"]  # the model did not change
    assert first["loss"] == data["initial"]["loss"]
    assert second["secure_aggregation"]["status"] == "ok"
    assert data["secure_aggregation"]["rounds_failed"] == [1]


def test_a_replayed_masked_input_from_the_last_round_drops_that_client(tmp_path):
    kept = {}

    def replay(msg, context, call_next):
        """Client 2's TRAIN reply of round 2 carries its masked input of round 1."""
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train" and context.node_config["partition-id"] == 2:
            if msg.metadata.group_id == "1":
                kept["masked"] = ConfigRecord(dict(reply.content.config_records[RECORD_KEY]))
            else:
                reply.content.config_records[RECORD_KEY] = kept["masked"]
        return reply

    run_in_process(secure_config(tmp_path, secagg_threshold=0.6), client_mods=[replay])
    first, second = results_of(tmp_path / "run")["rounds"]
    assert first["secure_aggregation"]["survivors"] == [0, 1, 2, 3, 4]
    summary = second["secure_aggregation"]
    assert summary["status"] == "ok" and summary["rejected_replies"] == [2]
    assert summary["survivors"] == [0, 1, 3, 4] and summary["dropped"] == [2]
    assert second["loss"] != first["loss"]  # the round went on without client 2


class DuplicatingGrid(InProcessGrid):
    """An in-process grid whose network delivers client 3's share-keys reply twice in round 1."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        again = [
            reply
            for message, reply in zip(messages, replies, strict=True)
            if message.metadata.message_type == "query.secagg_share_keys"
            and message.metadata.group_id == "1"
            and message.metadata.dst_node_id == FIRST_NODE_ID + 3
        ]
        return replies + again


def test_a_duplicated_reply_drops_that_client_and_the_round_completes(tmp_path, caplog):
    config = secure_config(tmp_path, secagg_threshold=0.6)
    grid = DuplicatingGrid(make_client_app(config), config.clients)
    with caplog.at_level(logging.WARNING), server_task_identity(RUN_ID):
        run_federated_training(grid, config, ENGINE_NAME)
    first, second = results_of(tmp_path / "run")["rounds"]
    summary = first["secure_aggregation"]
    assert summary["status"] == "ok" and summary["rejected_replies"] == [3]
    assert summary["survivors"] == [0, 1, 2, 4] and summary["dropped"] == [3]
    assert "client 3 dropped at 'share_keys': replied more than once" in caplog.text
    assert second["secure_aggregation"]["survivors"] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# One bad client must not fail every secure round while the honest ones are charged (issue 12,
# item 5): a copied key, a garbled share, a bad privacy report each drop only their sender.


def client_of(context):
    return int(context.node_config["partition-id"])


def test_a_copied_public_key_drops_both_holders_and_they_are_excluded_after_three_rounds(
    tmp_path,
):
    keys = {}

    def copy_keys(msg, context, call_next):
        """Client 1 advertises the keys client 0 advertised this round."""
        reply = call_next(msg, context)
        if msg.metadata.message_type == "query.secagg_advertise_keys":
            record = reply.content.config_records[RECORD_KEY]
            if client_of(context) == 0:
                keys[msg.metadata.group_id] = {k: v for k, v in record.items() if "public" in k}
            elif client_of(context) == 1:
                record.update(keys[msg.metadata.group_id])
        return reply

    config = secure_config(tmp_path, clients=6, rounds=4)
    run_in_process(config, client_mods=[copy_keys])
    data = results_of(tmp_path / "run")
    for record in data["rounds"][:3]:
        summary = record["secure_aggregation"]
        assert summary["status"] == "ok" and summary["rejected_replies"] == [0, 1]
        assert summary["survivors"] == [2, 3, 4, 5] and record["clients_trained"] == 4
        assert {b["client"] for b in record["bad_replies"]} == {0, 1}
        assert "advertised a public key that client" in record["bad_replies"][0]["reason"]
    assert data["rounds"][2]["excluded"] == [0, 1]
    assert data["rounds"][3]["sampled"] == [2, 3, 4, 5]
    assert data["rounds"][3]["secure_aggregation"]["rejected_replies"] == []
    assert [e["id"] for e in data["excluded"]] == [0, 1]
    assert data["finished"] is True and data["secure_aggregation"]["rounds_failed"] == []
    # Neither copier trained (they were dropped before training): nothing charged to them.
    assert data["rounds"][3]["epsilon_by_client"].keys() == {"2", "3", "4", "5"}


def test_a_garbled_unmask_share_is_traced_to_its_sender_and_the_round_completes(tmp_path):
    def garble(msg, context, call_next):
        """Client 2 returns random bytes for its first self-mask share in round 1."""
        reply = call_next(msg, context)
        if (
            msg.metadata.message_type == "query.secagg_unmask"
            and client_of(context) == 2
            and msg.metadata.group_id == "1"
        ):
            record = reply.content.config_records[RECORD_KEY]
            shares = list(record["self-mask-shares"])
            shares[0] = os.urandom(len(shares[0]))
            record["self-mask-shares"] = shares
        return reply

    run_in_process(secure_config(tmp_path), client_mods=[garble])
    data = results_of(tmp_path / "run")
    first, second = data["rounds"]
    summary = first["secure_aggregation"]
    assert summary["status"] == "ok" and summary["rejected_replies"] == [2]
    assert summary["survivors"] == [0, 1, 2, 3, 4]  # its masked input is in the sum
    assert first["clients_trained"] == 5 and first["loss"] != data["initial"]["loss"]
    reason = first["bad_replies"][0]["reason"]
    assert "returned a share that does not fit the self-mask seed" in reason
    assert second["secure_aggregation"]["rejected_replies"] == []


@pytest.mark.parametrize(
    ("message_type", "key", "value", "unknown_epsilon"),
    [
        ("train", "epsilon", float("nan"), True),  # the masked-input TRAIN reply
        ("train", "num-examples", float("inf"), True),
        ("train", "quantization-clipped", float("inf"), False),
        ("query.secagg_advertise_keys", "num-examples", float("inf"), False),
    ],
)
def test_a_bad_metric_in_a_secure_round_drops_only_its_sender(
    tmp_path, message_type, key, value, unknown_epsilon
):
    def corrupt(msg, context, call_next):
        reply = call_next(msg, context)
        if (
            msg.metadata.message_type == message_type
            and client_of(context) == 3
            and msg.metadata.group_id == "1"
        ):
            reply.content.metric_records["metrics"][key] = value
        return reply

    run_in_process(secure_config(tmp_path), client_mods=[corrupt])
    data = results_of(tmp_path / "run")
    first, second = data["rounds"]
    assert first["secure_aggregation"]["status"] == "ok"
    assert first["secure_aggregation"]["survivors"] == [0, 1, 2, 4]
    assert [b["client"] for b in first["bad_replies"]] == [3]
    assert second["secure_aggregation"]["survivors"] == [0, 1, 2, 3, 4]
    if unknown_epsilon:  # it trained, its report is unusable: ε ∞ until its next report
        assert first["epsilon_by_client"]["3"] == "inf" and first["epsilon_max"] == "inf"
    else:
        assert first["epsilon_max"] != "inf"
    assert second["epsilon_max"] != "inf" and data["privacy"]["epsilon_unknown"] == []
    assert data["finished"] is True


# ---------------------------------------------------------------------------------------------
# Stage folding (issue 14): round r + 1's advertise-keys and share-keys stages ride in round r's
# TRAIN and unmask messages, so a round whose keys came ahead takes two exchanges, not four.


def message_log():
    """A client mod recording (round, message type, client, the next round's parts it carries)."""
    seen = []

    def log(msg, context, call_next):
        records = msg.content.config_records
        if not msg.metadata.group_id.isdigit():  # the identity query before round 1
            return call_next(msg, context)
        carried = sorted(key for key in (NEXT_INPUT_KEY, NEXT_RECORD_KEY) if key in records)
        seen.append((int(msg.metadata.group_id), msg.metadata.message_type, client_of(context)))
        seen.append(("carried", msg.metadata.message_type, tuple(carried)))
        return call_next(msg, context)

    return seen, log


def kinds_by_round(seen):
    """Round -> the message types the clients received in it (stand-alone messages)."""
    rounds = {}
    for server_round, kind, _ in (entry for entry in seen if entry[0] != "carried"):
        rounds.setdefault(server_round, set()).add(kind)
    return rounds


def test_folded_rounds_take_two_exchanges_and_release_what_four_stages_would(tmp_path, monkeypatch):
    config = secure_config(tmp_path, rounds=3, secagg_threshold=0.6, seed=3, reproducible=True)
    seen, log = message_log()
    run_in_process(config, client_mods=[log])
    folded = results_of(tmp_path / "run")
    summaries = [r["secure_aggregation"] for r in folded["rounds"]]
    assert [s["exchanges"] for s in summaries] == [4, 2, 2]
    assert all(s["status"] == "ok" and s["survivors"] == [0, 1, 2, 3, 4] for s in summaries)
    stages = {"query.secagg_advertise_keys", "query.secagg_share_keys"}
    kinds = kinds_by_round(seen)
    assert stages <= kinds[1]  # round 1 exchanges its own keys ...
    assert not stages & (kinds[2] | kinds[3])  # ... rounds 2 and 3 got theirs a round ahead
    assert kinds[2] == kinds[3] == {"train", "query.secagg_unmask", "evaluate"}
    carried = [entry[1:] for entry in seen if entry[0] == "carried"]
    # 5 TRAIN and 5 unmask messages carry round 2's key stages, as many carry round 3's; the last
    # round's messages carry nothing.
    assert carried.count(("train", (NEXT_INPUT_KEY,))) == 10
    assert carried.count(("query.secagg_unmask", (NEXT_RECORD_KEY,))) == 10
    # The same run with folding disabled: four exchanges a round, and bit for bit the same
    # model, losses and ε (masks cancel exactly; the sampling draws come in the same order).
    monkeypatch.setattr(
        secure_round.SecureAggregation, "_begin_ahead", lambda self, train, plan: None
    )
    unfolded_config = secure_config(
        tmp_path / "unfolded", rounds=3, secagg_threshold=0.6, seed=3, reproducible=True
    )
    run_in_process(unfolded_config)
    unfolded = results_of(tmp_path / "unfolded" / "run")
    assert [r["secure_aggregation"]["exchanges"] for r in unfolded["rounds"]] == [4, 4, 4]
    for a, b in zip(folded["rounds"], unfolded["rounds"], strict=True):
        assert (a["sampled"], a["loss"], a["accuracy"]) == (b["sampled"], b["loss"], b["accuracy"])
        assert a["epsilon_by_client"] == b["epsilon_by_client"]
    for a, b in zip(
        final_weights(tmp_path / "run"), final_weights(tmp_path / "unfolded" / "run"), strict=True
    ):
        assert np.array_equal(a, b)


def test_a_client_lost_in_a_folded_round_sits_out_the_next_and_rounds_go_on(tmp_path):
    config = secure_config(tmp_path, rounds=4, secagg_threshold=0.6)
    run_in_process(
        config,
        client_mods=[
            # Client 1 crashes while training in round 2: its keys for round 3 never left.
            Dropout.at("train", [1], rounds=[2]),
            # Client 4 fails only round 4's share-keys part of round 3's unmask message.
            Dropout.at("query.secagg_share_keys", [4], rounds=[4]),
        ],
    )
    rounds = results_of(tmp_path / "run")["rounds"]
    summaries = [r["secure_aggregation"] for r in rounds]
    assert [s["status"] for s in summaries] == ["ok"] * 4
    assert [s["exchanges"] for s in summaries] == [4, 2, 2, 2]
    assert summaries[1]["dropped"] == [1] and rounds[1]["clients_trained"] == 4
    # Round 3: client 1 was sampled but has no keys this round; the others' sum is released.
    assert summaries[2]["dropped"] == [1] and summaries[2]["survivors"] == [0, 2, 3, 4]
    # Round 3's own unmask went through for client 4: only round 4 is without it.
    assert summaries[3]["dropped"] == [4] and summaries[3]["survivors"] == [0, 1, 2, 3]
    assert rounds[3]["loss"] != rounds[2]["loss"]


def test_a_fold_whose_next_round_falls_below_the_threshold_runs_that_round_in_full(tmp_path):
    config = secure_config(tmp_path, rounds=3, secagg_threshold=0.6)
    # Three of five fail round 3's share-keys part (carried by round 2's unmask): the fold cannot
    # reach t = 3, so round 3 starts over with four exchanges and all five clients.
    run_in_process(config, client_mods=[Dropout.at("query.secagg_share_keys", [0, 1, 2], [3])])
    rounds = results_of(tmp_path / "run")["rounds"]
    summaries = [r["secure_aggregation"] for r in rounds]
    assert [s["exchanges"] for s in summaries] == [4, 2, 4]
    assert summaries[2]["status"] == "failed" and "share_keys" in summaries[2]["reason"]


def test_a_folded_run_killed_after_a_round_resumes_to_the_uninterrupted_results(tmp_path):
    class CrashError(RuntimeError):
        pass

    def crash(record):
        if record.round == 1:
            raise CrashError("the server dies after round 1's checkpoint")

    values = dict(rounds=3, clients_per_round=3, secagg_threshold=0.6, seed=7, reproducible=True)
    straight = secure_config(tmp_path / "straight", **values)
    run_in_process(straight)
    killed = secure_config(tmp_path / "killed", **values)
    with pytest.raises(CrashError):
        run_in_process(killed, crash)
    # Round 2's clients were drawn during round 1 (for its keys): the checkpoint keeps the draw.
    checkpoint = json.loads((tmp_path / "killed" / "run" / "checkpoint.json").read_text())
    assert list(checkpoint["strategy"]["presampled"]) == ["2"]
    assert main(["resume", str(tmp_path / "killed" / "run")]) == 0
    a = results_of(tmp_path / "straight" / "run")
    b = results_of(tmp_path / "killed" / "run")
    assert b["resumed_after_rounds"] == [1] and b["finished"] is True
    # The resumed round 2 had no keys ahead (the server that exchanged them is gone): 4 exchanges.
    assert [r["secure_aggregation"]["exchanges"] for r in a["rounds"]] == [4, 2, 2]
    assert [r["secure_aggregation"]["exchanges"] for r in b["rounds"]] == [4, 4, 2]
    for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
        assert (rb["sampled"], rb["loss"], rb["accuracy"]) == (
            ra["sampled"],
            ra["loss"],
            ra["accuracy"],
        )
