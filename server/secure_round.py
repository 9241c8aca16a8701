"""Secure aggregation as an aggregation step: the server learns only the sum of the updates.

The round loop is the one every round runs (`server.strategy.PrivetFedAvg.start`); this step
replaces the plain TRAIN exchange with SecAgg+'s four stages (advertise keys, share keys, TRAIN
with the masked input, unmask; `server.secure_aggregation.run_secure_sum`) and hands the unmasked
sum to the release part (`server.update_release`).

The clients that trained have spent privacy whether or not the sum can be formed, so their
reports are always recorded. If too few clients survive a stage, the survivors are split in the
masking graph, or the protocol fails, the round is skipped: the model stays as it was and the
reason is recorded. Clients that refuse a stage, or send a stale or duplicate reply, are dropped
and counted in the round's summary (``refusals``, ``refused``, ``rejected_replies``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.app.typing import ConfigRecordValues

from privet.privacy.secagg import QuantizationError, SecAggError
from privet.privacy.secagg.wire import INPUT_KEY, RECORD_KEY, STAGE_ACTIONS, WireMessage
from privet.server.federation_privacy import ClientPrivacy
from privet.server.round_book import RoundBook, RoundOutcome
from privet.server.secure_aggregation import (
    SecAggRoundPlan,
    SecAggSettings,
    decode_secure_sum,
    plan_round,
    run_secure_sum,
)
from privet.server.update_release import UpdateRelease
from privet.server.update_steps import AggregationStep, TrainRound
from privet.task.messages import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    METRICS_RECORD,
    AdvertiseReply,
    MessageError,
    SecAggInput,
    TrainInstructions,
    TrainReply,
)

logger = logging.getLogger(__name__)


def _config_record(values: Mapping[str, ConfigRecordValues]) -> ConfigRecord:
    """A ConfigRecord of `values` (a mapping, so a dict of narrower value types is accepted)."""
    return ConfigRecord(dict(values))


class SecureAggregation(AggregationStep):
    """SecAgg+ over the sampled clients; the release part sees only the unmasked sum."""

    min_clients = 2

    def __init__(self, settings: SecAggSettings, update_clip_norm: float) -> None:
        self.settings = settings
        self.update_clip_norm = update_clip_norm
        """The clip norm of a round without client-level DP (updates are still bounded to be
        quantized within the ring)."""

    def plan(
        self, book: RoundBook, release: UpdateRelease, train: TrainRound
    ) -> SecAggRoundPlan | None:
        """Fix this round's secure sum and add its keys to the train config; None: skip round."""
        server_round = train.server_round
        outcome = book.outcome(server_round)
        client_level_clip = release.clip_norm
        clip = client_level_clip if client_level_clip is not None else self.update_clip_norm
        num_params = sum(int(a.size) for a in train.arrays.to_numpy_ndarrays())
        try:
            plan = plan_round(self.settings, outcome.sampled, num_params, clip)
        except SecAggError as exc:
            fail_secure_round(server_round, outcome, str(exc))
            return None
        train.config.update(TrainInstructions(server_round, clip).to_config())
        train.config.update(plan.train_config())
        outcome.clip_norm = clip
        outcome.secure_aggregation = {
            "status": "running",
            "threshold": plan.config.threshold,
            "neighbours": plan.neighbours,
            "bits": plan.config.bits,
            "levels": plan.spec.levels,
            # Under client-level DP the clients round conditionally, so the norm of each rounded
            # update, and the sensitivity of the sum, is at most the clip norm (norm_bound).
            "rounding": "conditional" if client_level_clip is not None else "stochastic",
            "norm_bound": client_level_clip,
            "refusals": 0,
            "refused": [],
            "rejected_replies": [],
        }
        return plan

    def run(
        self, book: RoundBook, release: UpdateRelease, train: TrainRound
    ) -> list[np.ndarray] | None:
        """One round under secure aggregation: keys, shares, TRAIN + masked input, unmask."""
        server_round = train.server_round
        plan = self.plan(book, release, train)
        outcome = book.outcome(server_round)
        summary = outcome.secure_aggregation
        if plan is None or summary is None or summary.get("status") != "running":
            book.privacy.record(server_round, [], trained=[])
            return None
        settings = plan.train_config()
        clip_norm = float(plan.spec.clip_norm)
        counts: dict[int, int] = {}
        reports: list[ClientPrivacy] = []
        trained: list[int] = []
        clipped = 0

        def message(cid: int, stage: str, wire: WireMessage) -> Message:
            if stage == "masked_input":
                weight = release.secure_weight(counts[cid], max(counts.values()))
                secagg_input = SecAggInput(settings, clip_norm, weight)
                content = RecordDict(
                    {
                        ARRAYS_RECORD: train.arrays,
                        CONFIG_RECORD: train.config,
                        RECORD_KEY: _config_record(wire),
                        INPUT_KEY: _config_record(secagg_input.to_config()),
                    }
                )
                kind = str(MessageType.TRAIN)
            else:
                content = RecordDict(
                    {INPUT_KEY: _config_record(SecAggInput(settings, clip_norm).to_config())}
                    if stage == "advertise_keys"
                    else {RECORD_KEY: _config_record(wire)}
                )
                kind = f"{MessageType.QUERY}.{STAGE_ACTIONS[stage]}"
            return book.message(cid, content, kind, server_round)

        def exchange(
            stage: str, messages: Mapping[int, WireMessage]
        ) -> list[tuple[int, dict[str, object]]]:
            nonlocal clipped
            timeout = train.timeout if stage == "masked_input" else self.settings.stage_timeout
            sent = [message(cid, stage, wire) for cid, wire in messages.items()]
            # Pairs, not a dict: a client that replies twice must reach the protocol as such.
            answers: list[tuple[int, dict[str, object]]] = []
            replied: set[int] = set()
            for reply in train.grid.send_and_receive(sent, timeout=timeout):
                cid = book.client_of_node.get(reply.metadata.src_node_id)
                if cid is None:
                    book.bad_reply(
                        server_round,
                        None,
                        stage,
                        f"a reply from unknown node {reply.metadata.src_node_id}",
                    )
                    continue
                if reply.has_error():
                    book.client_failed(server_round, reply, stage, counted=stage == "masked_input")
                    continue
                if cid in replied:  # only its first report counts; the protocol drops it
                    answers.append((cid, {}))
                    continue
                replied.add(cid)
                if stage == "masked_input":
                    report = book.take_report(server_round, cid, reply, reports, "masked_input")
                    if report is None:
                        continue
                    trained.append(cid)
                    metrics = reply.content.metric_records[METRICS_RECORD]
                    try:
                        clipped += TrainReply.quantization_clipped_in(metrics)
                    except MessageError as error:
                        plan.server.reject(cid, stage, str(error))
                        continue
                if stage == "advertise_keys":
                    advertised = reply.content.metric_records.get(METRICS_RECORD)
                    try:
                        if advertised is None:
                            raise MessageError("the reply has no metrics")
                        counts[cid] = max(1, AdvertiseReply.from_metrics(advertised).num_examples)
                    except MessageError as error:
                        plan.server.reject(cid, stage, str(error))
                        continue
                record = reply.content.config_records.get(RECORD_KEY)
                if record is None:
                    plan.server.reject(cid, stage, "the reply has no protocol message")
                    continue
                answers.append((cid, dict(record)))
            return answers

        shapes = [w.shape for w in train.arrays.to_numpy_ndarrays()]
        try:
            result = run_secure_sum(plan, exchange)
            secure = decode_secure_sum(plan, result, shapes)
        except (SecAggError, QuantizationError) as exc:
            book.privacy.record(server_round, reports, trained=sorted(trained))
            record_protocol_drops(outcome, plan)
            fail_secure_round(server_round, outcome, str(exc))
            return None
        book.privacy.record(server_round, reports, trained=sorted(trained))
        record_protocol_drops(outcome, plan)
        survivors = list(secure.survivors)
        summary.update(
            {
                "status": "ok",
                "survivors": survivors,
                "dropped": list(secure.dropped),
                "quantization_clipped": clipped,
                "within_clip": secure.within_clip,
            }
        )
        largest = max(counts.values())
        weights = {cid: release.secure_weight(counts[cid], largest) for cid in survivors}
        update = release.release_secure_sum(book, server_round, secure, weights)
        outcome.trained = survivors
        return update


def record_protocol_drops(outcome: RoundOutcome, plan: SecAggRoundPlan) -> None:
    """Count the clients that refused a stage, and those dropped for a bad reply."""
    summary = outcome.secure_aggregation
    assert summary is not None
    summary["refusals"] = len(plan.server.refusals)
    summary["refused"] = sorted(plan.server.refusals)
    summary["rejected_replies"] = sorted(plan.server.rejected)
    for cid, why in sorted(plan.server.rejected.items()):
        stage, _, reason = why.partition(": ")
        outcome.bad_replies.append({"client": cid, "stage": stage, "reason": reason})


def fail_secure_round(server_round: int, outcome: RoundOutcome, reason: str) -> None:
    """Record a round whose secure sum could not be formed: the model stays as it was."""
    logger.warning("round %d skipped: %s", server_round, reason)
    summary = dict(outcome.secure_aggregation or {})
    summary.update({"status": "failed", "reason": reason})
    outcome.secure_aggregation = summary
    outcome.trained = []
