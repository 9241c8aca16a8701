"""Privet's FedAvg: Flower's strategy, with privacy budgets, Poisson sampling and DP-FedAvg.

It is a `flwr.serverapp.strategy.FedAvg` so Flower users can drive it like any strategy; the
privacy logic it calls is plain code (`server.aggregation`, `server.sampling`,
`server.federation_privacy`, the ledgers in `privacy`). Clients reply with *updates*. The round
loop (`start`) stops before a round that would exceed the client-level budget, and when every
client has declined for lack of example-level budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from privacy import PrivacyLedger
from server.aggregation import (
    ClientLevelAggregator,
    ClientUpdate,
    apply_update,
    weighted_mean_update,
)
from server.client_dp import ClientLevelPlan
from server.federation_privacy import ClientPrivacy, ClientReportError, FederationPrivacy
from server.sampling import poisson_sample

logger = logging.getLogger(__name__)

WEIGHT_KEY = "num-examples"
QUERY_TIMEOUT_S = 600.0


def client_privacy_of(metrics: MetricRecord) -> ClientPrivacy:
    """Parse a client's train reply metrics into a privacy report (raises on missing keys)."""
    return ClientPrivacy.from_metrics(metrics)


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


class PrivetFedAvg(FedAvg):
    """FedAvg over Poisson-sampled clients with example-level and optional client-level DP."""

    def __init__(
        self,
        privacy: FederationPrivacy,
        *,
        client_sample_rate: float,
        sampling_rng: np.random.Generator,
        client_level: ClientLevelPlan | None = None,
        aggregator: ClientLevelAggregator | None = None,
        server_ledger: PrivacyLedger | None = None,
        client_epsilon_budget: float | None = None,
        accountant: str = "rdp",
    ) -> None:
        super().__init__(weighted_by_key=WEIGHT_KEY, min_available_nodes=1)
        self.privacy = privacy
        self.client_sample_rate = client_sample_rate
        self.sampling_rng = sampling_rng
        self.client_level = client_level
        self.aggregator = aggregator
        self.server_ledger = server_ledger
        self.client_epsilon_budget = client_epsilon_budget
        self.accountant = accountant
        self.client_of_node: dict[int, int] = {}
        self.declined_at: dict[int, int] = {}
        self.outcomes: dict[int, RoundOutcome] = {}
        self.stop_reason: str | None = None
        self.last_local_accuracy: float | None = None
        self._current: ArrayRecord | None = None

    # -- discovery and sampling -------------------------------------------------------------

    def discover_clients(self, grid: Grid, expected: int, timeout: float) -> None:
        """Ask every node which client (data shard) it is, so sampling can be reproducible."""
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(list(grid.get_node_ids()))} of {expected} nodes came"
                )
            time.sleep(0.2)
        node_ids = sorted(grid.get_node_ids())
        messages = [
            Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
            for node in node_ids
        ]
        for reply in grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                logger.warning("node %d did not say who it is", reply.metadata.src_node_id)
                continue
            client = int(next(iter(reply.content.metric_records.values()))["client-id"])
            self.client_of_node[reply.metadata.src_node_id] = client
        if len(set(self.client_of_node.values())) != len(self.client_of_node):
            raise ClientReportError("two nodes claim the same client id; check partition-id")

    def _node_of_client(self) -> dict[int, int]:
        return {client: node for node, client in self.client_of_node.items()}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Poisson-sample the clients that have not declined, and send them the global model."""
        self._current = arrays
        outcome = self.outcomes.setdefault(server_round, RoundOutcome())
        active = [c for c in self.client_of_node.values() if c not in self.declined_at]
        outcome.sampled = poisson_sample(active, self.client_sample_rate, self.sampling_rng)
        config["server-round"] = server_round
        if self.aggregator is not None:
            config["clip-norm"] = self.aggregator.clip_norm
            outcome.clip_norm = self.aggregator.clip_norm
        nodes = self._node_of_client()
        record = RecordDict({"arrays": arrays, "config": config})
        return [
            Message(content=record, dst_node_id=nodes[client], message_type=MessageType.TRAIN)
            for client in outcome.sampled
        ]

    # -- aggregation ---------------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record privacy reports and declines, then aggregate updates into the next model."""
        assert self._current is not None
        outcome = self.outcomes.setdefault(server_round, RoundOutcome())
        updates: list[ClientUpdate] = []
        reports: list[ClientPrivacy] = []
        for reply in replies:
            if reply.has_error():
                outcome.failed += 1
                logger.warning("a client failed in round %d: %s", server_round, reply.error.reason)
                continue
            metrics = reply.content["metrics"]
            report = client_privacy_of(metrics)
            reports.append(report)
            if int(metrics.get("declined", 0)):
                self.declined_at[report.client_id] = server_round
                outcome.declined.append(report.client_id)
                continue
            within = bool(metrics["within-clip"]) if "within-clip" in metrics else None
            updates.append(
                ClientUpdate(
                    report.client_id,
                    reply.content["arrays"].to_numpy_ndarrays(),
                    report.num_examples,
                    within,
                )
            )
        self.privacy.record(server_round, reports, trained=[u.client_id for u in updates])
        outcome.trained = sorted(u.client_id for u in updates)
        current = self._current.to_numpy_ndarrays()
        if self.aggregator is not None and self.client_level is not None:
            assert self.server_ledger is not None
            # Write-ahead: the release is in the ledger before the noised model exists.
            self.server_ledger.record(server_round, [self.client_level.round_event()])
            aggregate = self.aggregator.aggregate(updates, [w.shape for w in current])
            outcome.rejected = aggregate.rejected
            outcome.trained = aggregate.aggregated
            outcome.noised_within_fraction = aggregate.noised_within_fraction
            outcome.epsilon_client_level = self.server_ledger.epsilon(self.accountant)
            new_weights = apply_update(current, aggregate.mean_update)
        elif updates:
            new_weights = apply_update(current, weighted_mean_update(updates))
        else:
            new_weights = current
        metrics = MetricRecord(
            {
                "epsilon-max": self.privacy.epsilon_max(),
                "clients-trained": len(outcome.trained),
                "clients-declined": len(outcome.declined),
            }
        )
        return ArrayRecord(new_weights), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Local evaluation on the clients that trained this round (held-out examples only)."""
        nodes = self._node_of_client()
        outcome = self.outcomes.get(server_round, RoundOutcome())
        record = RecordDict({"arrays": arrays, "config": config})
        return [
            Message(content=record, dst_node_id=nodes[client], message_type=MessageType.EVALUATE)
            for client in outcome.trained
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted local accuracy of the clients that evaluated."""
        valid = [r for r in replies if not r.has_error()]
        total = sum(int(r.content["metrics"]["num-examples"]) for r in valid)
        if total == 0:
            self.last_local_accuracy = None
            return None
        accuracy = (
            sum(
                float(r.content["metrics"]["accuracy"]) * int(r.content["metrics"]["num-examples"])
                for r in valid
            )
            / total
        )
        self.last_local_accuracy = accuracy
        return MetricRecord({"accuracy": accuracy})

    # -- the round loop ------------------------------------------------------------------------

    def stop_reason_before(self, server_round: int) -> str | None:
        """Why the run must end before `server_round`, or None to go on."""
        if self.client_of_node and len(self.declined_at) == len(self.client_of_node):
            return "every client has used its example-level privacy budget"
        if (
            self.client_epsilon_budget is not None
            and self.server_ledger is not None
            and self.client_level is not None
        ):
            after = self.server_ledger.epsilon_if_bounded(
                [self.client_level.round_event()], self.accountant
            )
            if after > self.client_epsilon_budget:
                return (
                    f"round {server_round} would take the client-level epsilon to {after:.4g}, "
                    f"above the budget {self.client_epsilon_budget:g}"
                )
        return None

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop, with the budget checks made before each round's work."""
        result = Result()
        arrays = initial_arrays
        if evaluate_fn is not None:
            initial = evaluate_fn(0, arrays)
            if initial is not None:
                result.evaluate_metrics_serverapp[0] = initial
        for server_round in range(1, num_rounds + 1):
            self.stop_reason = self.stop_reason_before(server_round)
            if self.stop_reason is not None:
                logger.warning("stopping before round %d: %s", server_round, self.stop_reason)
                break
            replies = grid.send_and_receive(
                self.configure_train(
                    server_round, arrays, ConfigRecord(dict(train_config or {})), grid
                ),
                timeout=timeout,
            )
            new_arrays, train_metrics = self.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            eval_messages = list(
                self.configure_evaluate(
                    server_round, arrays, ConfigRecord(dict(evaluate_config or {})), grid
                )
            )
            eval_replies = (
                grid.send_and_receive(eval_messages, timeout=timeout) if eval_messages else []
            )
            local = self.aggregate_evaluate(server_round, eval_replies)
            if local is not None:
                result.evaluate_metrics_clientapp[server_round] = local
            if evaluate_fn is not None:
                metrics = evaluate_fn(server_round, arrays)
                if metrics is not None:
                    result.evaluate_metrics_serverapp[server_round] = metrics
        result.arrays = arrays
        return result
