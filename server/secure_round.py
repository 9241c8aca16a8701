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
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.app.typing import ConfigRecordValues

from privet.privacy.distributed_dp import DistributedDpSpec
from privet.privacy.secagg import QuantizationError, SecAggError
from privet.privacy.secagg.wire import (
    INPUT_KEY,
    NEXT_INPUT_KEY,
    NEXT_METRICS_KEY,
    NEXT_RECORD_KEY,
    RECORD_KEY,
    STAGE_ACTIONS,
)
from privet.server.federation_privacy import ClientPrivacy
from privet.server.round_book import RoundBook, RoundOutcome
from privet.server.secure_aggregation import (
    KeysAhead,
    Lane,
    Replies,
    SecAggRoundPlan,
    SecAggSettings,
    decode_secure_sum,
    plan_round,
    run_folded_sum,
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
    """SecAgg+ over the sampled clients; the release part sees only the unmasked sum.

    Stage folding: each round also begins the next round's secure sum (`KeysAhead`): its keys
    are asked for with this round's TRAIN messages and its shares exchanged with this round's
    unmask, so a round whose keys came ahead takes two exchanges instead of four.
    """

    min_clients = 2

    def __init__(self, settings: SecAggSettings, update_clip_norm: float) -> None:
        self.settings = settings
        self.update_clip_norm = update_clip_norm
        """The clip norm of a round without client-level DP (updates are still bounded to be
        quantized within the ring)."""
        self._ahead: KeysAhead | None = None
        """The next round's secure sum, begun during the last round's exchanges."""

    def _prepared(self, server_round: int, sampled: list[int]) -> KeysAhead | None:
        """The round's secure sum begun a round ahead, if it is ready for these clients."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead.server_round != server_round:
            return None
        if ahead.ready and set(ahead.plan.graph) != set(sampled):
            ahead.give_up("its sampled clients changed (declined, excluded or offline)")
        return ahead if ahead.ready else None

    def plan(
        self, book: RoundBook, release: UpdateRelease, train: TrainRound
    ) -> tuple[SecAggRoundPlan, KeysAhead | None] | None:
        """Fix this round's secure sum and add its keys to the train config; None: skip round.

        Returns the plan and, when the round's keys were exchanged a round ahead, that fold.
        """
        server_round = train.server_round
        outcome = book.outcome(server_round)
        client_level_clip = release.clip_norm
        clip = client_level_clip if client_level_clip is not None else self.update_clip_norm
        num_params = sum(int(a.size) for a in train.arrays.to_numpy_ndarrays())
        prepared = self._prepared(server_round, outcome.sampled)
        try:
            if prepared is not None:
                plan = prepared.plan.with_clip_norm(clip)
            else:
                plan = plan_round(
                    self.settings, outcome.sampled, num_params, clip, server_round=server_round
                )
        except SecAggError as exc:
            fail_secure_round(server_round, outcome, str(exc))
            release.charge_unreleased(book, server_round)
            return None
        train.config.update(TrainInstructions(server_round, clip).to_config())
        train.config.update(plan.train_config())
        outcome.clip_norm = clip
        rounding = "conditional" if client_level_clip is not None else "stochastic"
        outcome.secure_aggregation = {
            "status": "running",
            "threshold": plan.config.threshold,
            "neighbours": plan.neighbours,
            "bits": plan.config.bits,
            "levels": plan.spec.levels if plan.distributed is None else None,
            # Under client-level DP the clients round conditionally, so the norm of each rounded
            # update, and the sensitivity of the sum, is at most the clip norm (norm_bound).
            "rounding": rounding,
            "norm_bound": client_level_clip,
            # 2 when the round's keys were exchanged during the round before (stage folding).
            "exchanges": 2 if prepared is not None else 4,
            "refusals": 0,
            "refused": [],
            "rejected_replies": [],
        }
        if plan.distributed is not None:
            outcome.secure_aggregation["distributed_dp"] = planned_summary(
                plan.distributed, len(outcome.sampled)
            )
        return plan, prepared

    def _begin_ahead(self, train: TrainRound, plan: SecAggRoundPlan) -> KeysAhead | None:
        """Sample the next round now and plan its secure sum, to fold its key stages into ours."""
        if train.sample_next is None:
            return None
        sampled = train.sample_next()
        if len(sampled) < self.min_clients:
            return None
        num_params = (
            plan.config.vector_length - 1
            if plan.distributed is None
            else plan.distributed.dimension
        )
        try:
            ahead_plan = plan_round(
                self.settings,
                sampled,
                num_params,
                float(plan.spec.clip_norm),
                server_round=train.server_round + 1,
            )
        except SecAggError:
            return None  # the next round plans itself, and records why it cannot run
        return KeysAhead(train.server_round + 1, ahead_plan)

    def run(
        self, book: RoundBook, release: UpdateRelease, train: TrainRound
    ) -> list[np.ndarray] | None:
        """One round under secure aggregation: keys, shares, TRAIN + masked input, unmask."""
        server_round = train.server_round
        planned = self.plan(book, release, train)
        outcome = book.outcome(server_round)
        summary = outcome.secure_aggregation
        if planned is None or summary is None or summary.get("status") != "running":
            book.privacy.record(server_round, [], trained=[])
            return None
        plan, prepared = planned
        outcome.bytes_down = train.arrays.count_bytes()
        ahead = self._begin_ahead(train, plan)
        settings = plan.train_config()
        clip_norm = float(plan.spec.clip_norm)
        counts: dict[int, int] = dict(prepared.counts) if prepared is not None else {}
        reports: list[ClientPrivacy] = []
        trained: list[int] = []
        clipped = 0

        def ahead_input() -> ConfigRecord:
            assert ahead is not None
            return _config_record(SecAggInput(ahead.plan.train_config(), clip_norm).to_config())

        def message(cid: int, now: Lane | None, later: Lane | None) -> Message:
            """One client's message of an exchange: this round's stage, the next's, or both."""
            if now is None:  # the next round's stage alone
                assert later is not None and ahead is not None
                content = RecordDict(
                    {INPUT_KEY: ahead_input()}
                    if later.stage == "advertise_keys"
                    else {RECORD_KEY: _config_record(later.messages[cid])}
                )
                kind = f"{MessageType.QUERY}.{STAGE_ACTIONS[later.stage]}"
                return book.message(cid, content, kind, server_round + 1)
            wire = now.messages[cid]
            if now.stage == "masked_input":
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
                if later is not None:
                    content[NEXT_INPUT_KEY] = ahead_input()
                kind = str(MessageType.TRAIN)
            else:
                content = RecordDict(
                    {INPUT_KEY: _config_record(SecAggInput(settings, clip_norm).to_config())}
                    if now.stage == "advertise_keys"
                    else {RECORD_KEY: _config_record(wire)}
                )
                if later is not None:
                    content[NEXT_RECORD_KEY] = _config_record(later.messages[cid])
                kind = f"{MessageType.QUERY}.{STAGE_ACTIONS[now.stage]}"
            return book.message(cid, content, kind, server_round)

        def read_now(stage: str, cid: int, reply: Message) -> dict[str, object] | None:
            """The current round's part of a reply, or None when it is dropped (recorded)."""
            nonlocal clipped
            if stage == "masked_input":
                report = book.take_report(server_round, cid, reply, reports, "masked_input")
                if report is None:
                    return None
                trained.append(cid)
                metrics = reply.content.metric_records[METRICS_RECORD]
                try:
                    clipped += TrainReply.quantization_clipped_in(metrics)
                except MessageError as error:
                    plan.server.reject(cid, stage, str(error))
                    return None
            if stage == "advertise_keys":
                try:
                    counts[cid] = advertised_count(reply.content.metric_records.get(METRICS_RECORD))
                except MessageError as error:
                    plan.server.reject(cid, stage, str(error))
                    return None
            record = reply.content.config_records.get(RECORD_KEY)
            if record is None:
                plan.server.reject(cid, stage, "the reply has no protocol message")
                return None
            masked = record.get("masked")
            if stage == "masked_input" and isinstance(masked, bytes):
                outcome.bytes_up.append(len(masked))
            return dict(record)

        def read_ahead(
            stage: str, cid: int, reply: Message, alone: bool
        ) -> dict[str, object] | None:
            """The next round's part of a reply (its own reply when ``alone``), or None."""
            assert ahead is not None
            record_key, metrics_key = (
                (RECORD_KEY, METRICS_RECORD) if alone else (NEXT_RECORD_KEY, NEXT_METRICS_KEY)
            )
            record = reply.content.config_records.get(record_key)
            if record is None:  # the client could not answer the next round's part (it logged why)
                ahead.plan.server.reject(cid, stage, "the reply has no protocol message")
                return None
            if stage == "advertise_keys":
                try:
                    ahead.counts[cid] = advertised_count(
                        reply.content.metric_records.get(metrics_key)
                    )
                except MessageError as error:
                    ahead.plan.server.reject(cid, stage, str(error))
                    return None
            return dict(record)

        def exchange(now: Lane, later: Lane | None) -> tuple[Replies, Replies]:
            stage = now.stage
            timeout = train.timeout if stage == "masked_input" else self.settings.stage_timeout
            ahead_ids = set(later.messages) if later is not None else set()
            ids = sorted(set(now.messages) | ahead_ids)
            sent = [
                message(
                    cid,
                    now if cid in now.messages else None,
                    later if cid in ahead_ids else None,
                )
                for cid in ids
            ]
            # Pairs, not a dict: a client that replies twice must reach the protocol as such.
            answers: list[tuple[int, dict[str, object]]] = []
            ahead_answers: list[tuple[int, dict[str, object]]] = []
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
                in_now = cid in now.messages
                if reply.has_error():
                    if in_now:
                        book.client_failed(
                            server_round, reply, stage, counted=stage == "masked_input"
                        )
                    elif later is not None:
                        book.client_failed(server_round + 1, reply, later.stage, counted=False)
                    continue
                if cid in replied:  # only its first report counts; the protocol drops it
                    (answers if in_now else ahead_answers).append((cid, {}))
                    continue
                replied.add(cid)
                if in_now:
                    part = read_now(stage, cid, reply)
                    if part is not None:
                        answers.append((cid, part))
                if later is not None and cid in ahead_ids:
                    part = read_ahead(later.stage, cid, reply, alone=not in_now)
                    if part is not None:
                        ahead_answers.append((cid, part))
            return answers, ahead_answers

        shapes = [w.shape for w in train.arrays.to_numpy_ndarrays()]
        try:
            delivered = None if prepared is None else prepared.deliveries
            result = run_folded_sum(plan, exchange, delivered, ahead)
            secure = decode_secure_sum(plan, result, shapes)
        except (SecAggError, QuantizationError) as exc:
            book.privacy.record(server_round, reports, trained=sorted(trained))
            record_protocol_drops(outcome, plan)
            fail_secure_round(server_round, outcome, str(exc))
            release.charge_unreleased(book, server_round)
            return None
        finally:
            self._ahead = ahead if ahead is not None and ahead.ready else None
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


def planned_summary(spec: DistributedDpSpec, sampled: int) -> dict[str, object]:
    """What a distributed-DP round was planned with, for the round's record in results.json."""
    return {
        "bits": spec.bits,
        "scale": spec.scale,
        "norm_bound": spec.norm_bound,
        "total_variance": spec.total_variance,
        "cohort": spec.cohort,
        "local_variance": float(spec.local_variance),
        "local_noise_stddev": spec.noise_stddev,
        "min_survivors": spec.min_survivors,
        "planned_noise_multiplier": spec.total_noise_multiplier(spec.min_survivors),
        "expected_wraps": spec.expected_wraps(sampled),
        "padded_dimension": spec.padded_dimension,
    }


def advertised_count(metrics: MetricRecord | None) -> int:
    """The example count a client sent with its keys (its aggregation weight), at least 1."""
    if metrics is None:
        raise MessageError("the reply has no metrics")
    return max(1, AdvertiseReply.from_metrics(metrics).num_examples)


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
