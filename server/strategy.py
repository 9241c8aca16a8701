"""Privet's FedAvg: Flower's strategy, built from parts, with privacy budgets and Poisson sampling.

It is a `flwr.serverapp.strategy.FedAvg` so Flower users can drive it like any strategy. A round is
always the same loop (`PrivetFedAvg.start`): sample the clients, run the aggregation step, have
the release part turn what it collected into one update, let the server optimizer apply it,
evaluate, and settle the round. The parts combine freely:

- aggregation step (`server.update_steps`): `PlainAggregation` (updates in the clear) or
  `server.secure_round.SecureAggregation` (SecAgg+: only their sum);
- release (`server.update_release`): `FedAvgRelease` (example-weighted mean) or
  `ClientLevelRelease` (DP-FedAvg: clipping, Gaussian noise, the server's ledger);
- server optimizer (`server.server_optimizer`): `ServerSGD` (FedAvg's step; room for FedAdam);
- client sampling (`server.sampling.ClientSampler`): Poisson or fixed size.

They share no state but the round book (`server.round_book.RoundBook`), handed to each explicitly.
The round loop stops before a round that would exceed the client-level budget, and when every
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
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from privet.server.checkpoint import generator_state, restore_generator
from privet.server.federation_privacy import ClientReportError, FederationPrivacy
from privet.server.prompt_grid import PromptGrid, is_http_grid
from privet.server.round_book import RoundBook, RoundOutcome, error_text
from privet.server.sampling import ClientSampler
from privet.server.server_optimizer import ServerOptimizer, ServerSGD
from privet.server.update_release import FedAvgRelease, UpdateRelease
from privet.server.update_steps import (
    AggregationStep,
    PlainAggregation,
    TrainRound,
    update_problem,
)
from privet.task.messages import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    METRICS_RECORD,
    NUM_EXAMPLES,
    EvaluateReply,
    IdentityQuery,
    IdentityReply,
    MessageError,
    TrainInstructions,
)

__all__ = [
    "BAD_ROUNDS_TO_EXCLUDE",
    "FRUITLESS_ROUNDS_TO_STOP",
    "PrivetFedAvg",
    "RoundOutcome",
    "update_problem",
]

logger = logging.getLogger(__name__)

WEIGHT_KEY = NUM_EXAMPLES
"""The metric FedAvg weights a client's update by (its example count)."""
BAD_ROUNDS_TO_EXCLUDE = 3
"""A client that sends a bad reply in this many rounds in a row is excluded from sampling."""
FRUITLESS_ROUNDS_TO_STOP = 3
"""This many rounds in a row that charge clients' privacy without changing the model end the run."""


class PrivetFedAvg(FedAvg):
    """FedAvg over sampled clients, from an aggregation step, a release and a server optimizer."""

    def __init__(
        self,
        privacy: FederationPrivacy,
        *,
        sampler: ClientSampler,
        release: UpdateRelease | None = None,
        aggregation: AggregationStep | None = None,
        optimizer: ServerOptimizer | None = None,
        min_trained: int | None = None,
        local_evaluation: str = "every-round",
    ) -> None:
        super().__init__(weighted_by_key=WEIGHT_KEY, min_available_nodes=1)
        self.local_evaluation = local_evaluation
        """When the clients that trained evaluate the new model (run setting local-evaluation)."""
        self.last_round: int | None = None
        """The run's last round, known once `start` runs (for local-evaluation last-round)."""
        self.min_trained = min_trained
        """The fewest clients whose updates must reach the model in a round (run setting)."""
        self.too_few_trained: str | None = None
        self.book = RoundBook(privacy)
        self.sampler = sampler
        self.presampled: dict[int, list[int]] = {}
        """Rounds whose clients were drawn a round early (`presample`), not yet started."""
        self.release = release if release is not None else FedAvgRelease()
        self.aggregation = aggregation if aggregation is not None else PlainAggregation()
        self.optimizer = optimizer if optimizer is not None else ServerSGD()
        self.refused_nodes: dict[int, str] = {}  # node id -> why it was kept out
        self.data_notes: dict[int, str] = {}  # client id -> what its data lacks
        self.stop_reason: str | None = None
        self.failure_reason: str | None = None
        self.bad_streak: dict[int, int] = {}
        self.excluded: dict[int, tuple[int, str]] = {}
        self.fruitless_streak = 0
        self.last_local_accuracy: float | None = None
        self._current: ArrayRecord | None = None

    # -- the round book, as Flower users and results.json read it -------------------------------

    @property
    def privacy(self) -> FederationPrivacy:
        """Every client's example-level privacy, as reported round by round."""
        return self.book.privacy

    @property
    def client_of_node(self) -> dict[int, int]:
        """Admitted node id -> the client (data shard) it holds."""
        return self.book.client_of_node

    @client_of_node.setter
    def client_of_node(self, mapping: dict[int, int]) -> None:
        self.book.client_of_node = mapping

    @property
    def declined_at(self) -> dict[int, int]:
        """Client id -> the round it declined in for lack of example-level budget."""
        return self.book.declined_at

    @property
    def outcomes(self) -> dict[int, RoundOutcome]:
        """Round -> what happened in it (for results.json)."""
        return self.book.outcomes

    # -- discovery and sampling -------------------------------------------------------------

    def discover_clients(
        self,
        grid: Grid,
        expected: int,
        timeout: float,
        node_clients: Mapping[int, int] | None = None,
        schema_digest: str | None = None,
        backbone_digest: str | None = None,
    ) -> None:
        """Ask the nodes which client (data shard) each is, so sampling can be reproducible.

        ``schema_digest`` (a tabular run's schema) and ``backbone_digest`` (the frozen tensors of
        a fine-tuning run) go with the question: a node that encodes its own file with another
        schema, or holds another backbone, answers with an error and is refused, naming the fix.

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
            connected = set(grid.get_node_ids())
            for node in sorted(connected - set(allowed)):
                self._refuse(node, "it is not in node-clients (not contacted, never sampled)")
            for node in sorted(set(allowed) - connected):
                self._refuse(
                    node,
                    f"listed in node-clients as client {allowed[node]} but not connected within "
                    f"{timeout:g} s (round-timeout)",
                )
        node_ids = admissible()
        needed = self.aggregation.min_clients
        if len(node_ids) < needed:
            raise TimeoutError(
                f"only {len(node_ids)} of {wanted} nodes came within {timeout:g} s; start the "
                "nodes (privet node), check node-clients, or raise round-timeout"
            )
        if len(node_ids) < wanted:
            logger.warning(
                "%d of %d nodes came within %g s; going on with them",
                len(node_ids),
                wanted,
                timeout,
            )
        query = IdentityQuery(schema_digest, backbone_digest).to_config()
        messages = [
            Message(
                content=RecordDict({CONFIG_RECORD: ConfigRecord(dict(query))})
                if query
                else RecordDict(),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node in node_ids
        ]
        claims: dict[int, list[int]] = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._refuse(node, f"it failed to say who it is: {error_text(reply.error.reason)}")
                continue
            identity = _identity(reply)
            client = None if identity is None else identity.client_id
            present = None if identity is None else identity.classes_present
            if client is not None and present is not None and present < 2:
                self.data_notes[client] = (
                    f"client {client}'s training rows hold {present} class(es) of the run's labels"
                )
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
            self.book.client_of_node[nodes[0]] = client
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

    def left_out(self) -> dict[int, str]:
        """Nodes that took no part in the run, with why (results.json's `left_out`)."""
        admitted = set(self.client_of_node)
        return {node: why for node, why in self.refused_nodes.items() if node not in admitted}

    def sample_round(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid | None
    ) -> RoundOutcome:
        """Sample the round's clients among those that have not declined, nor been excluded.

        Adds the round's instructions (round number, client-level clip norm, run token) to `config`.
        """
        self._current = arrays
        outcome = self.book.outcome(server_round)
        active = self._active(grid)
        drawn = self.presampled.pop(server_round, None)
        if drawn is not None:  # drawn a round ahead: those of them still active train
            outcome.sampled = [c for c in drawn if c in active]
        else:
            outcome.sampled = self.sampler.sample(active)
        clip_norm = self.release.clip_norm
        # The run token lets each node tell this run's ledger entries from earlier runs'.
        instructions = TrainInstructions(server_round, clip_norm, run_token=self.privacy.run_token)
        config.update(instructions.to_config())
        if clip_norm is not None:
            outcome.clip_norm = clip_norm
        return outcome

    def _active(self, grid: Grid | None) -> list[int]:
        """The clients that can be sampled now: admitted, not declined, not excluded, online."""
        # Nodes the SuperLink has lost are not sampled (a grid-less caller samples them all).
        online = set(grid.get_node_ids()) if grid is not None else set(self.client_of_node)
        return [
            c
            for node, c in sorted(self.client_of_node.items(), key=lambda item: item[1])
            if c not in self.declined_at and c not in self.excluded and node in online
        ]

    def presample(self, server_round: int, grid: Grid | None) -> list[int]:
        """Draw `server_round`'s clients now, a round early (for stage folding).

        The draw is the one `sample_round` would make (same sampler, same generator, in round
        order), over the clients active now; when the round comes, those still active train. It
        is kept in checkpoints, so a resumed run trains the clients an uninterrupted one would.
        """
        if server_round not in self.presampled:
            self.presampled[server_round] = self.sampler.sample(self._active(grid))
        return list(self.presampled[server_round])

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's API for a plain round: sample, and the TRAIN messages with the global model.

        A secure round is not one exchange of TRAIN messages: it runs through `train_round`
        (as `start` does), which uses the strategy's aggregation step.
        """
        self.sample_round(server_round, arrays, config, grid)
        train = TrainRound(server_round, arrays, config, grid, timeout=0.0)
        return PlainAggregation().messages(self.book, train)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's API for a plain round: the replies' updates, released, into the next model."""
        assert self._current is not None
        current = self._current.to_numpy_ndarrays()
        shapes = [tuple(w.shape) for w in current]
        update = PlainAggregation().release(self.book, self.release, server_round, replies, shapes)
        return self._next_model(server_round, current, update)

    def train_round(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        timeout: float,
    ) -> tuple[ArrayRecord, MetricRecord]:
        """One round's training with the strategy's parts: sample, aggregate, release, step."""
        self.sample_round(server_round, arrays, config, grid)
        following = server_round + 1

        def sample_next() -> list[int]:
            return self.presample(following, grid)

        last = self.last_round is not None and server_round >= self.last_round
        train = TrainRound(
            server_round, arrays, config, grid, timeout, None if last else sample_next
        )
        update = self.aggregation.run(self.book, self.release, train)
        return self._next_model(server_round, arrays.to_numpy_ndarrays(), update)

    def _next_model(
        self, server_round: int, current: list[np.ndarray], update: list[np.ndarray] | None
    ) -> tuple[ArrayRecord, MetricRecord]:
        """The server optimizer's step on the released update (no update: the model stays)."""
        new_weights = current if update is None else self.optimizer.step(current, update)
        new_weights = self._finite_or_current(server_round, current, new_weights)
        return ArrayRecord(new_weights), self.book.round_metrics(server_round)

    def _finite_or_current(
        self,
        server_round: int,
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
        outcome = self.book.outcome(server_round)
        outcome.no_update = "the aggregated update made the model non-finite (kept the model)"
        outcome.trained = []
        return current

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Local evaluation on the clients that trained this round (held-out examples only).

        Every round, only after the last one, or never (`local_evaluation`): in a deployment each
        evaluation is one more exchange through the SuperLink.
        """
        if self.local_evaluation == "never" or (
            self.local_evaluation == "last-round" and server_round != self.last_round
        ):
            return []
        outcome = self.outcomes.get(server_round, RoundOutcome())
        record = RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: config})
        return [
            self.book.message(client, record, MessageType.EVALUATE, server_round)
            for client in outcome.trained
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted local accuracy of the clients that evaluated.

        A reply without a whole example count or an accuracy in [0, 1] is dropped (logged, in
        the round's `bad_replies`).
        """
        results: list[tuple[int, float]] = []
        replied: set[int] = set()
        for reply in replies:
            if reply.has_error():
                continue
            cid = self.book.sender(server_round, reply, "evaluate", replied)
            if cid is None:
                continue
            metrics = reply.content.metric_records.get(METRICS_RECORD)
            try:
                if metrics is None:
                    raise MessageError("the reply has no metrics")
                evaluated = EvaluateReply.from_metrics(metrics)
                results.append((evaluated.num_examples, evaluated.accuracy))
            except MessageError as error:
                self.book.bad_reply(server_round, cid, "evaluate", str(error))
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
        outcome = self.book.outcome(server_round)
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
        if self.min_trained is not None and self.too_few_trained is None:
            reached = len(outcome.trained) if outcome.no_update is None else 0
            if reached < self.min_trained:
                why = f": {outcome.no_update}" if outcome.no_update else ""
                failures = "; ".join(
                    f"client {f['client']} failed at {f['stage']}: {f['reason']}"
                    for f in outcome.failures[:3]
                )
                self.too_few_trained = (
                    f"round {server_round}: {reached} client update"
                    f"{'' if reached == 1 else 's'} reached the model, fewer than min-trained "
                    f"{self.min_trained}{why}" + (f" ({failures})" if failures and not why else "")
                )
                logger.error("%s", self.too_few_trained)
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
        """What the round loop and its parts need to go on after a restart (JSON-ready)."""
        state: dict[str, object] = {
            "declined_at": {str(c): r for c, r in self.declined_at.items()},
            "sampling_rng": generator_state(self.sampler.rng),
            "privacy": self.privacy.to_state(),
            "bad_streak": {str(c): n for c, n in self.bad_streak.items()},
            "excluded": {str(c): [r, why] for c, (r, why) in self.excluded.items()},
            "fruitless_streak": self.fruitless_streak,
        }
        if self.presampled:
            state["presampled"] = {str(r): list(c) for r, c in self.presampled.items()}
        state.update(self.release.checkpoint_state())
        optimizer_state = self.optimizer.checkpoint_state()
        if optimizer_state:
            state["server_optimizer"] = optimizer_state
        return state

    def restore_state(self, state: dict[str, object]) -> None:
        """Continue from `checkpoint_state`'s output (same configuration)."""
        declined = state["declined_at"]
        assert isinstance(declined, dict)
        self.book.declined_at = {int(c): int(r) for c, r in declined.items()}
        restore_generator(self.sampler.rng, state["sampling_rng"])  # type: ignore[arg-type]
        self.privacy.restore(FederationPrivacy.from_state(state["privacy"]))  # type: ignore[arg-type]
        streaks = state.get("bad_streak", {})
        excluded = state.get("excluded", {})
        assert isinstance(streaks, dict) and isinstance(excluded, dict)
        self.bad_streak = {int(c): int(n) for c, n in streaks.items()}
        self.excluded = {int(c): (int(r), str(why)) for c, (r, why) in excluded.items()}
        self.fruitless_streak = int(state.get("fruitless_streak", 0))  # type: ignore[call-overload]
        presampled = state.get("presampled", {})
        assert isinstance(presampled, dict)
        self.presampled = {int(r): [int(c) for c in drawn] for r, drawn in presampled.items()}
        self.release.restore_state(state)
        optimizer_state = state.get("server_optimizer", {})
        assert isinstance(optimizer_state, dict)
        self.optimizer.restore_state(optimizer_state)

    # -- the round loop ------------------------------------------------------------------------

    def failure_before(self, server_round: int) -> str | None:
        """Why the run fails before `server_round` (it cannot usefully go on), or None."""
        if self.too_few_trained is not None:
            return self.too_few_trained
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
        return self.release.stop_reason_before(server_round)

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
        self.last_round = num_rounds
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
            arrays, train_metrics = self.train_round(
                server_round, arrays, round_config, grid, timeout
            )
            result.arrays = arrays
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
        if self.failure_reason is None and self.too_few_trained is not None:  # the last round
            self.failure_reason = self.stop_reason = self.too_few_trained
        return result


def _ids(clients: Iterable[int]) -> str:
    """Client ids for a one-line message (the first ten, then a count)."""
    ordered = sorted(clients)
    text = ", ".join(map(str, ordered[:10]))
    return text + (f" and {len(ordered) - 10} more" if len(ordered) > 10 else "")


def _identity(reply: Message) -> IdentityReply | None:
    """What a node's QUERY reply says it is (client id, classes present), or None when unusable."""
    for record in reply.content.metric_records.values():
        try:
            return IdentityReply.from_metrics(record)
        except MessageError:
            continue
    return None


def _warn_if_deployment(grid: Grid) -> None:
    """Say so when a deployment admits every node the SuperLink lets in (no node-clients)."""
    # A deployment's ServerApp talks to the SuperLink through Flower's HttpGrid; its module is then
    # loaded already (looked up, not imported: importing it would cost a simulation ~2 s).
    if is_http_grid(grid.wrapped if isinstance(grid, PromptGrid) else grid):
        logger.warning(
            "node-clients is not set: every node the SuperLink lets in is asked for its client id "
            "and may train; in a deployment list the partners' nodes "
            "(node-clients='NODE_ID=CLIENT_ID,...')"
        )
