"""How Flower's Ray simulation runtime copes with many virtual clients driving Privet's real apps.

What it measures: one Privet run (MNIST, model ``mlp``, example-level DP on) through
`simulations.flower_engine.run_flower_simulation`, i.e. Flower 1.42's ``run_simulation`` with the
Ray backend (1 CPU per client actor), for a given population (``--clients``) and expected number
of clients sampled per round (``--per-round``). Reported per configuration:

- ``startup_s``: wall time from the call until the first round's callback. It contains Ray's
  start-up, the actors' imports, the ServerApp's discovery of all N nodes (one QUERY message per
  node) and the first round itself.
- ``startup_only_s``: an estimate of the start-up without the first round: ``startup_s`` minus
  the last round's duration (the moment round 1 begins is not observable from the callback).
- ``round_s``: the last round's duration (callback to callback), the steady per-round time.
- ``peak_rss_gb``: the largest summed RSS (VmRSS) of the child process that runs the simulation
  and all its descendants (Ray's gcs_server, raylet, dashboard agents and worker processes),
  sampled every 0.5 s from ``/proc`` by the parent (``peak_pss_gb``: the same for Pss, which
  counts shared pages once in total rather than once per process).

Why: to judge whether Flower's Ray runtime can simulate e.g. 1000 clients x 100 per round on a
small (2-core) machine within a memory budget, before relying on it for large-population runs.

Each configuration runs in a child process started in its own session; the parent samples the
process tree and, at the end or on timeout, stops the child's process group by its PID (SIGTERM,
then SIGKILL). Ray and Flower state lives in fresh temporary directories under /tmp.

Usage::

    python -m benchmarks.flower_many_clients --clients 100 --per-round 10 --rounds 2
    python -m benchmarks.flower_many_clients --grid
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MNIST_DIR = "/work/shared/data/mnist"
GRID: tuple[tuple[int, int, int], ...] = ((100, 10, 2), (1000, 100, 2), (1000, 10, 2))
SAMPLE_SECONDS = 0.5
DEFAULT_TIMEOUT_S = 600.0
RESULT_MARK = "RESULT "


@dataclass
class Measurement:
    """One configuration's outcome; ``error`` is set when the child did not report a result."""

    clients: int
    per_round: int
    rounds: int
    startup_s: float | None = None
    startup_only_s: float | None = None
    round_s: float | None = None
    round_times_s: list[float] | None = None
    peak_rss_gb: float | None = None
    peak_pss_gb: float | None = None
    peak_processes: int | None = None
    accuracy: float | None = None
    epsilon_max: float | None = None
    total_s: float | None = None
    error: str | None = None

    def line(self) -> str:
        """One human-readable line."""

        def fmt(value: float | None, spec: str) -> str:
            return "n/a" if value is None else format(value, spec)

        text = (
            f"clients={self.clients} per_round={self.per_round} rounds={self.rounds} "
            f"startup_s={fmt(self.startup_s, '.1f')} round_s={fmt(self.round_s, '.1f')} "
            f"peak_rss_gb={fmt(self.peak_rss_gb, '.2f')} accuracy={fmt(self.accuracy, '.4f')} "
            f"max_eps={fmt(self.epsilon_max, '.3f')}"
        )
        extra = (
            f" | rounds_s={[round(t, 1) for t in self.round_times_s or []]}"
            f" startup_only_est_s={fmt(self.startup_only_s, '.1f')}"
            f" peak_pss_gb={fmt(self.peak_pss_gb, '.2f')}"
            f" total_s={fmt(self.total_s, '.1f')} peak_procs={self.peak_processes}"
        )
        if self.error:
            extra += f" ERROR: {self.error}"
        return text + extra


# ---------------------------------------------------------------- child: runs the simulation


def run_child(clients: int, per_round: int, rounds: int, output: str) -> None:
    """Run one configuration in this process and print a ``RESULT {json}`` line."""
    from simulations.flower_engine import run_flower_simulation
    from task.config import RunConfig

    config = RunConfig(
        dataset="mnist",
        data_dir=MNIST_DIR,
        model="mlp",
        clients=clients,
        clients_per_round=per_round,
        rounds=rounds,
        local_epochs=1,
        batch_size=32,
        reproducible=True,
        output=output,
    )
    stamps: list[float] = []
    records: list[object] = []

    def on_round(record: object) -> None:
        stamps.append(time.perf_counter())
        records.append(record)
        print(f"round callback at {stamps[-1] - start:.1f}s", file=sys.stderr, flush=True)

    start = time.perf_counter()
    results = run_flower_simulation(config, on_round=on_round)  # type: ignore[arg-type]
    total = time.perf_counter() - start
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    last = results.rounds[-1] if results.rounds else None
    payload = {
        "startup_s": times[0] if times else None,
        "round_times_s": times,
        "round_s": times[-1] if len(times) > 1 else None,
        "accuracy": None if last is None else last.accuracy,
        "epsilon_max": None if last is None else last.epsilon_max,
        "total_s": total,
    }
    print(RESULT_MARK + json.dumps(payload), flush=True)


# ---------------------------------------------------------------- parent: process-tree RSS


def _tree_rss_kib(root: int) -> tuple[int, int, int]:
    """Summed VmRSS and Pss (KiB), and the count, of `root` and all its descendants (/proc).

    VmRSS counts pages shared between processes (libraries, Ray's shared-memory object store)
    once per process; Pss splits them, so the Pss sum is the tree's fair share of memory.
    """
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, pss, count, todo = 0, 0, 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                    break
        except OSError:
            continue
        count += 1
    return total, pss, count


def _stop(child: subprocess.Popen[str]) -> None:
    """Stop the child's process group (its own session) by PID: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def measure(
    clients: int, per_round: int, rounds: int, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Measurement:
    """Run one configuration in a child process and sample its process tree's RSS."""
    result = Measurement(clients, per_round, rounds)
    scratch = Path(tempfile.mkdtemp(prefix="fmc", dir="/tmp"))
    env = dict(os.environ)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_TMPDIR=str(scratch / "r"),
        FLWR_HOME=str(scratch / "f"),
        PYTHONUNBUFFERED="1",
    )
    for sub in ("r", "f", "out"):
        (scratch / sub).mkdir()
    log_path = scratch / "child.log"
    out_path = scratch / "child.out"
    command = [
        sys.executable,
        "-m",
        "benchmarks.flower_many_clients",
        "--child",
        f"--clients={clients}",
        f"--per-round={per_round}",
        f"--rounds={rounds}",
        f"--output={scratch / 'out'}",
    ]
    root = Path(__file__).resolve().parent.parent
    peak_kib, peak_pss, peak_count = 0, 0, 0
    start = time.perf_counter()
    with open(log_path, "w") as log, open(out_path, "w") as out:
        child = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=log, start_new_session=True
        )
        try:
            while child.poll() is None:
                rss, pss, count = _tree_rss_kib(child.pid)
                peak_pss = max(peak_pss, pss)
                if rss > peak_kib:
                    peak_kib, peak_count = rss, count
                if time.perf_counter() - start > timeout_s:
                    result.error = f"timed out after {timeout_s:.0f}s"
                    break
                time.sleep(SAMPLE_SECONDS)
        finally:
            _stop(child)
    result.total_s = time.perf_counter() - start
    result.peak_rss_gb = peak_kib / 2**20
    result.peak_pss_gb = peak_pss / 2**20
    result.peak_processes = peak_count
    payload = None
    for line in out_path.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_MARK):
            payload = json.loads(line[len(RESULT_MARK) :])
    if payload is None:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        result.error = (result.error or f"child exited {child.returncode}") + f"; log: {tail}"
        shutil.copy(log_path, f"/tmp/fmc_failed_{clients}_{per_round}_{rounds}.log")
    else:
        result.startup_s = payload["startup_s"]
        result.round_times_s = payload["round_times_s"]
        result.round_s = payload["round_s"]
        result.accuracy = payload["accuracy"]
        result.epsilon_max = payload["epsilon_max"]
        if result.round_s is not None and result.startup_s is not None:
            result.startup_only_s = result.startup_s - result.round_s
    shutil.copy(log_path, f"/tmp/fmc_{clients}_{per_round}_{rounds}.log")
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    """Run one configuration (or the grid) and print one line per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--grid", action="store_true", help="run the three standard configs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.clients, args.per_round, args.rounds, args.output)
        return
    configs = GRID if args.grid else ((args.clients, args.per_round, args.rounds),)
    for clients, per_round, rounds in configs:
        print(measure(clients, per_round, rounds, args.timeout).line(), flush=True)


if __name__ == "__main__":
    main()
