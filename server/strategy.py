"""Privet's FedAvg: Flower's strategy, with privacy budgets, Poisson sampling and DP-FedAvg.

It is a `flwr.serverapp.strategy.FedAvg` so Flower users can drive it like any strategy; the
privacy logic it calls is plain code (`server.aggregation`, `server.sampling`,
`server.federation_privacy`, the ledgers in `privacy`). Clients reply with *updates*. The round
loop (`start`) stops before a round that would exceed the client-level budget, and when every
client has declined for lack of example-level budget.

One bad reply never ends the run. A reply that cannot be used (no metrics, a malformed privacy
report, a report naming another client, a NaN or misshapen update, a malformed evaluation, a bad
secure-aggregation message) drops that client from the round with a logged reason, listed in the
round's `bad_replies`; a client whose privacy report was unusable counts at ε = ∞ until its next
usable report (`FederationPrivacy.mark_unknown`). A client that sends a bad reply in
`BAD_ROUNDS_TO_EXCLUDE` rounds in a row (rounds it was sampled in) is excluded from sampling for
the rest of the run. A run fails (`failure_reason`) when `FRUITLESS_ROUNDS_TO_STOP` rounds in a
row charge clients' privacy without any update reaching the model, or when no client is left to
sample because of exclusions.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.app.typing import ConfigRecordValues
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from privet.privacy import PrivacyLedger
from privet.privacy.secagg import QuantizationError, SecAggError
from privet.privacy.secagg.wire import INPUT_KEY, RECORD_KEY, STAGE_ACTIONS, WireMessage
from privet.server.aggregation import (
    ClientLevelAggregator,
    ClientUpdate,
    apply_update,
    weighted_mean_update,
)
from privet.server.checkpoint import generator_state, restore_generator
from privet.server.client_dp import ClientLevelPlan
from privet.server.federation_privacy import ClientPrivacy, ClientReportError, FederationPrivacy
from privet.server.sampling import sample_clients
from privet.server.secure_aggregation import (
    SecAggRoundPlan,
    SecAggSettings,
    decode_secure_sum,
    plan_round,
    run_secure_sum,
)
from privet.task.messages import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    METRICS_RECORD,
    NUM_EXAMPLES,
    AdvertiseReply,
    EvaluateReply,
    IdentityReply,
    MessageError,
    SecAggInput,
    TrainInstructions,
    TrainReply,
)

logger = logging.getLogger(__name__)


def _config_record(values: Mapping[str, ConfigRecordValues]) -> ConfigRecord:
    """A ConfigRecord of `values` (a mapping, so a dict of narrower value types is accepted)."""
    return ConfigRecord(dict(values))


WEIGHT_KEY = NUM_EXAMPLES
"""The metric FedAvg weights a client's update by (its example count)."""
QUERY_TIMEOUT_S = 600.0
BAD_ROUNDS_TO_EXCLUDE = 3
"""A client that sends a bad reply in this many rounds in a row is excluded from sampling."""
FRUITLESS_ROUNDS_TO_STOP = 3
"""This many rounds in a row that charge clients' privacy without changing the model end the run."""


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
        self.refused_nodes: dict[int, str] = {}  # node id -> why it was kept out
        self.declined_at: dict[int, int] = {}
        self.outcomes: dict[int, RoundOutcome] = {}
        self.stop_reason: str | None = None
        self.failure_reason: str | None = None
        self.bad_streak: dict[int, int] = {}
        self.excluded: dict[int, tuple[int, str]] = {}
        self.fruitless_streak = 0
        self.last_local_accuracy: float | None = None
        self._current: ArrayRecord | None = None

    # -- discovery and sampling -------------------------------------------------------------

    def discover_clients(
        self,
        grid: Grid,
        expected: int,
        timeout: float,
        node_clients: Mapping[int, int] | None = None,
    ) -> None:
        """Ask the nodes which client (data shard) each is, so sampling can be reproducible.

        With ``node_clients`` (a deployment's run-config key node-clients: node id -> client id)
        only the listed nodes are admitted: any other node the SuperLink lets in is refused
        without being contacted, and a listed node that claims another client id is refused; both
        are logged and never sampled. Without it every node is asked (simulations).

        Waits up to ``timeout`` seconds for the ``expected`` nodes (the listed ones, when given),
        then goes on with the nodes that came (a node that is down when a run starts or resumes
        must not stall the federation).
        """
        allowed = dict(node_clients) if node_clients is not None else None
        wanted = len(allowed) if allowed is not None else expected

        def admissible() -> list[int]:
            nodes = sorted(grid.get_node_ids())
            return nodes if allowed is None else [node for node in nodes if node in allowed]

        deadline = time.monotonic() + timeout
        while len(admissible()) < wanted and time.monotonic() < deadline:
            time.sleep(0.2)
        if allowed is None:
            _warn_if_deployment(grid)
        else:
            for node in sorted(set(grid.get_node_ids()) - set(allowed)):
                self._refuse(node, "it is not in node-clients (not contacted, never sampled)")
        node_ids = admissible()
        needed = 2 if self.secagg is not None else 1
        if len(node_ids) < needed:
            raise TimeoutError(
                f"only {len(node_ids)} of {wanted} nodes came within {timeout:g} s; start the "
                "nodes (flower-supernode), check node-clients, or raise round-timeout"
            )
        if len(node_ids) < wanted:
            logger.warning(
                "%d of %d nodes came within %g s; going on with them",
                len(node_ids),
                wanted,
                timeout,
            )
        messages = [
            Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
            for node in node_ids
        ]
        claims: dict[int, list[int]] = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                logger.warning("node %d did not say who it is", node)
                continue
            client = _claimed_client(reply)
            if client is None:
                self._refuse(node, "its reply names no client id")
            elif allowed is not None and allowed.get(node) != client:
                self._refuse(
                    node,
                    f"it claims client id {client} but node-clients gives it {allowed.get(node)}",
                )
            else:
                claims.setdefault(client, []).append(node)
        for client, nodes in sorted(claims.items()):
            if len(nodes) > 1:  # only without node-clients: a listed node has one client id
                raise ClientReportError(
                    f"nodes {', '.join(map(str, sorted(nodes)))} all claim client id {client}; "
                    "check their client-id, and list each partner's node in node-clients"
                )
            self.client_of_node[nodes[0]] = client
        if len(self.client_of_node) < needed:
            raise ClientReportError(
                f"only {len(self.client_of_node)} node(s) were admitted, {needed} needed; see the "
                "refused nodes above"
            )

    def _refuse(self, node: int, reason: str) -> None:
        """Keep a node out of the run: logged once, recorded in `refused_nodes`, never sampled."""
        if node not in self.refused_nodes:
            logger.warning("node %d refused: %s", node, reason)
        self.refused_nodes[node] = reason

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
            if c not in self.declined_at and c not in self.excluded and node in online
        ]
        outcome.sampled = sample_clients(
            active,
            self.client_sampling,
            self.client_sample_rate,
            self.clients_per_round if self.clients_per_round is not None else len(active),
            self.sampling_rng,
        )
        clip_norm = self.aggregator.clip_norm if self.aggregator is not None else None
        config.update(TrainInstructions(server_round, clip_norm).to_config())
        if clip_norm is not None:
            outcome.clip_norm = clip_norm
        if self.secagg is not None:
            # The secure round sends its own messages (keys first, then TRAIN): see
            # `run_secure_round`.
            self._plan_secure_round(server_round, arrays, config, outcome)
            return []
        record = RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: config})
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
        config.update(TrainInstructions(server_round, clip).to_config())
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

    def _record_protocol_drops(
        self, server_round: int, outcome: RoundOutcome, plan: SecAggRoundPlan
    ) -> None:
        """Count the clients that refused a stage, and those dropped for a bad reply."""
        summary = outcome.secure_aggregation
        assert summary is not None
        summary["refusals"] = len(plan.server.refusals)
        summary["refused"] = sorted(plan.server.refusals)
        summary["rejected_replies"] = sorted(plan.server.rejected)
        for cid, why in sorted(plan.server.rejected.items()):
            stage, _, reason = why.partition(": ")
            outcome.bad_replies.append({"client": cid, "stage": stage, "reason": reason})

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
        """Record privacy reports and declines, then aggregate updates into the next model.

        A reply that cannot be used drops its client from the round (`bad_replies`), never the
        run; see the module's docstring.
        """
        assert self._current is not None
        outcome = self.outcomes.setdefault(server_round, RoundOutcome())
        current = self._current.to_numpy_ndarrays()
        shapes = [w.shape for w in current]
        updates: list[ClientUpdate] = []
        trained_only: list[int] = []  # trained (privacy spent) but their update was rejected
        reports: list[ClientPrivacy] = []
        replied: set[int] = set()
        for reply in replies:
            if reply.has_error():
                outcome.failed += 1
                outcome.first_error = outcome.first_error or reply.error.reason
                logger.warning("a client failed in round %d: %s", server_round, reply.error.reason)
                continue
            cid = self._sender(server_round, reply, outcome, "train", replied)
            if cid is None:
                continue
            report = self._take_report(server_round, cid, reply, outcome, reports, "train")
            if report is None:
                continue
            metrics = reply.content.metric_records[METRICS_RECORD]
            arrays = reply.content.array_records.get(ARRAYS_RECORD)
            try:
                within = TrainReply.within_clip_in(metrics)
                problem = update_problem(arrays, shapes)
            except MessageError as error:
                problem = str(error)
            if problem is not None:
                self._bad_reply(server_round, outcome, cid, "train", f"update rejected: {problem}")
                outcome.rejected.append(cid)
                trained_only.append(cid)
                continue
            assert arrays is not None
            updates.append(
                ClientUpdate(cid, arrays.to_numpy_ndarrays(), report.num_examples, within)
            )
        if sum(u.num_examples for u in updates) == 0 and self.aggregator is None:
            for update in updates:  # FedAvg weights by examples: no weight, nothing to average
                self._bad_reply(
                    server_round, outcome, update.client_id, "train", "update rejected: 0 examples"
                )
                outcome.rejected.append(update.client_id)
                trained_only.append(update.client_id)
            updates = []
        trained = sorted([u.client_id for u in updates] + trained_only)
        self.privacy.record(server_round, reports, trained=trained)
        outcome.trained = sorted(u.client_id for u in updates)
        if self.aggregator is not None and self.client_level is not None:
            assert self.server_ledger is not None
            # Write-ahead: the release is in the ledger before the noised model exists.
            self.server_ledger.record(server_round, [self.client_level.round_event()])
            aggregate = self.aggregator.aggregate(updates, shapes)
            for cid in aggregate.rejected:
                self._bad_reply(
                    server_round,
                    outcome,
                    cid,
                    "train",
                    f"update rejected: its norm exceeds the clip norm {aggregate.clip_norm_used:g}",
                )
            outcome.rejected = sorted(outcome.rejected + aggregate.rejected)
            outcome.trained = aggregate.aggregated
            outcome.noised_within_fraction = aggregate.noised_within_fraction
            outcome.epsilon_client_level = self.server_ledger.epsilon(self.accountant)
            new_weights = apply_update(current, aggregate.mean_update)
        elif updates:
            new_weights = apply_update(current, weighted_mean_update(updates))
        else:
            new_weights = current
        new_weights = self._finite_or_current(server_round, outcome, current, new_weights)
        return ArrayRecord(new_weights), self._round_metrics(outcome)

    def _sender(
        self,
        server_round: int,
        reply: Message,
        outcome: RoundOutcome,
        stage: str,
        replied: set[int],
    ) -> int | None:
        """The client that sent `reply` (by its node), or None if the reply must be dropped."""
        node = reply.metadata.src_node_id
        cid = self.client_of_node.get(node)
        if cid is None:
            self._bad_reply(server_round, outcome, None, stage, f"a reply from unknown node {node}")
            return None
        if cid in replied:
            self._bad_reply(
                server_round, outcome, cid, stage, "replied more than once; its first reply counts"
            )
            return None
        replied.add(cid)
        return cid

    def _bad_reply(
        self,
        server_round: int,
        outcome: RoundOutcome,
        client: int | None,
        stage: str,
        reason: str,
    ) -> None:
        """Drop a client's reply for this round, with a logged reason kept for results.json."""
        reason = " ".join(reason.split())[:300]
        logger.warning(
            "round %d: dropped the %s reply of client %s: %s", server_round, stage, client, reason
        )
        outcome.bad_replies.append({"client": client, "stage": stage, "reason": reason})

    def _finite_or_current(
        self,
        server_round: int,
        outcome: RoundOutcome,
        current: list[np.ndarray],
        new_weights: list[np.ndarray],
    ) -> list[np.ndarray]:
        """The new weights, or the current ones if the update made any weight NaN or infinite."""
        if all(bool(np.all(np.isfinite(w))) for w in new_weights):
            return new_weights
        logger.warning(
            "round %d: the aggregated update makes the model non-finite; the model is kept",
            server_round,
        )
        outcome.no_update = "the aggregated update made the model non-finite (kept the model)"
        outcome.trained = []
        return current

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
        settings = plan.train_config()
        clip_norm = float(plan.spec.clip_norm)
        counts: dict[int, int] = {}
        reports: list[ClientPrivacy] = []
        trained: list[int] = []
        clipped = 0

        def message(cid: int, stage: str, wire: WireMessage) -> Message:
            if stage == "masked_input":
                largest = max(counts.values())
                weight = 1.0 if self.aggregator is not None else counts[cid] / largest
                secagg_input = SecAggInput(settings, clip_norm, weight)
                content = RecordDict(
                    {
                        ARRAYS_RECORD: arrays,
                        CONFIG_RECORD: config,
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
            return self._message(cid, content, kind, server_round)

        def exchange(
            stage: str, messages: Mapping[int, WireMessage]
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
                if cid is None:
                    self._bad_reply(
                        server_round,
                        outcome,
                        None,
                        stage,
                        f"a reply from unknown node {reply.metadata.src_node_id}",
                    )
                    continue
                if reply.has_error():
                    logger.warning("client %s dropped at '%s': %s", cid, stage, reply.error.reason)
                    if stage == "masked_input":
                        outcome.failed += 1
                        outcome.first_error = outcome.first_error or reply.error.reason
                    continue
                if cid in replied:  # only its first report counts; the protocol drops it
                    answers.append((cid, {}))
                    continue
                replied.add(cid)
                if stage == "masked_input":
                    report = self._take_report(
                        server_round, cid, reply, outcome, reports, "masked_input"
                    )
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

        try:
            result = run_secure_sum(plan, exchange)
            secure = decode_secure_sum(plan, result, [w.shape for w in current])
        except (SecAggError, QuantizationError) as exc:
            self.privacy.record(server_round, reports, trained=sorted(trained))
            self._record_protocol_drops(server_round, outcome, plan)
            self._fail_secure_round(server_round, outcome, str(exc))
            return ArrayRecord(current), self._round_metrics(outcome)
        self.privacy.record(server_round, reports, trained=sorted(trained))
        self._record_protocol_drops(server_round, outcome, plan)
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
        new_weights = self._finite_or_current(
            server_round, outcome, current, apply_update(current, mean)
        )
        return ArrayRecord(new_weights), self._round_metrics(outcome)

    def _take_report(
        self,
        server_round: int,
        cid: int,
        reply: Message,
        outcome: RoundOutcome,
        reports: list[ClientPrivacy],
        stage: str,
    ) -> ClientPrivacy | None:
        """Keep client `cid`'s TRAIN reply's privacy report; None if it declined or is unusable.

        A decline is recorded. An unusable report (no metrics, a missing or malformed value, a
        report naming another client) drops the reply, and the client's ε counts as ∞ until
        its next usable report: it may have trained, and what it spent is unknown.
        """
        metrics = reply.content.metric_records.get(METRICS_RECORD)
        try:
            if metrics is None:
                raise ClientReportError("the reply has no metrics")
            report = client_privacy_of(metrics)
            if report.client_id != cid:
                raise ClientReportError(f"it names client {report.client_id}")
            declined = TrainReply.declined_in(metrics)
        except (ClientReportError, MessageError) as error:
            self.privacy.mark_unknown(server_round, cid, str(error))
            outcome.epsilon_unknown.append(cid)
            self._bad_reply(server_round, outcome, cid, stage, f"unusable privacy report: {error}")
            return None
        reports.append(report)
        if declined:
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
        record = RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: config})
        return [
            self._message(client, record, MessageType.EVALUATE, server_round)
            for client in outcome.trained
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted local accuracy of the clients that evaluated.

        A reply without a whole example count or an accuracy in [0, 1] is dropped (logged, in
        the round's `bad_replies`).
        """
        outcome = self.outcomes.setdefault(server_round, RoundOutcome())
        results: list[tuple[int, float]] = []
        replied: set[int] = set()
        for reply in replies:
            if reply.has_error():
                continue
            cid = self._sender(server_round, reply, outcome, "evaluate", replied)
            if cid is None:
                continue
            metrics = reply.content.metric_records.get(METRICS_RECORD)
            try:
                if metrics is None:
                    raise MessageError("the reply has no metrics")
                evaluated = EvaluateReply.from_metrics(metrics)
                results.append((evaluated.num_examples, evaluated.accuracy))
            except MessageError as error:
                self._bad_reply(server_round, outcome, cid, "evaluate", str(error))
        total = sum(count for count, _ in results)
        if total == 0:
            self.last_local_accuracy = None
            return None
        accuracy = sum(count * value for count, value in results) / total
        self.last_local_accuracy = accuracy
        return MetricRecord({"accuracy": accuracy})

    # -- round outcomes ------------------------------------------------------------------------

    def close_round(self, server_round: int) -> None:
        """Settle a round: why no update reached the model, misbehaviour streaks, exclusions.

        A client sampled in `BAD_ROUNDS_TO_EXCLUDE` rounds in a row, each with a bad reply from
        it, is excluded from sampling; a sampled round without one resets its count. Rounds
        that charge some client's privacy but change the model with no client's update count
        towards `FRUITLESS_ROUNDS_TO_STOP`; a round with an aggregated update, or one after
        which a client was excluded (which may have removed the cause), resets that count.
        """
        outcome = self.outcomes.setdefault(server_round, RoundOutcome())
        if not outcome.trained and outcome.no_update is None:
            outcome.no_update = self._why_no_update(outcome)
        offenders = {b["client"] for b in outcome.bad_replies if isinstance(b["client"], int)}
        for cid in sorted(set(outcome.sampled) | offenders):
            if cid not in offenders:
                self.bad_streak.pop(cid, None)
                continue
            self.bad_streak[cid] = self.bad_streak.get(cid, 0) + 1
            if self.bad_streak[cid] >= BAD_ROUNDS_TO_EXCLUDE and cid not in self.excluded:
                last = next(b for b in reversed(outcome.bad_replies) if b["client"] == cid)
                reason = (
                    f"a bad reply in {self.bad_streak[cid]} rounds in a row "
                    f"(last: {last['stage']}: {last['reason']})"
                )
                self.excluded[cid] = (server_round, reason)
                outcome.excluded.append(cid)
                logger.warning(
                    "client %d is excluded from sampling after round %d: %s",
                    cid,
                    server_round,
                    reason,
                )
        charged = self.privacy.clients_trained(server_round) > 0 or bool(outcome.epsilon_unknown)
        if outcome.trained or outcome.excluded:  # an exclusion may have removed the cause
            self.fruitless_streak = 0
        elif charged:
            self.fruitless_streak += 1

    @staticmethod
    def _why_no_update(outcome: RoundOutcome) -> str:
        """One line: why no client's update was aggregated in a round."""
        if not outcome.sampled:
            return "no client was sampled"
        parts = []
        secure = outcome.secure_aggregation or {}
        if secure.get("status") == "failed":
            parts.append(f"the secure sum failed: {secure.get('reason')}")
        rejected = [b for b in outcome.bad_replies if b["stage"] in ("train", "masked_input")]
        if rejected:
            first = rejected[0]
            parts.append(
                f"{len(rejected)} train repl{'y' if len(rejected) == 1 else 'ies'} dropped "
                f"(client {first['client']}: {first['reason']})"
            )
        if outcome.failed:
            first_error = " ".join(str(outcome.first_error or "").split())[:160]
            parts.append(
                f"{outcome.failed} client{'s' if outcome.failed > 1 else ''} failed"
                + (f" (first: {first_error})" if first_error else "")
            )
        if outcome.declined:
            parts.append(f"{len(outcome.declined)} declined (budget)")
        if not parts:
            parts.append(f"none of the {len(outcome.sampled)} sampled clients replied in time")
        return "; ".join(parts)

    # -- checkpoint --------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, object]:
        """What the round loop needs to go on after a restart (JSON-ready)."""
        state: dict[str, object] = {
            "declined_at": {str(c): r for c, r in self.declined_at.items()},
            "sampling_rng": generator_state(self.sampling_rng),
            "privacy": self.privacy.to_state(),
            "bad_streak": {str(c): n for c, n in self.bad_streak.items()},
            "excluded": {str(c): [r, why] for c, (r, why) in self.excluded.items()},
            "fruitless_streak": self.fruitless_streak,
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
        streaks = state.get("bad_streak", {})
        excluded = state.get("excluded", {})
        assert isinstance(streaks, dict) and isinstance(excluded, dict)
        self.bad_streak = {int(c): int(n) for c, n in streaks.items()}
        self.excluded = {int(c): (int(r), str(why)) for c, (r, why) in excluded.items()}
        self.fruitless_streak = int(state.get("fruitless_streak", 0))  # type: ignore[call-overload]
        if self.aggregator is not None:
            saved = state["aggregator"]
            assert isinstance(saved, dict)
            self.aggregator.clip_norm = float(saved["clip_norm"])
            restore_generator(self.aggregator._rng, saved["rng"])  # noqa: SLF001

    # -- the round loop ------------------------------------------------------------------------

    def failure_before(self, server_round: int) -> str | None:
        """Why the run fails before `server_round` (it cannot usefully go on), or None."""
        if self.fruitless_streak >= FRUITLESS_ROUNDS_TO_STOP:
            last = self.outcomes.get(server_round - 1)
            why = (
                f" (round {server_round - 1}: {last.no_update})" if last and last.no_update else ""
            )
            return (
                f"{self.fruitless_streak} rounds in a row charged clients' privacy but no client "
                f"update reached the model{why}"
            )
        if self.excluded and self.client_of_node:
            left = set(self.client_of_node.values()) - set(self.declined_at) - set(self.excluded)
            if not left:
                declined = (
                    f", {len(self.declined_at)} declined (budget)" if self.declined_at else ""
                )
                return (
                    f"no client is left to sample: {len(self.excluded)} excluded for bad replies "
                    f"(clients {_ids(self.excluded)}){declined}"
                )
        return None

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
            self.failure_reason = self.failure_before(server_round)
            if self.failure_reason is not None:
                self.stop_reason = self.failure_reason
                logger.error("stopping before round %d: %s", server_round, self.failure_reason)
                break
            self.stop_reason = self.stop_reason_before(server_round)
            if self.stop_reason is not None:
                logger.warning("stopping before round %d: %s", server_round, self.stop_reason)
                break
            round_config = ConfigRecord(dict(train_config or {}))
            new_arrays: ArrayRecord | None
            train_metrics: MetricRecord | None
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
            self.close_round(server_round)
            if evaluate_fn is not None:
                metrics = evaluate_fn(server_round, arrays)
                if metrics is not None:
                    result.evaluate_metrics_serverapp[server_round] = metrics
        result.arrays = arrays
        return result


def _ids(clients: Iterable[int]) -> str:
    """Client ids for a one-line message (the first ten, then a count)."""
    ordered = sorted(clients)
    text = ", ".join(map(str, ordered[:10]))
    return text + (f" and {len(ordered) - 10} more" if len(ordered) > 10 else "")


def _claimed_client(reply: Message) -> int | None:
    """The client id a node's QUERY reply names, or None when it names no usable one."""
    for record in reply.content.metric_records.values():
        try:
            return IdentityReply.from_metrics(record).client_id
        except MessageError:
            continue
    return None


def _warn_if_deployment(grid: Grid) -> None:
    """Say so when a deployment admits every node the SuperLink lets in (no node-clients)."""
    # A deployment's ServerApp talks to the SuperLink through Flower's HttpGrid; its module is then
    # loaded already (looked up, not imported: importing it would cost a simulation ~2 s).
    http_grid = getattr(sys.modules.get("flwr.superlink.grid.http_grid"), "HttpGrid", None)
    if http_grid is not None and isinstance(grid, http_grid):
        logger.warning(
            "node-clients is not set: every node the SuperLink lets in is asked for its client id "
            "and may train; in a deployment list the partners' nodes "
            "(node-clients='NODE_ID=CLIENT_ID,...')"
        )
