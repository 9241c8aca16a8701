"""PromptGrid: replies are picked up soon after they arrive, and every wait keeps its bound."""

from __future__ import annotations

import time

from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from privet.server import prompt_grid
from privet.server.prompt_grid import PromptGrid
from privet.simulations.inprocess_engine import InProcessGrid


class SlowNodes(InProcessGrid):
    """Replies become available `delay` seconds after the push; pulls are counted."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.pulls = 0
        self.pushed: dict[str, float] = {}

    def push_messages(self, messages):
        ids = [f"m{len(self.pushed) + index}" for index, _ in enumerate(messages)]
        self.pushed.update(dict.fromkeys(ids, time.monotonic()))
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic()
        ready = []
        for message_id in message_ids:
            if now - self.pushed[message_id] >= self.delay:
                request = Message(content=RecordDict(), dst_node_id=7, message_type="query")
                reply = Message(content=RecordDict(), reply_to=request)
                reply.metadata._reply_to_message_id = message_id  # noqa: SLF001
                ready.append(reply)
        return ready


def messages(count):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    return [Message(content=RecordDict(), dst_node_id=7, message_type="query")] * count


def test_a_quick_reply_is_taken_at_once_not_after_flowers_three_seconds():
    nodes = SlowNodes(delay=0.3)
    started = time.monotonic()
    replies = list(PromptGrid(nodes).send_and_receive(messages(2), timeout=30))
    elapsed = time.monotonic() - started
    assert len(replies) == 2
    assert elapsed < 1.5  # Flower's HttpGrid would look again only after 3 s
    assert nodes.pulls >= 2


def test_polls_back_off_to_flowers_interval_and_the_timeout_is_kept(monkeypatch):
    now = [0.0]
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(prompt_grid.time, "sleep", sleep)
    monkeypatch.setattr(prompt_grid.time, "monotonic", lambda: now[0])
    nodes = SlowNodes(delay=float("inf"))
    replies = list(PromptGrid(nodes).send_and_receive(messages(1), timeout=40))
    assert replies == []
    assert waits[0] == prompt_grid.FIRST_POLL_S
    assert all(b >= a for a, b in zip(waits[:-2], waits[1:-1], strict=True))  # backs off
    assert max(waits) == prompt_grid.LONGEST_POLL_S < 3  # quicker than Flower's own loop (3 s)
    assert abs(sum(waits) - 40) < 1e-9  # waited exactly the timeout, then gave up
    assert nodes.pulls == len(waits) + 1
