"""End-to-end scenarios that start with the test session and are checked by their tests later.

A real deployment spends most of its minutes waiting: Flower's SuperNodes look for work every
3 s and each message starts a fresh ClientApp process. Run inside a test, that wait holds one of
the suite's two workers idle for minutes. So the session starts such a scenario at once, in a
process of its own (`python -m tests.background NAME FOLDER`), the two workers meanwhile run the
other tests, and the scenario's test waits for its verdict (`wait_for_verdict`) and makes every
assertion on what it left in FOLDER. The scenario is the same code, on the same processes and
files, as when it ran inside the test; only its start moved.

A scenario is a function `(folder: Path) -> dict` named in `SCENARIOS`; it raises when the
deployment misbehaves (its own waits are bounded), and returns what its test needs beyond the
files. Its verdict (`verdict.json`: the returned values, or the error and traceback) is written
atomically when it ends. `conftest.py` starts the scenarios whose test file the session will
run, and stops them by PID at the end.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

SCENARIOS = {
    "crash-and-resume": "tests.test_real_federation:crash_and_resume",
    "rogue": "tests.test_federation_security:rogue_attempts",
}
"""Scenario name -> `module:function`."""

TEST_FILES = {
    "crash-and-resume": "tests/test_real_federation.py",
    "rogue": "tests/test_federation_security.py",
}
"""Scenario name -> the test file that checks it (a session running that file starts it)."""

FOLDER_ENV = "PRIVET_TEST_BACKGROUND"
"""The folder of this session's scenarios, set for the workers by the session that starts them."""

VERDICT = "verdict.json"
PROGRESS = "progress.log"
QUIET_LIMIT_S = 600.0
"""A scenario that writes nothing to its folder for this long is taken as hung."""


def start(name: str, root: Path) -> subprocess.Popen[bytes]:
    """Start scenario `name` in `root / name` (its own process group, output in run.log)."""
    folder = root / name
    folder.mkdir(parents=True)
    with open(folder / "run.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.background", name, str(folder)],
            cwd=Path(__file__).resolve().parents[1],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a scenario that is still running, with everything it started, by its PID's group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def folder_of(name: str) -> Path | None:
    """Where this session's scenario `name` runs, or None when the session did not start it."""
    root = os.environ.get(FOLDER_ENV)
    return None if root is None else Path(root) / name


def _last_change(folder: Path) -> float:
    """The newest modification time of anything in `folder` (the scenario's progress)."""
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        try:
            newest = max(newest, path.stat().st_mtime)
        except OSError:
            continue
    return newest


def wait_for_verdict(folder: Path) -> dict[str, object]:
    """The scenario's returned values once it ended; raises AssertionError if it failed or hung.

    Waits while the scenario makes progress (writes into its folder), and at most
    `QUIET_LIMIT_S` after its last write: a bound from progress, not a guess of its length.
    """
    verdict = folder / VERDICT
    while not verdict.exists():
        quiet = time.time() - _last_change(folder)
        assert quiet < QUIET_LIMIT_S, (
            f"the background scenario in {folder} wrote nothing for {quiet:.0f} s:\n"
            + (folder / "run.log").read_text(errors="replace")[-4000:]
        )
        time.sleep(1.0)
    result = json.loads(verdict.read_text())
    assert result["ok"], f"the background scenario failed:\n{result['error']}"
    values = result["values"]
    assert isinstance(values, dict)
    return values


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """Turn the session's SIGTERM into an exception, so the scenario's `finally` stops what it
    started (each process of a deployment runs in its own session, out of our group's reach)."""
    raise SystemExit(f"stopped by signal {signum}")


def _run(name: str, folder: Path) -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    module_name, function_name = SCENARIOS[name].split(":")
    scenario = getattr(importlib.import_module(module_name), function_name)
    try:
        result = {"ok": True, "values": scenario(folder)}
    except BaseException:  # noqa: BLE001 (every failure becomes the test's verdict)
        result = {"ok": False, "error": traceback.format_exc()[-6000:]}
    partial = folder / (VERDICT + ".tmp")
    partial.write_text(json.dumps(result, default=str))
    partial.replace(folder / VERDICT)


if __name__ == "__main__":
    _run(sys.argv[1], Path(sys.argv[2]))
