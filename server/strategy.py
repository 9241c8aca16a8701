"""Privet's FedAvg: Flower's strategy with deterministic aggregation and privacy-aware metrics.

Flower's FedAvg averages every metric weighted by examples; ε must be a maximum instead. Replies
are aggregated in client order, so the same seed gives bit-identical models whatever order the
clients finished in. Each client's privacy report is handed to `FederationPrivacy`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from server.federation_privacy import ClientPrivacy, ClientReportError, FederationPrivacy

logger = logging.getLogger(__name__)

WEIGHT_KEY = "num-examples"


def client_privacy_of(metrics: MetricRecord) -> ClientPrivacy:
    """Parse a client's train reply metrics into a privacy report (raises on missing keys)."""
    try:
        return ClientPrivacy(
            client_id=int(metrics["client-id"]),
            num_examples=int(metrics["num-examples"]),
            epsilon=float(metrics["epsilon"]),
            delta=float(metrics["delta"]),
            noise_multiplier=float(metrics["noise-multiplier"]),
            sample_rate=float(metrics["sample-rate"]),
            steps=int(metrics["steps"]),
            rounds_participated=int(metrics["rounds-participated"]),
        )
    except KeyError as missing:
        raise ClientReportError(f"a client reply has no {missing} metric") from None


def max_epsilon_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Aggregate train metrics: the largest ε (never a mean), and how many clients trained."""
    reports = [client_privacy_of(next(iter(r.metric_records.values()))) for r in records]
    return MetricRecord(
        {
            "epsilon-max": max((report.epsilon for report in reports), default=0.0),
            "clients-trained": len(reports),
        }
    )


class PrivetFedAvg(FedAvg):
    """FedAvg over all sampled clients, recording each client's cumulative example-level ε."""

    def __init__(self, privacy: FederationPrivacy, **kwargs: object) -> None:
        super().__init__(
            weighted_by_key=WEIGHT_KEY,
            train_metrics_aggr_fn=max_epsilon_metrics,
            **kwargs,  # type: ignore[arg-type]
        )
        self.privacy = privacy
        self.last_local_accuracy: float | None = None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate in client order and record every client's privacy report first."""
        replies = list(replies)
        valid = [msg for msg in replies if not msg.has_error()]
        ordered = sorted(
            valid, key=lambda msg: int(next(iter(msg.content.metric_records.values()))["client-id"])
        )
        reports = [
            client_privacy_of(next(iter(m.content.metric_records.values()))) for m in ordered
        ]
        self.privacy.record(server_round, reports)
        errors = [msg for msg in replies if msg.has_error()]
        return super().aggregate_train(server_round, [*ordered, *errors])

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Weighted local accuracy of the clients (on their held-out validation examples)."""
        metrics = super().aggregate_evaluate(server_round, replies)
        self.last_local_accuracy = (
            float(metrics["accuracy"]) if metrics is not None and "accuracy" in metrics else None
        )
        return metrics
