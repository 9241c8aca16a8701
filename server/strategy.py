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
from privacy.secagg import QuantizationError, SecAggError
from privacy.secagg.wire import INPUT_KEY, RECORD_KEY, STAGE_ACTIONS, WireMessage
from server.aggregation import (
    ClientLevelAggregator,
    ClientUpdate,
    apply_update,
    weighted_mean_update,
)
from server.checkpoint import generator_state, restore_generator
from server.client_dp import ClientLevelPlan
from server.federation_privacy import ClientPrivacy, ClientReportError, FederationPrivacy
from server.sampling import sample_clients
from server.secure_aggregation import (
    SecAggRoundPlan,
    SecAggSettings,
    decode_secure_sum,
    plan_round,
    run_secure_sum,
)

logger = logging.getLogger(__name__)

WEIGHT_KEY = "num-examples"
QUERY_TIMEOUT_S = 600.0


def update_problem(arrays: ArrayRecord | None, shapes: list[tuple[int, ...]]) -> str | None:
    """Why a client's update cannot be aggregated (wrong layout, NaN or inf), or None."""
    if arrays is None:
        return "the reply has no update"
    try:
        parts = arrays.to_numpy_ndarrays()
    except Exception as error:  # noqa: BLE001 (any undecodable payload is rejected)
        return f"the update cannot be decoded ({type(error).__name__})"
    got = [tuple(part.shape) for part in parts]
    if got != [tuple(shape) for shape in shapes]:
        return f"its arrays have shapes {got[:4]}, the model needs {[tuple(s) for s in shapes][:4]}"
    if not all(np.issubdtype(part.dtype, np.floating) for part in parts):
        return "the update is not floating point"
    if not all(bool(np.all(np.isfinite(part))) for part in parts):
        return "the update contains NaN or infinite values"
    return None


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
    secure_aggregation: dict[str, object] | None = None


class PrivetFedAvg(FedAvg):
    """FedAvg over Poisson-sampled clients with example-level and optional client-level DP."""

    def __init__(
        self,
        privacy: FederationPrivacy,
        *,
        client_sample_rate: float,
        sampling_rng: np.random.Generator,
        client_sampling: str = "poisson",
        clients_per_round: int | None = None,
        client_level: ClientLevelPlan | None = None,
        aggregator: ClientLevelAggregator | None = None,
        server_ledger: PrivacyLedger | None = None,
        client_epsilon_budget: float | None = None,
        accountant: str = "rdp",
        secagg: SecAggSettings | None = None,
        update_clip_norm: float = 1.0,
    ) -> None:
        super().__init__(weighted_by_key=WEIGHT_KEY, min_available_nodes=1)
        self.privacy = privacy
        self.client_sample_rate = client_sample_rate
        self.client_sampling = client_sampling
        self.clients_per_round = clients_per_round
        self.sampling_rng = sampling_rng
        self.client_level = client_level
        self.aggregator = aggregator
        self.server_ledger = server_ledger
        self.client_epsilon_budget = client_epsilon_budget
        self.accountant = accountant
        self.secagg = secagg
        self.update_clip_norm = update_clip_norm
        self._secagg_plan: SecAggRoundPlan | None = None
        self.client_of_node: dict[int, int] = {}
        self.declined_at: dict[int, int] = {}
        self.outcomes: dict[int, RoundOutcome] = {}
        self.stop_reason: str | None = None
        self.last_local_accuracy: float | None = None
        self._current: ArrayRecord | None = None

    # -- discovery and sampling -------------------------------------------------------------

    def discover_clients(self, grid: Grid, expected: int, timeout: float) -> None:
        """Ask every node which client (data shard) it is, so sampling can be reproducible.

        Waits up to ``timeout`` seconds for ``expected`` nodes, then goes on with the nodes that
        came (a node that is down when a run starts or resumes must not stall the federation).
        """
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        node_ids = sorted(grid.get_node_ids())
        needed = 2 if self.secagg is not None else 1
        if len(node_ids) < needed:
            raise TimeoutError(
                f"only {len(node_ids)} of {expected} nodes came within {timeout:g} s; start the "
                "nodes (flower-supernode) or raise round-timeout"
            )
        if len(node_ids) < expected:
            logger.warning(
                "%d of %d nodes came within %g s; going on with them",
                len(node_ids),
                expected,
                timeout,
            )
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

    def _message(
        self, client: int, content: RecordDict, message_type: str, server_round: int
    ) -> Message:
        """A message to a client's node, tagged with the round (its group id)."""
        return Message(
            content=content,
            dst_node_id=self._node_of_client()[client],
            message_type=message_type,
            group_id=str(server_round),
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample the clients that have not declined, and send them the global model."""
        self._current = arrays
        outcome = self.outcomes.setdefault(server_round, RoundOutcome())
        # Nodes the SuperLink has lost are not sampled (a grid-less caller samples them all).
        online = set(grid.get_node_ids()) if grid is not None else set(self.client_of_node)
        active = [
            c
            for node, c in sorted(self.client_of_node.items(), key=lambda item: item[1])
            if c not in self.declined_at and node in online
        ]
        outcome.sampled = sample_clients(
            active,
            self.client_sampling,
            self.client_sample_rate,
            self.clients_per_round if self.clients_per_round is not None else len(active),
            self.sampling_rng,
        )
        config["server-round"] = server_round
        if self.aggregator is not None:
            config["clip-norm"] = self.aggregator.clip_norm
            outcome.clip_norm = self.aggregator.clip_norm
        if self.secagg is not None:
            # The secure round sends its own messages (keys first, then TRAIN): see
            # `run_secure_round`.
            self._plan_secure_round(server_round, arrays, config, outcome)
            return []
        record = RecordDict({"arrays": arrays, "config": config})
        return [
            self._message(client, record, MessageType.TRAIN, server_round)
            for client in outcome.sampled
        ]

    def _plan_secure_round(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, outcome: RoundOutcome
    ) -> bool:
        """Fix this round's secure sum and add its keys to the train config; False: skip round."""
        assert self.secagg is not None
        clip = self.aggregator.clip_norm if self.aggregator is not None else self.update_clip_norm
        num_params = sum(int(a.size) for a in arrays.to_numpy_ndarrays())
        try:
            plan = plan_round(self.secagg, outcome.sampled, num_params, clip)
        except SecAggError as exc:
            self._secagg_plan = None
            self._fail_secure_round(server_round, outcome, str(exc))
            return False
        self._secagg_plan = plan
        config["clip-norm"] = clip
        config.update(plan.train_config())
        outcome.clip_norm = clip
        outcome.secure_aggregation = {
            "status": "running",
            "threshold": plan.config.threshold,
            "neighbours": plan.neighbours,
            "bits": plan.config.bits,
            "levels": plan.spec.levels,
            # Under client-level DP the clients round conditionally, so the norm of each rounded
            # update, and the sensitivity of the sum, is at most the clip norm (norm_bound).
            "rounding": "conditional" if self.aggregator is not None else "stochastic",
            "norm_bound": clip if self.aggregator is not None else None,
            "refusals": 0,
            "refused": [],
            "rejected_replies": [],
        }
        return True

    @staticmethod
    def _record_protocol_drops(summary: dict[str, object], plan: SecAggRoundPlan) -> None:
        """Count the clients that refused a stage, and those dropped for a bad reply."""
        summary["refusals"] = len(plan.server.refusals)
        summary["refused"] = sorted(plan.server.refusals)
        summary["rejected_replies"] = sorted(plan.server.rejected)

    def _fail_secure_round(self, server_round: int, outcome: RoundOutcome, reason: str) -> None:
        """Record a round whose secure sum could not be formed: the model stays as it was."""
        logger.warning("round %d skipped: %s", server_round, reason)
        summary = dict(outcome.secure_aggregation or {})
        summary.update({"status": "failed", "reason": reason})
        outcome.secure_aggregation = summary
        outcome.trained = []

    # -- aggregation ---------------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record privacy reports and declines, then aggregate updates into the next model."""
        assert self._current is not None
        outcome = self.outcomes.setdefault(server_round, RoundOutcome())
        current = self._current.to_numpy_ndarrays()
        shapes = [w.shape for w in current]
        updates: list[ClientUpdate] = []
        trained_only: list[int] = []  # trained (privacy spent) but their update was rejected
        reports: list[ClientPrivacy] = []
        for reply in replies:
            if reply.has_error():
                outcome.failed += 1
                logger.warning("a client failed in round %d: %s", server_round, reply.error.reason)
                continue
            metrics = reply.content["metrics"]
            report = self._take_report(server_round, metrics, outcome, reports)
            if report is None:
                continue
            within = bool(metrics["within-clip"]) if "within-clip" in metrics else None
            arrays = reply.content.array_records.get("arrays")
            problem = update_problem(arrays, shapes)
            if problem is not None:
                logger.warning(
                    "rejected the update of client %d in round %d: %s",
                    report.client_id,
                    server_round,
                    problem,
                )
                outcome.rejected.append(report.client_id)
                trained_only.append(report.client_id)
                continue
            assert arrays is not None
            updates.append(
                ClientUpdate(
                    report.client_id, arrays.to_numpy_ndarrays(), report.num_examples, within
                )
            )
        trained = sorted([u.client_id for u in updates] + trained_only)
        self.privacy.record(server_round, reports, trained=trained)
        outcome.trained = sorted(u.client_id for u in updates)
        if self.aggregator is not None and self.client_level is not None:
            assert self.server_ledger is not None
            # Write-ahead: the release is in the ledger before the noised model exists.
            self.server_ledger.record(server_round, [self.client_level.round_event()])
            aggregate = self.aggregator.aggregate(updates, shapes)
            outcome.rejected = sorted(outcome.rejected + aggregate.rejected)
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

    def run_secure_round(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        train_timeout: float,
    ) -> tuple[ArrayRecord, MetricRecord]:
        """One round under secure aggregation: keys, shares, TRAIN + masked input, unmask.

        The clients that trained have spent privacy whether or not the sum can be formed, so
        their reports are always recorded. If too few clients survive a stage, the survivors are
        split in the masking graph, or the protocol fails, the round is skipped: the model stays
        as it was and the reason is recorded. Clients that refuse a stage, or send a stale or
        duplicate reply, are dropped and counted in the round's summary (``refusals``,
        ``refused``, ``rejected_replies``).
        """
        list(self.configure_train(server_round, arrays, config, grid))  # sample and plan
        outcome = self.outcomes[server_round]
        current = arrays.to_numpy_ndarrays()
        plan = self._secagg_plan
        summary = outcome.secure_aggregation
        if plan is None or summary is None or summary.get("status") != "running":
            self.privacy.record(server_round, [], trained=[])
            return ArrayRecord(current), self._round_metrics(outcome)
        assert self.secagg is not None
        settings = {**plan.train_config(), "clip-norm": float(plan.spec.clip_norm)}
        counts: dict[int, int] = {}
        reports: list[ClientPrivacy] = []
        trained: list[int] = []
        clipped = 0

        def message(cid: int, stage: str, wire: WireMessage) -> Message:
            if stage == "masked_input":
                largest = max(counts.values())
                weight = 1.0 if self.aggregator is not None else counts[cid] / largest
                content = RecordDict(
                    {
                        "arrays": arrays,
                        "config": config,
                        RECORD_KEY: ConfigRecord(wire),
                        INPUT_KEY: ConfigRecord({**settings, "weight": weight}),
                    }
                )
                kind = str(MessageType.TRAIN)
            else:
                content = RecordDict(
                    {INPUT_KEY: ConfigRecord(settings)}
                    if stage == "advertise_keys"
                    else {RECORD_KEY: ConfigRecord(wire)}
                )
                kind = f"{MessageType.QUERY}.{STAGE_ACTIONS[stage]}"
            return self._message(cid, content, kind, server_round)

        def exchange(
            stage: str, messages: dict[int, WireMessage]
        ) -> list[tuple[int, dict[str, object]]]:
            nonlocal clipped
            assert self.secagg is not None
            timeout = train_timeout if stage == "masked_input" else self.secagg.stage_timeout
            sent = [message(cid, stage, wire) for cid, wire in messages.items()]
            # Pairs, not a dict: a client that replies twice must reach the protocol as such.
            answers: list[tuple[int, dict[str, object]]] = []
            replied: set[int] = set()
            for reply in grid.send_and_receive(sent, timeout=timeout):
                cid = self.client_of_node.get(reply.metadata.src_node_id)
                if cid is None or reply.has_error():
                    reason = reply.error.reason if reply.has_error() else "unknown node"
                    logger.warning("client %s dropped at '%s': %s", cid, stage, reason)
                    if stage == "masked_input":
                        outcome.failed += 1
                    continue
                if cid in replied:  # only its first report counts; the protocol drops it
                    answers.append((cid, {}))
                    continue
                replied.add(cid)
                if stage == "masked_input":
                    metrics = reply.content["metrics"]
                    if self._take_report(server_round, metrics, outcome, reports) is None:
                        continue
                    trained.append(cid)
                    clipped += int(metrics.get("quantization-clipped", 0))
                if stage == "advertise_keys" and "metrics" in reply.content:
                    counts[cid] = max(1, int(reply.content["metrics"].get("num-examples", 1)))
                if RECORD_KEY not in reply.content:
                    logger.warning("client %d dropped at '%s': no protocol reply", cid, stage)
                    continue
                answers.append((cid, dict(reply.content.config_records[RECORD_KEY])))
            return answers

        try:
            result = run_secure_sum(plan, exchange)
            secure = decode_secure_sum(plan, result, [w.shape for w in current])
        except (SecAggError, QuantizationError) as exc:
            self.privacy.record(server_round, reports, trained=sorted(trained))
            self._record_protocol_drops(summary, plan)
            self._fail_secure_round(server_round, outcome, str(exc))
            return ArrayRecord(current), self._round_metrics(outcome)
        self.privacy.record(server_round, reports, trained=sorted(trained))
        self._record_protocol_drops(summary, plan)
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
        if self.aggregator is not None and self.client_level is not None:
            assert self.server_ledger is not None
            # Write-ahead: the release is in the ledger before the noised model exists.
            self.server_ledger.record(server_round, [self.client_level.round_event()])
            aggregate = self.aggregator.release_sum(
                secure.weighted_update_sum, survivors, secure.within_clip
            )
            outcome.noised_within_fraction = aggregate.noised_within_fraction
            outcome.epsilon_client_level = self.server_ledger.epsilon(self.accountant)
            summary["error_bound"] = secure.error_bound / self.aggregator.expected_clients
            mean = aggregate.mean_update
        else:
            largest = max(counts.values())
            total_weight = sum(counts[cid] / largest for cid in survivors)
            summary["error_bound"] = secure.error_bound / total_weight
            mean = [part / total_weight for part in secure.weighted_update_sum]
        outcome.trained = survivors
        return ArrayRecord(apply_update(current, mean)), self._round_metrics(outcome)

    def _take_report(
        self,
        server_round: int,
        metrics: MetricRecord,
        outcome: RoundOutcome,
        reports: list[ClientPrivacy],
    ) -> ClientPrivacy | None:
        """Keep a TRAIN reply's privacy report; None if the client declined (it is recorded)."""
        report = client_privacy_of(metrics)
        reports.append(report)
        if int(metrics.get("declined", 0)):
            self.declined_at[report.client_id] = server_round
            outcome.declined.append(report.client_id)
            return None
        return report

    def _round_metrics(self, outcome: RoundOutcome) -> MetricRecord:
        return MetricRecord(
            {
                "epsilon-max": self.privacy.epsilon_max(),
                "clients-trained": len(outcome.trained),
                "clients-declined": len(outcome.declined),
            }
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Local evaluation on the clients that trained this round (held-out examples only)."""
        outcome = self.outcomes.get(server_round, RoundOutcome())
        record = RecordDict({"arrays": arrays, "config": config})
        return [
            self._message(client, record, MessageType.EVALUATE, server_round)
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

    # -- checkpoint --------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, object]:
        """What the round loop needs to go on after a restart (JSON-ready)."""
        state: dict[str, object] = {
            "declined_at": {str(c): r for c, r in self.declined_at.items()},
            "sampling_rng": generator_state(self.sampling_rng),
            "privacy": self.privacy.to_state(),
        }
        if self.aggregator is not None:
            state["aggregator"] = {
                "clip_norm": self.aggregator.clip_norm,
                "rng": generator_state(self.aggregator._rng),  # noqa: SLF001
            }
        return state

    def restore_state(self, state: dict[str, object]) -> None:
        """Continue from `checkpoint_state`'s output (same configuration)."""
        declined = state["declined_at"]
        assert isinstance(declined, dict)
        self.declined_at = {int(c): int(r) for c, r in declined.items()}
        restore_generator(self.sampling_rng, state["sampling_rng"])  # type: ignore[arg-type]
        self.privacy.restore(FederationPrivacy.from_state(state["privacy"]))  # type: ignore[arg-type]
        if self.aggregator is not None:
            saved = state["aggregator"]
            assert isinstance(saved, dict)
            self.aggregator.clip_norm = float(saved["clip_norm"])
            restore_generator(self.aggregator._rng, saved["rng"])  # noqa: SLF001

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
        first_round: int = 1,
    ) -> Result:
        """Flower's round loop, with the budget checks made before each round's work.

        ``first_round`` > 1 continues a run from a checkpoint (no initial evaluation).
        """
        result = Result()
        arrays = result.arrays = initial_arrays
        if evaluate_fn is not None and first_round == 1:
            initial = evaluate_fn(0, arrays)
            if initial is not None:
                result.evaluate_metrics_serverapp[0] = initial
        for server_round in range(first_round, num_rounds + 1):
            self.stop_reason = self.stop_reason_before(server_round)
            if self.stop_reason is not None:
                logger.warning("stopping before round %d: %s", server_round, self.stop_reason)
                break
            round_config = ConfigRecord(dict(train_config or {}))
            if self.secagg is not None:
                new_arrays, train_metrics = self.run_secure_round(
                    server_round, arrays, round_config, grid, timeout
                )
            else:
                train_messages = list(
                    self.configure_train(server_round, arrays, round_config, grid)
                )
                replies = (
                    grid.send_and_receive(train_messages, timeout=timeout) if train_messages else []
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
