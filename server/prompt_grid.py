"""Replies picked up as they arrive: a deployment's Grid that polls the SuperLink with back-off.

Flower's `HttpGrid.send_and_receive` (the grid of every `flwr run`, deployed or on the simulation
runtime) looks for replies every 3 s, so each exchange of a round waits 1.5 s on average after
its last reply came, and a secure round has five exchanges. `PromptGrid` wraps such a grid and
looks after 0.1 s, then backs off by half each time up to 0.5 s: a quick exchange ends almost at
once, and a long one (local training) ends at most 0.5 s after its last reply, for at most two
light requests a second to the SuperLink while the ServerApp waits. Everything else
(pushing, pulling, nodes, the run) is the wrapped grid's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

FIRST_POLL_S = 0.1
"""The first wait before looking for replies."""
BACKOFF = 1.5
"""Each later wait is this much longer than the one before..."""
LONGEST_POLL_S = 0.5
"""...up to this (Flower's own loop waits 3 s between looks)."""


def is_http_grid(grid: Grid) -> bool:
    """Whether `grid` is Flower's HttpGrid (the grid of `flwr run`, deployed or simulated).

    Its module is looked up, not imported: importing it would cost a simulation about 2 s, and a
    process that has an HttpGrid has loaded it.
    """
    http_grid = getattr(sys.modules.get("flwr.superlink.grid.http_grid"), "HttpGrid", None)
    return http_grid is not None and isinstance(grid, http_grid)


class PromptGrid(Grid):
    """`grid` with a `send_and_receive` that polls for replies with back-off."""

    def __init__(self, grid: Grid) -> None:
        self.wrapped = grid

    def set_run(self, run: Run) -> None:
        self.wrapped.set_run(run)

    @property
    def run(self) -> Run:
        return self.wrapped.run

    def create_message(  # noqa: PLR0913 (Flower's signature)
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.wrapped.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.wrapped.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.wrapped.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.wrapped.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push `messages`, then pull their replies until all came or `timeout` s passed.

        As Flower's: with `timeout` None it waits for every reply; with 0 it pulls once.
        """
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        pause = FIRST_POLL_S
        while waiting:
            received = list(self.pull_messages(waiting))
            replies.extend(received)
            waiting.difference_update(m.metadata.reply_to_message_id for m in received)
            if not waiting:
                break
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * BACKOFF, LONGEST_POLL_S)
        return replies
