"""A link check: how long one message exchange with every node takes when the nodes do no work.

Why: a deployed round costs its training plus the transport of each of its stages (the ServerApp
pushes to the SuperLink, each node pulls, runs the message, pushes its reply, the ServerApp pulls
it). The training part can be compared with the in-process engine; the transport part depends on
the network, the SuperLink and the machines, and only a bare exchange measures it. With
``link-check N`` (run setting) the server times N exchanges of each of two kinds with all the
admitted nodes before round 1, and puts them in results.json (``link_check``) and the console:

- ``empty``: a message with no content, answered at once (the size of a key-exchange stage);
- ``model``: the current model's arrays out and the same arrays back (the size of a TRAIN stage).

A node answers a link check without reading its data or touching its ledger (no privacy is spent);
its reply carries back only what the server sent. A node that does not answer within the timeout
is counted in ``missing`` (the run goes on: the check measures, it does not admit or refuse).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from privet.task.messages import ARRAYS_RECORD, LINK_CHECK_ACTION

logger = logging.getLogger(__name__)

LINK_CHECK_KINDS = ("empty", "model")


@dataclass(frozen=True)
class LinkCheck:
    """Seconds per exchange (push to last reply) of each kind, over `nodes` nodes."""

    nodes: int
    empty_s: tuple[float, ...]
    model_s: tuple[float, ...]
    model_bytes: int
    """Size of the model's arrays, sent to each node and back in a ``model`` exchange."""
    missing: int
    """Replies that did not come within the timeout (or came back as errors), over all exchanges."""

    @property
    def empty_median_s(self) -> float:
        return statistics.median(self.empty_s)

    @property
    def model_median_s(self) -> float:
        return statistics.median(self.model_s)

    def to_json(self) -> dict[str, object]:
        """results.json's ``link_check``."""
        return {
            "nodes": self.nodes,
            "exchanges": len(self.empty_s),
            "empty_s": [round(s, 4) for s in self.empty_s],
            "model_s": [round(s, 4) for s in self.model_s],
            "empty_median_s": round(self.empty_median_s, 4),
            "model_median_s": round(self.model_median_s, 4),
            "model_bytes": self.model_bytes,
            "missing": self.missing,
        }

    def line(self) -> str:
        """One console line."""
        missing = f"; {self.missing} replies missing" if self.missing else ""
        return (
            f"link check, {len(self.empty_s)} exchanges of each kind with {self.nodes} nodes: "
            f"empty {self.empty_median_s:.3f} s, model ({self.model_bytes / 1e3:.1f} kB each "
            f"way) {self.model_median_s:.3f} s (medians){missing}"
        )


def _exchange(
    grid: Grid, node_ids: Sequence[int], content: RecordDict, timeout: float
) -> tuple[float, int]:
    """Seconds from the push to the last reply, and how many replies were missing or errors."""
    messages = [
        Message(
            content=content,
            dst_node_id=node,
            message_type=f"{MessageType.QUERY}.{LINK_CHECK_ACTION}",
            group_id="link-check",
        )
        for node in node_ids
    ]
    start = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    elapsed = time.monotonic() - start
    good = sum(1 for reply in replies if not reply.has_error())
    return elapsed, len(node_ids) - good


def check_links(
    grid: Grid,
    node_ids: Sequence[int],
    arrays: ArrayRecord,
    exchanges: int,
    timeout: float,
) -> LinkCheck:
    """`exchanges` empty and `exchanges` model-sized exchanges with `node_ids`, alternating."""
    if exchanges < 1 or not node_ids:
        raise ValueError("a link check needs at least one exchange and one node")
    empty: list[float] = []
    model: list[float] = []
    missing = 0
    for _ in range(exchanges):
        seconds, lost = _exchange(grid, node_ids, RecordDict(), timeout)
        empty.append(seconds)
        missing += lost
        seconds, lost = _exchange(grid, node_ids, RecordDict({ARRAYS_RECORD: arrays}), timeout)
        model.append(seconds)
        missing += lost
    size = sum(int(a.nbytes) for a in arrays.to_numpy_ndarrays())
    check = LinkCheck(len(node_ids), tuple(empty), tuple(model), size, missing)
    logger.info(check.line())
    return check
