"""Several runs of a sweep at once, each in a worker process of its own.

A run trains its clients one after another in one thread, so on a machine with several cores a
sweep is fastest with one run per core. Each run gets a fresh worker process. Where the platform
has it, workers are forked from a fork server that has imported torch, Opacus and Flower but has
run no torch operation: forking the sweep's own process instead can deadlock, because it has
used torch's OpenMP thread pool (planning the runs) and GNU OpenMP does not survive a fork. The
fork server starts once per sweep; each worker then starts in a fraction of a second. Elsewhere
workers are spawned. Workers report each finished round and their outcome through one queue.

Stopping is the parent's job: workers ignore SIGINT, and when the sweep is interrupted (Ctrl-C
reaches the whole process group) the parent terminates every running worker by its PID before
it returns. A worker that is killed loses at most the round in progress: every file a run writes
is replaced atomically, and its ledger is written before the update it records leaves.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from privacy import atomic_write_text
from simulations.sweep import (
    ERROR_FILE,
    ProgressCallback,
    RoundProgress,
    RunOutcome,
    execute_run,
)

POLL_SECONDS = 0.2
WORKER_PREFIX = "privet-sweep-"  # a worker's process name: the prefix and its run's name
STOP_GRACE_SECONDS = 5.0


# What the fork server imports before forking workers (imports only: no torch operation runs).
PRELOAD = ["simulations.sweep_workers", "simulations.inprocess_engine", "client.training_round"]


def _context() -> BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _worker(settings: Mapping[str, Any], name: str, engine: str, reports: Any) -> None:
    """A worker's life: one run, its rounds and its outcome reported to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    outcome = execute_run(settings, name, engine, reports.put)
    reports.put(outcome)


def run_in_workers(
    jobs_list: Sequence[tuple[Mapping[str, Any], str]],
    engine: str,
    jobs: int,
    on_round: ProgressCallback | None,
    on_outcome: Callable[[RunOutcome], None],
) -> None:
    """Run every (settings, name) with at most `jobs` worker processes, reporting as they go."""
    context = _context()
    reports = context.Queue()
    todo = list(jobs_list)
    active: dict[str, tuple[BaseProcess, Mapping[str, Any]]] = {}
    try:
        while todo or active:
            while todo and len(active) < jobs:
                settings, name = todo.pop(0)
                process = context.Process(  # type: ignore[attr-defined]
                    target=_worker,
                    args=(settings, name, engine, reports),
                    name=f"{WORKER_PREFIX}{name}",
                    daemon=True,
                )
                process.start()
                active[name] = (process, settings)
            try:
                item = reports.get(timeout=POLL_SECONDS)
            except queue.Empty:
                _collect_dead(active, reports, on_round, on_outcome)
                continue
            _handle(item, active, on_round, on_outcome)
    finally:
        _stop(active)


def _handle(
    item: Any,
    active: dict[str, tuple[BaseProcess, Mapping[str, Any]]],
    on_round: ProgressCallback | None,
    on_outcome: Callable[[RunOutcome], None],
) -> None:
    """Pass a worker's report on; an outcome also ends that worker."""
    if isinstance(item, RoundProgress):
        if on_round is not None:
            on_round(item)
        return
    finished = active.pop(item.run, None)
    if finished is not None:
        finished[0].join()
    on_outcome(item)


def _collect_dead(
    active: dict[str, tuple[BaseProcess, Mapping[str, Any]]],
    reports: Any,
    on_round: ProgressCallback | None,
    on_outcome: Callable[[RunOutcome], None],
) -> None:
    """A worker that died without reporting (killed, out of memory) is a failed run."""
    for name, (process, settings) in list(active.items()):
        if process.is_alive():
            continue
        # Its last reports may still be in the queue: hand them on first.
        while True:
            try:
                _handle(reports.get_nowait(), active, on_round, on_outcome)
            except queue.Empty:
                break
        if name not in active:
            continue
        del active[name]
        reason = (
            f"the worker process running {name} ended with exit code {process.exitcode} "
            "before finishing (killed, or out of memory?)"
        )
        atomic_write_text(Path(str(settings["output"])) / ERROR_FILE, reason + "\n")
        on_outcome(RunOutcome(name, "failed", reason))


def _stop(active: dict[str, tuple[BaseProcess, Mapping[str, Any]]]) -> None:
    """Terminate every worker still running (by its PID), then make sure each has ended."""
    for process, _ in active.values():
        if process.is_alive():
            process.terminate()
    for process, _ in active.values():
        process.join(STOP_GRACE_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()
