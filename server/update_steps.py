"""How a round collects the clients' updates: a strategy part, and the plain (non-secure) one.

An aggregation step sends the sampled clients their work, gathers their replies, records every
privacy report in the round book (a client that trained has spent privacy whatever happens to its
update), and hands what it collected to the release part (`server.update_release`), which returns
the update the model takes. The round loop (`server.strategy.PrivetFedAvg.start`) is the same for
every step; secure aggregation is `server.secure_round.SecureAggregation`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from privet.server.aggregation import ClientUpdate
from privet.server.federation_privacy import ClientPrivacy
from privet.server.round_book import RoundBook
from privet.server.update_release import UpdateRelease
from privet.task.messages import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    METRICS_RECORD,
    MessageError,
    TrainReply,
)


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


@dataclass(frozen=True)
class TrainRound:
    """One round's training as the round loop hands it to an aggregation step."""

    server_round: int
    arrays: ArrayRecord
    config: ConfigRecord
    grid: Grid
    timeout: float
    sample_next: Callable[[], list[int]] | None = None
    """Samples the next round's clients now (None: this is the last round). A step that folds the
    next round's first stages into this round's exchanges calls it once; the next round then
    trains the clients drawn here that are still active."""


class AggregationStep(ABC):
    """Collects a round's updates from the sampled clients and has the release part release them."""

    min_clients: int = 1
    """The fewest admitted clients a run with this step can work with."""

    @abstractmethod
    def run(
        self, book: RoundBook, release: UpdateRelease, train: TrainRound
    ) -> list[np.ndarray] | None:
        """The update the model takes this round, or None when it stays as it is.

        The round's sampled clients are in `book.outcome(train.server_round).sampled`.
        """


class PlainAggregation(AggregationStep):
    """Each sampled client gets a TRAIN message and replies with its update in the clear."""

    def messages(self, book: RoundBook, train: TrainRound) -> list[Message]:
        """The TRAIN messages of the round's sampled clients (the global model and instructions)."""
        record = RecordDict({ARRAYS_RECORD: train.arrays, CONFIG_RECORD: train.config})
        book.outcome(train.server_round).bytes_down = train.arrays.count_bytes()
        return [
            book.message(client, record, MessageType.TRAIN, train.server_round)
            for client in book.outcome(train.server_round).sampled
        ]

    def run(
        self, book: RoundBook, release: UpdateRelease, train: TrainRound
    ) -> list[np.ndarray] | None:
        messages = self.messages(book, train)
        replies = train.grid.send_and_receive(messages, timeout=train.timeout) if messages else []
        shapes = [tuple(a.shape) for a in train.arrays.to_numpy_ndarrays()]
        return self.release(book, release, train.server_round, replies, shapes)

    def release(
        self,
        book: RoundBook,
        release: UpdateRelease,
        server_round: int,
        replies: Iterable[Message],
        shapes: list[tuple[int, ...]],
    ) -> list[np.ndarray] | None:
        """Judge the replies, record the privacy they report, and release the usable updates.

        A reply that cannot be used drops its client from the round (`bad_replies`), never the
        run (see `server.strategy`).
        """
        outcome = book.outcome(server_round)
        updates: list[ClientUpdate] = []
        trained_only: list[int] = []  # trained (privacy spent) but their update was rejected
        reports: list[ClientPrivacy] = []
        replied: set[int] = set()
        for reply in replies:
            if reply.has_error():
                book.client_failed(server_round, reply, "train")
                continue
            cid = book.sender(server_round, reply, "train", replied)
            if cid is None:
                continue
            report = book.take_report(server_round, cid, reply, reports, "train")
            if report is None:
                continue
            metrics = reply.content.metric_records[METRICS_RECORD]
            arrays = reply.content.array_records.get(ARRAYS_RECORD)
            try:
                within = TrainReply.within_clip_in(metrics)
                problem = update_problem(arrays, shapes)
            except MessageError as error:
                problem = str(error)
            if arrays is not None:
                outcome.bytes_up.append(arrays.count_bytes())
            if problem is not None:
                book.bad_reply(server_round, cid, "train", f"update rejected: {problem}")
                outcome.rejected.append(cid)
                trained_only.append(cid)
                continue
            assert arrays is not None
            updates.append(
                ClientUpdate(cid, arrays.to_numpy_ndarrays(), report.num_examples, within)
            )
        trained = sorted([u.client_id for u in updates] + trained_only)
        book.privacy.record(server_round, reports, trained=trained)
        outcome.trained = sorted(u.client_id for u in updates)
        return release.release_updates(book, server_round, updates, shapes)
