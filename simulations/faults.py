"""Fault injection for simulations: clients that fail at a chosen message, stage and round.

Real federations lose clients mid-round; a simulation that never does says little about how a
protocol copes. `Dropout` is a Flower client mod: the chosen clients raise instead of answering,
so the server sees exactly what it sees when a node crashes (an error reply, then silence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flwr.app import Context, Message


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
        in_round = self.rounds is None or (group.isdigit() and int(group) in self.rounds)
        if msg.metadata.message_type == self.message_type and client in self.clients and in_round:
            raise InjectedDropoutError(
                f"client {client} drops out at {self.message_type} in round {group}"
            )
        return call_next(msg, context)
