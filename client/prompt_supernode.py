"""Flower's `flower-supernode`, asking the SuperLink for messages promptly while a run is active.

Why: Flower 1.42's SuperNode loop (`flwr.supernode.start_client_internal`) sleeps a fixed 3 s after
every empty ask for a message, and 0.5 s between looks for a finished reply. A secure-aggregation
round is four messages in a row per node, each waiting up to 3 s before the node even sees it, so a
deployed round spends most of its time asleep (issue 14 measured 40 s a round against 2.6 s for a
whole run in process). Neither pause is configurable in 1.42.

What: this module runs Flower's own SuperNode entry point unchanged, with one difference: the
`time` module that loop sees is a `PromptClock`, which turns the idle 3 s pause into a short one
(PROMPT_S, growing by half per empty ask up to ACTIVE_PAUSE_S) for ACTIVE_S after the node last
handled a message, and back to Flower's 3 s when it has been idle that long; and looks for a
finished reply every REPLY_LOOK_S instead of 0.5 s. An idle node therefore asks the SuperLink
exactly as often as Flower's does; an active one asks up to 1/PROMPT_S times a second, and at
least every ACTIVE_PAUSE_S (the server's next message of a round, after its aggregation and
evaluation, is seen within that).

The SuperNode lists a message for its ClientApp before it has pulled the message's objects from
the SuperLink, and pulls them with Flower's back-off (a first retry after 1 s when the ServerApp
has not finished pushing them); `main` also makes those pulls prompt (`task.flower_pulls`), as a
message's process and the ServerApp already do.

The clock is installed only where the loop still reads the `time` module under that name in
flwr 1.42.0 (checked at start; otherwise the SuperNode runs with Flower's pauses and says so).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

FLOWER_VERSION = "1.42.0"
"""The flwr release whose SuperNode loop this was written against."""
IDLE_PAUSE_S = 3.0
"""Flower's pause after an empty ask for a message (start_client_internal)."""
REPLY_PAUSE_S = 0.5
"""Flower's pause between looks for a finished reply (start_client_internal)."""
PROMPT_S = 0.1
REPLY_LOOK_S = 0.05
ACTIVE_PAUSE_S = 0.5
ACTIVE_S = 60.0


@dataclass
class PromptClock:
    """The `time` module, except for the two pauses of Flower's SuperNode loop (see module doc)."""

    last_active: float = field(default_factory=lambda: -float("inf"))
    pause: float = PROMPT_S

    def sleep(self, seconds: float) -> None:
        """Flower's pauses, shortened while active; any other sleep as asked."""
        now = time.monotonic()
        if seconds == REPLY_PAUSE_S:  # a message is being handled
            self.last_active, self.pause = now, PROMPT_S
            time.sleep(REPLY_LOOK_S)
        elif seconds == IDLE_PAUSE_S and now - self.last_active < ACTIVE_S:
            time.sleep(self.pause)
            self.pause = min(ACTIVE_PAUSE_S, self.pause * 1.5)
        else:
            time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def install_prompt_clock() -> PromptClock | None:
    """Give Flower's SuperNode loop a PromptClock; None (and a warning) where the loop differs."""
    import flwr
    from flwr.supernode import start_client_internal as loop

    if flwr.__version__ != FLOWER_VERSION or getattr(loop, "time", None) is not time:
        print(
            f"privet node: flwr {flwr.__version__}'s SuperNode loop is not the one this was "
            f"written for ({FLOWER_VERSION}); it keeps Flower's own pauses",
            file=sys.stderr,
            flush=True,
        )
        return None
    clock = PromptClock()
    loop.time = clock  # type: ignore[assignment]  # duck-typed: the loop calls .sleep only
    return clock


def make_prompt() -> None:
    """Install the PromptClock and prompt object pulls in this (the SuperNode's) process."""
    from privet.task.flower_pulls import FLOWER_VERSION as PULLS_VERSION
    from privet.task.flower_pulls import prompt_object_pulls

    install_prompt_clock()
    if not prompt_object_pulls():
        print(
            f"privet node: this flwr is not {PULLS_VERSION}; the SuperNode's object pulls keep "
            "Flower's back-off (1 s and up)",
            file=sys.stderr,
            flush=True,
        )


def main() -> None:
    """`python -m privet.client.prompt_supernode FLOWER_SUPERNODE_FLAGS...`."""
    from flwr.supernode.cli.flower_supernode import flower_supernode

    make_prompt()
    sys.argv[0] = "flower-supernode"  # Flower names the process by it (usage, exit messages)
    flower_supernode()


if __name__ == "__main__":
    main()
