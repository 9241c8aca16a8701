"""The server's book of a run's rounds: which node holds which client, who replied how.

The round loop (`server.strategy`) and its aggregation steps (`server.update_steps`,
`server.secure_round`) all read and write it, and they are handed it explicitly: no part of a
round keeps state in a closure or in another part. What a round's book holds ends up in
results.json (`server.app.RunRecorder`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from flwr.app import Message, MetricRecord, RecordDict

from privet.server.federation_privacy import ClientPrivacy, ClientReportError, FederationPrivacy
from privet.task.messages import METRICS_RECORD, MessageError, TrainReply

logger = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    """What happened in one round, beyond the model: for results.json."""

    sampled: list[int] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    declined: list[int] = field(default_factory=list)
    failed: int = 0
    rejected: list[int] = field(default_factory=list)
    clip_norm: float | None = None
    noised_within_fraction: float | None = None
    epsilon_client_level: float | None = None
    secure_aggregation: dict[str, object] | None = None
    bad_replies: list[dict[str, object]] = field(default_factory=list)
    """Replies dropped this round: {"client": id or None, "stage": ..., "reason": ...}."""
    excluded: list[int] = field(default_factory=list)
    """Clients excluded from sampling after this round (bad replies in too many rounds in a row)."""
    epsilon_unknown: list[int] = field(default_factory=list)
    """Clients whose privacy report this round was unusable (their ε now counts as ∞)."""
    no_update: str | None = None
    """Why no client's update reached the model this round (None when one did)."""
    first_error: str | None = None
    """The first error a client replied with this round (for `no_update`)."""
    failures: list[dict[str, object]] = field(default_factory=list)
    """Error replies this round: {"client": id or None, "stage": ..., "reason": one line}."""
    bytes_down: int | None = None
    """Bytes of model arrays each sampled client was sent with its TRAIN message."""
    bytes_up: list[int] = field(default_factory=list)
    """Bytes of each update that came back (its arrays, or its masked vector when secure)."""
    step_seconds: list[float] = field(default_factory=list)
    """Seconds per local DP-SGD step, one per client that said (its training time / its steps)."""
    gpu_peak_bytes: dict[int, int] = field(default_factory=dict)
    """The GPU memory peak of each client that trained on a GPU, by client id."""

    def cost(self) -> dict[str, object] | None:
        """What the round cost (results.json's round `cost`), or None if nothing was measured."""
        if self.bytes_down is None and not self.step_seconds:
            return None
        ups = sorted(self.bytes_up)
        steps = sorted(self.step_seconds)
        return {
            "bytes_down_per_client": self.bytes_down,
            "bytes_up_per_client": ups[len(ups) // 2] if ups else None,
            "step_seconds_median": steps[len(steps) // 2] if steps else None,
            "step_seconds_max": steps[-1] if steps else None,
            "gpu_peak_bytes_max": max(self.gpu_peak_bytes.values(), default=None),
            "gpu_peak_bytes_by_client": dict(sorted(self.gpu_peak_bytes.items())) or None,
        }


class RoundBook:
    """Who the clients are and what each round did; the one place replies are judged and logged."""

    def __init__(self, privacy: FederationPrivacy) -> None:
        self.privacy = privacy
        self.client_of_node: dict[int, int] = {}
        self.declined_at: dict[int, int] = {}
        self.outcomes: dict[int, RoundOutcome] = {}

    def outcome(self, server_round: int) -> RoundOutcome:
        """The round's outcome, created empty the first time it is asked for."""
        return self.outcomes.setdefault(server_round, RoundOutcome())

    def node_of_client(self) -> dict[int, int]:
        """Client id -> the node that holds it."""
        return {client: node for node, client in self.client_of_node.items()}

    def message(
        self, client: int, content: RecordDict, message_type: str, server_round: int
    ) -> Message:
        """A message to a client's node, tagged with the round (its group id)."""
        return Message(
            content=content,
            dst_node_id=self.node_of_client()[client],
            message_type=message_type,
            group_id=str(server_round),
        )

    def sender(
        self,
        server_round: int,
        reply: Message,
        stage: str,
        replied: set[int],
    ) -> int | None:
        """The client that sent `reply` (by its node), or None if the reply must be dropped."""
        node = reply.metadata.src_node_id
        cid = self.client_of_node.get(node)
        if cid is None:
            self.bad_reply(server_round, None, stage, f"a reply from unknown node {node}")
            return None
        if cid in replied:
            self.bad_reply(
                server_round, cid, stage, "replied more than once; its first reply counts"
            )
            return None
        replied.add(cid)
        return cid

    def client_failed(
        self, server_round: int, reply: Message, stage: str, *, counted: bool = True
    ) -> None:
        """Record a client's error reply.

        Its client, stage and reason (one line) are kept for results.json and logged; `counted`
        ones (train and masked-input replies) also count as the round's `failed` clients.
        """
        outcome = self.outcome(server_round)
        raw = reply.error.reason
        reason = error_text(raw)
        client = self.client_of_node.get(reply.metadata.src_node_id)
        if counted:
            outcome.failed += 1
            outcome.first_error = outcome.first_error or raw
        outcome.failures.append({"client": client, "stage": stage, "reason": reason})
        logger.warning(
            "round %d: client %s failed at %s: %s",
            server_round,
            "?" if client is None else client,
            stage,
            reason,
        )

    def bad_reply(self, server_round: int, client: int | None, stage: str, reason: str) -> None:
        """Drop a client's reply for this round, with a logged reason kept for results.json."""
        reason = " ".join(reason.split())[:300]
        logger.warning(
            "round %d: dropped the %s reply of client %s: %s", server_round, stage, client, reason
        )
        self.outcome(server_round).bad_replies.append(
            {"client": client, "stage": stage, "reason": reason}
        )

    def take_report(
        self,
        server_round: int,
        cid: int,
        reply: Message,
        reports: list[ClientPrivacy],
        stage: str,
    ) -> ClientPrivacy | None:
        """Keep client `cid`'s TRAIN reply's privacy report; None if it declined or is unusable.

        A decline is recorded. An unusable report (no metrics, a missing or malformed value, a
        report naming another client) drops the reply, and the client's ε counts as ∞ until
        its next usable report: it may have trained, and what it spent is unknown.
        """
        outcome = self.outcome(server_round)
        metrics = reply.content.metric_records.get(METRICS_RECORD)
        try:
            if metrics is None:
                raise ClientReportError("the reply has no metrics")
            report = ClientPrivacy.from_metrics(metrics)
            if report.client_id != cid:
                raise ClientReportError(f"it names client {report.client_id}")
            declined = TrainReply.declined_in(metrics)
        except (ClientReportError, MessageError) as error:
            self.privacy.mark_unknown(server_round, cid, str(error))
            outcome.epsilon_unknown.append(cid)
            self.bad_reply(server_round, cid, stage, f"unusable privacy report: {error}")
            return None
        reports.append(report)
        try:
            step = TrainReply.step_seconds_in(metrics)
        except MessageError as error:
            self.bad_reply(server_round, cid, stage, f"unusable timing: {error}")
            step = None
        if step is not None:
            outcome.step_seconds.append(step)
        try:
            peak = TrainReply.gpu_peak_bytes_in(metrics)
        except MessageError as error:
            self.bad_reply(server_round, cid, stage, f"unusable GPU memory figure: {error}")
            peak = None
        if peak is not None:
            outcome.gpu_peak_bytes[cid] = peak
        if declined:
            self.declined_at[report.client_id] = server_round
            outcome.declined.append(report.client_id)
            return None
        return report

    def round_metrics(self, server_round: int) -> MetricRecord:
        """The train metrics Flower's Result keeps for a round."""
        outcome = self.outcome(server_round)
        return MetricRecord(
            {
                "epsilon-max": self.privacy.epsilon_max(),
                "clients-trained": len(outcome.trained),
                "clients-declined": len(outcome.declined),
            }
        )


def error_text(reason: str | None) -> str:
    """A node's error reply as one readable line.

    Flower writes a ClientApp's exception as "<class 'pkg.ErrorName'>:<'message'>", which becomes
    "ErrorName: message".
    """
    text = " ".join(str(reason or "no reason given").split())
    match = re.fullmatch(r"<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>", text)
    if match:
        text = f"{match.group(1)}: {match.group(2)}"
    return text[:300]
