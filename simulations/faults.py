"""Fault injection for simulations: clients that fail at a chosen message, stage and round.

Real federations lose clients mid-round; a simulation that never does says little about how a
protocol copes. `Dropout` is a Flower client mod: the chosen clients raise instead of answering,
so the server sees exactly what it sees when a node crashes (an error reply, then silence).

With secure aggregation's stage folding, round r + 1's advertise-keys and share-keys stages ride
in round r's TRAIN and unmask messages (`server.secure_aggregation.KeysAhead`). A dropout at one
of those stages also hits that part of the carrying message: the part is taken out before the
client sees it, so the client answers its own round and sends nothing for the next one, which is
what a client whose next-round part fails sends (`client.app.advertise_ahead`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flwr.app import Context, Message

from privet.privacy.secagg.wire import NEXT_INPUT_KEY, NEXT_RECORD_KEY, STAGE_ACTIONS

FOLDED_PARTS = {
    f"query.{STAGE_ACTIONS['advertise_keys']}": ("train", NEXT_INPUT_KEY),
    f"query.{STAGE_ACTIONS['share_keys']}": (f"query.{STAGE_ACTIONS['unmask']}", NEXT_RECORD_KEY),
}
"""A folded stage's message type -> (the message type that carries it a round early, the key)."""


class InjectedDropoutError(RuntimeError):
    """Raised by a client that `Dropout` makes fail."""


@dataclass(frozen=True)
class Dropout:
    """Make ``clients`` fail on messages of ``message_type`` in ``rounds`` (every round if None).

    ``message_type`` is Flower's, e.g. ``"train"`` or ``"query.secagg_share_keys"`` (the masked
    input travels in the TRAIN reply); the round is the message's group id, which Privet's
    server sets to the round number.
    """

    message_type: str
    clients: frozenset[int]
    rounds: frozenset[int] | None = None

    @classmethod
    def at(
        cls, message_type: str, clients: Iterable[int], rounds: Iterable[int] | None = None
    ) -> Dropout:
        """A dropout from plain iterables."""
        return cls(message_type, frozenset(clients), None if rounds is None else frozenset(rounds))

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        """Fail if this client, message type and round are chosen; else pass the message on."""
        client = int(context.node_config.get("partition-id", -1))
        group = msg.metadata.group_id
        if client not in self.clients:
            return call_next(msg, context)
        server_round = int(group) if group.isdigit() else None
        kind = msg.metadata.message_type
        if kind == self.message_type and self._in(server_round):
            raise InjectedDropoutError(
                f"client {client} drops out at {self.message_type} in round {group}"
            )
        carrier, key = FOLDED_PARTS.get(self.message_type, (None, ""))
        following = None if server_round is None else server_round + 1
        if kind == carrier and self._in(following) and key in msg.content.config_records:
            del msg.content.config_records[key]  # this client fails the next round's part only
        return call_next(msg, context)

    def _in(self, server_round: int | None) -> bool:
        """Whether the fault applies to a message of ``server_round`` (None: before round 1)."""
        return self.rounds is None or (server_round is not None and server_round in self.rounds)
