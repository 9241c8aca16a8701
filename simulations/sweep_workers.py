"""Several runs of a sweep at once, each in a worker process of its own.

A run trains its clients one after another in one thread, so on a machine with several cores a
sweep is fastest with one run per core. Workers are forked where the platform allows it (they
start at once, with torch, Opacus and the data already imported; torch's thread pools are safe
across fork, as its DataLoader workers rely on) and spawned elsewhere. They report each finished
round through a queue for the progress display, and return how their run ended.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from simulations.sweep import ProgressCallback, RoundProgress, RunOutcome, execute_run

_progress_queue: Any = None
POLL_SECONDS = 0.2


def _init_worker(progress: Any) -> None:
    """Remember the queue this worker reports rounds to."""
    global _progress_queue  # noqa: PLW0603 (per-process state set once by the pool)
    _progress_queue = progress


def _report(progress: RoundProgress) -> None:
    if _progress_queue is not None:
        _progress_queue.put(progress)


def _run_one(settings: Mapping[str, Any], name: str, engine: str) -> RunOutcome:
    """A worker's job: one run, its rounds reported to the parent."""
    return execute_run(settings, name, engine, _report)


def run_in_workers(
    jobs_list: Sequence[tuple[Mapping[str, Any], str]],
    engine: str,
    jobs: int,
    on_round: ProgressCallback | None,
    on_outcome: Callable[[RunOutcome], None],
) -> None:
    """Run every (settings, name) with at most `jobs` worker processes, reporting as they go."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Manager() as manager:
        progress = manager.Queue()
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(progress,)
        ) as pool:
            pending: set[Future[RunOutcome]] = {
                pool.submit(_run_one, settings, name, engine) for settings, name in jobs_list
            }
            try:
                while pending:
                    done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                    _drain(progress, on_round)
                    for future in done:
                        on_outcome(future.result())
                _drain(progress, on_round)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise


def _drain(progress: Any, on_round: ProgressCallback | None) -> None:
    """Hand every queued round report to the display."""
    while True:
        try:
            item = progress.get_nowait()
        except queue.Empty:
            return
        if on_round is not None:
            on_round(item)
