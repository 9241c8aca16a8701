"""Another process that holds a Privet lock, for tests of what a second writer is told."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_HOLD_LEDGER = (
    "import sys, time\nfrom privet.privacy.ledger import ledger_lock\n"
    "ledger_lock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(120)"
)


@contextlib.contextmanager
def ledger_held_elsewhere(path: Path) -> Iterator[subprocess.Popen]:
    """A process that holds `path`'s ledger lock until the block ends (it waits at most 60 s
    for the lock to be taken, and the holder is killed by its PID afterwards)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LEDGER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 60)
        assert ready and holder.stdout.readline().strip() == "held", "the holder took no lock"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=60)
