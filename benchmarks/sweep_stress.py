"""Run one test many times in a row beside busy-loop processes: does it ever hang or fail?

What: starts ``--busy`` processes that spin (``python -c 'while True: pass'``), then runs
``pytest -p no:cacheprovider TEST`` ``--repeat`` times, one after another, each in a fresh
process group with a time limit (a run past it is killed by its process group and counted as a
hang), and prints the number of passes, hangs and failures and the slowest and median durations.
The busy loops are stopped by their PIDs at the end, however the script ends.

Why: a sweep once hung forever when a worker process died holding the lock of a result queue
shared by all workers; it happened 1 time in 4 with CPU load beside the test (issue 12, item 8).
Load stretches every race window, so a test that passes 20 times in a row beside two spinning
processes has no such window left in practice.

Run from the repository root::

    .venv/bin/python -m benchmarks.sweep_stress --repeat 20 --busy 2 \\
        "tests/simulations/test_sweep.py::test_a_worker_that_dies_is_a_failed_run_and_the_others_finish"
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

STOP_SECONDS = 10.0


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[list[int]]:
    """`count` spinning processes for the duration of the block; stopped by PID afterwards."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_SECONDS)


def run_once(test: str, limit: float) -> tuple[str, float, str]:
    """One pytest run of `test`: ("pass" | "fail" | "hang", seconds, its output)."""
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", test],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the test's workers go with it
    )
    try:
        output, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group led by the pytest we started
        output, _ = process.communicate(timeout=STOP_SECONDS)
        return "hang", time.monotonic() - start, f"{output}\nkilled after {limit:g} s"
    except BaseException:  # Ctrl-C does not reach its own session: stop it here
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_SECONDS)
        raise
    seconds = time.monotonic() - start
    return ("pass" if process.returncode == 0 else "fail"), seconds, output


def main(argv: list[str] | None = None) -> int:
    """Run the stress test; exit status 0 only if every repetition passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test", help="a pytest node id")
    parser.add_argument("--repeat", type=int, default=20, help="runs in a row (default 20)")
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes (default 2)")
    parser.add_argument(
        "--limit", type=float, default=300.0, help="seconds before a run counts as hung"
    )
    parser.add_argument(
        "--log", help="append the full output of every run that did not pass to this file"
    )
    args = parser.parse_args(argv)
    results = []
    with busy_loops(args.busy) as pids:
        print(f"busy-loop processes: {pids}", flush=True)
        for index in range(1, args.repeat + 1):
            verdict, seconds, output = run_once(args.test, args.limit)
            results.append((verdict, seconds))
            lines = [line for line in output.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else ""
            print(f"{index:3d}/{args.repeat} {verdict:4s} {seconds:6.1f} s  {last}", flush=True)
            if verdict != "pass" and args.log:
                with open(args.log, "a") as log:
                    log.write(f"=== run {index}: {verdict} after {seconds:.1f} s\n{output}\n")
    passes = sum(verdict == "pass" for verdict, _ in results)
    hangs = sum(verdict == "hang" for verdict, _ in results)
    durations = [seconds for _, seconds in results]
    print(
        f"{passes}/{len(results)} passed, {hangs} hung, {len(results) - passes - hangs} failed; "
        f"max {max(durations):.1f} s, median {statistics.median(durations):.1f} s "
        f"(beside {args.busy} busy loops)"
    )
    return 0 if passes == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
