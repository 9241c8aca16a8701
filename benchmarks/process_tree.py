"""Run a benchmark child process in its own session and sample its whole process tree's memory.

What: `run_sampled` starts a command in a new session (so it leads its own process group), reads
the summed resident memory of that process and all of its descendants from ``/proc`` every
``interval`` seconds, and at the end, or when the time limit runs out, stops the group by the
child's PID (SIGTERM, then SIGKILL). `runtime_env` gives the environment every benchmark child
gets: Ray and Flower state in fresh folders, Flower's telemetry and update check off.

Why: Flower's simulation runtime starts Ray, whose gcs_server, raylet, agents and worker actors are
separate processes; the memory a simulation costs is their sum, not the driver's RSS. Stopping by
PID (never by process name) leaves other people's Ray or Python processes on a shared machine
alone. Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.5
KIB_PER_GIB = 2**20
RAY_TMPDIR_MAX = 36


@dataclass(frozen=True)
class TreeMemory:
    """One sample of a process tree: summed VmRSS and Pss (KiB) and how many processes."""

    rss_kib: int
    pss_kib: int
    processes: int


@dataclass
class SampledRun:
    """What `run_sampled` saw: exit status, peaks of the tree's memory, wall time, time-out."""

    returncode: int | None
    peak_rss_kib: int
    peak_pss_kib: int
    peak_processes: int
    wall_s: float
    started_at: float
    timed_out: bool

    @property
    def peak_rss_gb(self) -> float:
        """Peak summed RSS in GiB (what the tables call GB)."""
        return self.peak_rss_kib / KIB_PER_GIB

    @property
    def peak_pss_gb(self) -> float:
        """Peak summed Pss in GiB: shared pages counted once in total, not once per process."""
        return self.peak_pss_kib / KIB_PER_GIB


def _children_by_parent() -> dict[int, list[int]]:
    """Every live process's children, from the parent PID field of ``/proc/PID/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _status_value(pid: int, file: str, key: str) -> int | None:
    """The KiB figure on the line of ``/proc/PID/FILE`` that starts with `key`."""
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return None


def tree_memory(root: int) -> TreeMemory:
    """Summed VmRSS and Pss of `root` and all its descendants, read from ``/proc``.

    VmRSS counts pages shared between processes (libraries, Ray's shared-memory object store)
    once per process; Pss splits them, so the Pss sum is the tree's fair share of memory.
    Processes that exit while being read are skipped.
    """
    children = _children_by_parent()
    rss = pss = count = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            rss += _status_value(pid, "status", "VmRSS:") or 0
            pss += _status_value(pid, "smaps_rollup", "Pss:") or 0
        except OSError:
            continue
        count += 1
    return TreeMemory(rss, pss, count)


def stop_process_group(child: subprocess.Popen[bytes]) -> None:
    """Stop the child's process group (it leads its own session) by PID: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def runtime_env(scratch: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus fresh Ray/Flower folders under `scratch`, telemetry off."""
    ray_dir, flwr_dir = scratch / "ray", scratch / "flwr"
    if len(str(ray_dir)) > RAY_TMPDIR_MAX:
        # Ray puts sockets at RAY_TMPDIR/ray/session_<date>_<pid>/sockets/plasma_store, and a
        # Unix socket path has at most 107 bytes: a longer folder makes ray.init fail.
        raise ValueError(f"{ray_dir} is too long for RAY_TMPDIR; use a shorter scratch folder")
    ray_dir.mkdir(parents=True, exist_ok=True)
    flwr_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_TMPDIR=str(ray_dir),
        FLWR_HOME=str(flwr_dir),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def run_sampled(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    timeout_s: float,
    interval: float = SAMPLE_SECONDS,
) -> SampledRun:
    """Run `command` in its own session, sampling its tree's memory until it ends or times out.

    The child's output goes to the two files (not pipes: a chatty child can never block on a
    full pipe while the parent sleeps). ``started_at`` is the wall-clock (``time.time``) moment
    just before the child was started, so a child can report its own events relative to it.
    """
    peak_rss = peak_pss = peak_count = 0
    timed_out = False
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        started_at = time.time()
        start = time.perf_counter()
        child = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while child.poll() is None:
                sample = tree_memory(child.pid)
                peak_pss = max(peak_pss, sample.pss_kib)
                if sample.rss_kib > peak_rss:
                    peak_rss, peak_count = sample.rss_kib, sample.processes
                if time.perf_counter() - start > timeout_s:
                    timed_out = True
                    break
                time.sleep(interval)
        finally:
            # Also reaps whatever the child left behind in its group (Ray's daemons).
            stop_process_group(child)
        wall = time.perf_counter() - start
    return SampledRun(
        returncode=child.returncode,
        peak_rss_kib=peak_rss,
        peak_pss_kib=peak_pss,
        peak_processes=peak_count,
        wall_s=wall,
        started_at=started_at,
        timed_out=timed_out,
    )
