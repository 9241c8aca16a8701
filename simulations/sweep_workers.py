"""Several runs of a sweep at once, each in a worker process of its own.

A run trains its clients one after another in one thread, so on a machine with several cores a
sweep is fastest with one run per core. Each run gets a fresh worker process. Where the platform
has it, workers are forked from a fork server that has imported torch, Opacus and Flower but has
run no torch operation: forking the sweep's own process instead can deadlock, because it has
used torch's OpenMP thread pool (planning the runs) and GNU OpenMP does not survive a fork. The
fork server starts once per sweep process; each worker then starts in a fraction of a second.
Elsewhere workers are spawned.

Nothing is shared between workers, so a worker killed at any moment cannot block the parent or
another worker:

- **Reports go through files, one channel folder per worker.** A worker writes each report (a
  finished round, then its outcome) as its own small JSON file, written to a temporary name and
  renamed into place, so the parent only ever sees whole reports. A worker killed mid-write leaves
  at most a temporary file nobody reads. (A `multiprocessing` queue shared by the workers has a
  lock; a worker killed while holding it hung the sweep forever.)
- **The parent never blocks.** It waits on the workers' exit sentinels with a timeout, reads the
  reports that are there, and notices a worker that ended without reporting its outcome (killed,
  out of memory): that run is failed, with a one-line reason in its error.txt. Every join has a
  timeout, after which the worker is terminated, then killed, by its PID.
- **A worker whose parent is gone stops.** Each worker holds the read end of a pipe the parent
  never writes to; at every round it checks, without waiting, whether the pipe has closed. If the
  parent has died (kill -9), the worker stops after the round it finished, leaving the run
  interrupted with a consistent checkpoint instead of writing on beside a later resume.

Stopping is the parent's job: workers ignore SIGINT, and when the sweep is interrupted (Ctrl-C
reaches the whole process group) the parent terminates every running worker by its PID before
it returns. A worker that is killed loses at most the round in progress: every file a run writes
is replaced atomically, and its ledger is written before the update it records leaves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from privet.privacy import atomic_write_text
from privet.server.run_output import ERROR_FILE
from privet.simulations.sweep import (
    ProgressCallback,
    RoundProgress,
    RunOutcome,
    execute_run,
)

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1
"""The longest the parent waits before it looks at the workers' reports again."""
WORKER_PREFIX = "privet-sweep-"  # a worker's process name: the prefix and its run's name
STOP_GRACE_SECONDS = 5.0
"""How long a worker gets to end by itself, then after SIGTERM, then after SIGKILL."""
REPORT_SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"


# What the fork server imports before forking workers (imports only: no torch operation runs).
PRELOAD = [
    "privet.simulations.sweep_workers",
    "privet.simulations.inprocess_engine",
    "privet.client.training_round",
]


def _context() -> BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


# -- a worker's reports --------------------------------------------------------------------------


Report = RoundProgress | RunOutcome


def encode_report(report: Report) -> str:
    """A report as one line of JSON (infinite ε is kept: this JSON never leaves the sweep)."""
    kind = "round" if isinstance(report, RoundProgress) else "outcome"
    return json.dumps({"kind": kind, **dataclasses.asdict(report)})


def decode_report(text: str) -> Report:
    """Inverse of `encode_report`; ValueError for anything else."""
    try:
        data = json.loads(text)
        kind = data.pop("kind")
        if kind == "round":
            return RoundProgress(**data)
        if kind == "outcome":
            return RunOutcome(**data)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"not a sweep worker's report ({error})") from None
    raise ValueError(f"not a sweep worker's report (kind {kind!r})")


class Channel:
    """The sending side of one worker's reports: numbered files, each renamed into place whole."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.sent = 0

    def send(self, report: Report) -> None:
        """Write the next report (an OSError if the folder is gone: nobody is reading)."""
        self.sent += 1
        name = f"{self.sent:08d}"
        temp = self.folder / f".{name}{TEMP_SUFFIX}"
        temp.write_text(encode_report(report))
        os.replace(temp, self.folder / f"{name}{REPORT_SUFFIX}")


class Inbox:
    """The receiving side: reads the reports that are complete, in order, without waiting."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.received = 0

    def receive(self) -> list[Report]:
        """Every report written since the last call (a damaged one is logged and skipped)."""
        reports: list[Report] = []
        while True:
            path = self.folder / f"{self.received + 1:08d}{REPORT_SUFFIX}"
            try:
                text = path.read_text()
            except FileNotFoundError:
                return reports
            self.received += 1
            path.unlink(missing_ok=True)
            try:
                reports.append(decode_report(text))
            except ValueError as error:
                logger.warning("%s: %s", path, error)


class ParentGone(BaseException):  # noqa: N818 (a signal to stop, like KeyboardInterrupt)
    """The sweep that started this worker has ended: stop after the round just finished.

    A BaseException, so that `execute_run` does not record it as the run's failure: the run stays
    interrupted and continues when the sweep is resumed.
    """


def worker_reporter(channel: Channel, lifeline: Any) -> ProgressCallback:
    """The worker's round callback: stop if the parent is gone, else report the round."""

    def report(progress: RoundProgress) -> None:
        if parent_gone(lifeline):
            raise ParentGone
        try:
            channel.send(progress)
        except OSError:
            raise ParentGone from None  # the parent removed the channel: it has stopped

    return report


def parent_gone(lifeline: Any) -> bool:
    """Whether the parent closed its end of the lifeline (it never writes: readable = closed)."""
    try:
        return bool(lifeline.poll(0))
    except (OSError, EOFError):
        return True


def _worker(
    settings: Mapping[str, Any], name: str, engine: str, channel_folder: str, lifeline: Any
) -> None:
    """A worker's life: one run, its rounds and its outcome reported to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    work(settings, name, engine, Channel(channel_folder), lifeline)


def work(
    settings: Mapping[str, Any], name: str, engine: str, channel: Channel, lifeline: Any
) -> None:
    """Run one run, reporting each round and the outcome; stop quietly if the parent is gone."""
    try:
        if parent_gone(lifeline):
            raise ParentGone
        outcome = execute_run(settings, name, engine, worker_reporter(channel, lifeline))
    except ParentGone:
        # Nobody will read the reports: remove them (and the parent's folder of channels, once
        # the last worker has removed its own), as the parent would have.
        shutil.rmtree(channel.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            channel.folder.parent.rmdir()
        return
    try:
        channel.send(outcome)
    except OSError:
        return  # nobody is left to read it; the run's own files say how it ended


# -- the parent ----------------------------------------------------------------------------------


@dataclass
class _Worker:
    """A running worker as the parent sees it."""

    name: str
    process: BaseProcess
    settings: Mapping[str, Any]
    inbox: Inbox
    lifeline: Any  # the parent's (write) end: closing it tells the worker to stop


def run_in_workers(
    jobs_list: Sequence[tuple[Mapping[str, Any], str]],
    engine: str,
    jobs: int,
    on_round: ProgressCallback | None,
    on_outcome: Callable[[RunOutcome], None],
) -> None:
    """Run every (settings, name) with at most `jobs` worker processes, reporting as they go."""
    context = _context()
    todo = list(jobs_list)
    active: dict[str, _Worker] = {}
    channels = Path(tempfile.mkdtemp(prefix="privet-sweep-"))
    try:
        while todo or active:
            while todo and len(active) < jobs:
                settings, name = todo.pop(0)
                active[name] = _start(context, channels, settings, name, engine)
            multiprocessing.connection.wait(
                [worker.process.sentinel for worker in active.values()], timeout=POLL_SECONDS
            )
            for worker in list(active.values()):
                _poll(worker, active, on_round, on_outcome)
    finally:
        for worker in active.values():  # interrupted: every worker is told at once ...
            worker.lifeline.close()
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in active.values():  # ... then each is waited for, a bounded time
            _end(worker, grace=0.0)
        shutil.rmtree(channels, ignore_errors=True)  # the reports only: nothing of any run


def _start(
    context: BaseContext, channels: Path, settings: Mapping[str, Any], name: str, engine: str
) -> _Worker:
    folder = channels / name
    folder.mkdir()
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(  # type: ignore[attr-defined]  # typeshed: BaseContext lacks Process
        target=_worker,
        args=(settings, name, engine, str(folder), reader),
        name=f"{WORKER_PREFIX}{name}",
        daemon=True,
    )
    try:
        process.start()
    except BaseException:
        writer.close()
        raise
    finally:
        reader.close()  # the worker has its own copy
    return _Worker(name, process, settings, Inbox(folder), writer)


def _poll(
    worker: _Worker,
    active: dict[str, _Worker],
    on_round: ProgressCallback | None,
    on_outcome: Callable[[RunOutcome], None],
) -> None:
    """Hand on a worker's new reports; a worker that ended without an outcome is a failed run."""
    ended = not worker.process.is_alive()  # before reading: its last reports are on disk by now
    for report in worker.inbox.receive():
        if isinstance(report, RoundProgress):
            if on_round is not None:
                on_round(report)
            continue
        _end(worker, grace=STOP_GRACE_SECONDS)  # it has reported: it is about to exit
        del active[worker.name]
        on_outcome(report)
        return
    if not ended:
        return
    _end(worker, grace=0.0)
    del active[worker.name]
    reason = death_reason(worker.name, worker.process.exitcode)
    atomic_write_text(Path(str(worker.settings["output"])) / ERROR_FILE, reason + "\n")
    logger.warning("%s failed: %s", worker.name, reason)
    on_outcome(RunOutcome(worker.name, "failed", reason))


def death_reason(name: str, exitcode: int | None) -> str:
    """One line on a worker that ended without reporting its outcome."""
    if exitcode is not None and exitcode < 0:
        try:
            how = f" ({signal.Signals(-exitcode).name})"
        except ValueError:
            how = ""
        return (
            f"the worker process running {name} ended with exit code {exitcode}{how} before "
            "finishing (killed, or out of memory?)"
        )
    return (
        f"the worker process running {name} ended with exit code {exitcode} without reporting "
        "how its run went"
    )


def _end(worker: _Worker, grace: float) -> None:
    """End a worker for good, by its PID: `grace` seconds to exit, then SIGTERM, then SIGKILL."""
    worker.lifeline.close()
    process = worker.process
    process.join(grace)
    if process.is_alive():
        process.terminate()
        process.join(STOP_GRACE_SECONDS)
    if process.is_alive():
        process.kill()
        process.join(STOP_GRACE_SECONDS)
    if process.is_alive():
        logger.warning(
            "the worker process %s (PID %s) did not end after SIGKILL", process.name, process.pid
        )
