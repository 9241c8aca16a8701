"""Many virtual clients on one machine: Privet's in-process engine beside Flower's Ray runtime.

What it measures: one Privet run (MNIST, model ``mlp``, example-level DP-SGD with every client
calibrated to ε = 8 at δ = 1e-5) for a population (``--clients``) and a number of clients per
round (``--per-round``, Poisson-sampled by default, ``--sampling fixed`` for exactly that many), on
each engine of ``--engines``: ``in-process`` (`simulations.inprocess_engine`, Privet's apps in one
process) and ``flower`` (`simulations.flower_engine`: Flower 1.42's ``run_simulation`` with the Ray
backend, 1 CPU per client actor — the baseline). Both engines give identical results for a seed;
the script checks that they did (same final accuracy and ε), so only time and memory differ.
Reported per engine and configuration:

- ``startup_s``: wall time from the call until the first round's callback. It contains imports,
  Ray's start-up (flower), the ServerApp's discovery of all N nodes (one QUERY message per node)
  and the first round itself.
- ``startup_only_s``: an estimate of the start-up without the first round: ``startup_s`` minus
  the last round's duration (the moment round 1 begins is not observable from the callback).
- ``round_s``: the last round's duration (callback to callback), the steady per-round time.
- ``peak_rss_gb``: the largest summed RSS (VmRSS) of the child process that runs the simulation
  and all its descendants (for flower: Ray's gcs_server, raylet, dashboard agents and worker
  processes), sampled every 0.5 s from ``/proc`` by the parent (``peak_pss_gb``: the same for
  Pss, which counts shared pages once in total rather than once per process).
- ``wall_s``: the child's whole life, interpreter start to exit.

Each configuration runs in a child process started in its own session; the parent samples the
process tree and, at the end or on timeout, stops the child's process group by its PID (SIGTERM,
then SIGKILL), with `benchmarks.process_tree`. Ray and Flower state lives in fresh temporary
directories under /tmp. The last lines are the ratios flower / in-process (above 1: the
in-process engine is faster or smaller).

Usage::

    python -m benchmarks.many_clients --clients 1000 --per-round 100 --rounds 3
    python -m benchmarks.many_clients --grid
    python -m benchmarks.many_clients --engines in-process --clients 1000 --per-round 100
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.process_tree import SAMPLE_SECONDS, run_sampled, runtime_env

ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = str(ROOT.parent / "shared" / "data" / "mnist")
GRID: tuple[tuple[int, int, int], ...] = ((100, 10, 3), (1000, 10, 3), (1000, 100, 3))
ENGINES = ("in-process", "flower")
DEFAULT_TIMEOUT_S = 600.0
RESULT_MARK = "RESULT "


@dataclass
class Measurement:
    """One configuration's outcome; ``error`` is set when the child did not report a result."""

    engine: str
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
            f"engine={self.engine} clients={self.clients} per_round={self.per_round} "
            f"rounds={self.rounds} "
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


def run_child(
    engine: str, clients: int, per_round: int, rounds: int, sampling: str, output: str
) -> None:
    """Run one configuration in this process and print a ``RESULT {json}`` line."""
    from privet.simulations.engines import run_simulation_with
    from privet.task.config import RunConfig

    config = RunConfig(
        dataset="mnist",
        data_dir=MNIST_DIR,
        model="mlp",
        clients=clients,
        clients_per_round=per_round,
        client_sampling=sampling,
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
    results = run_simulation_with(engine, config, on_round)  # type: ignore[arg-type]
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


def measure(
    engine: str,
    clients: int,
    per_round: int,
    rounds: int,
    sampling: str = "poisson",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Measurement:
    """Run one configuration in a child process and sample its process tree's RSS."""
    result = Measurement(engine, clients, per_round, rounds)
    scratch = Path(tempfile.mkdtemp(prefix="fmc", dir="/tmp"))
    (scratch / "out").mkdir()
    log_path = scratch / "child.log"
    out_path = scratch / "child.out"
    command = [
        sys.executable,
        "-m",
        "benchmarks.many_clients",
        "--child",
        f"--engines={engine}",
        f"--sampling={sampling}",
        f"--clients={clients}",
        f"--per-round={per_round}",
        f"--rounds={rounds}",
        f"--output={scratch / 'out'}",
    ]
    run = run_sampled(
        command,
        cwd=Path(__file__).resolve().parent.parent,
        env=runtime_env(scratch),
        stdout_path=out_path,
        stderr_path=log_path,
        timeout_s=timeout_s,
        interval=SAMPLE_SECONDS,
    )
    if run.timed_out:
        result.error = f"timed out after {timeout_s:.0f}s"
    result.total_s = run.wall_s
    result.peak_rss_gb = run.peak_rss_gb
    result.peak_pss_gb = run.peak_pss_gb
    result.peak_processes = run.peak_processes
    payload = None
    for line in out_path.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_MARK):
            payload = json.loads(line[len(RESULT_MARK) :])
    if payload is None:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        result.error = (result.error or f"child exited {run.returncode}") + f"; log: {tail}"
        shutil.copy(log_path, f"/tmp/mc_failed_{engine}_{clients}_{per_round}_{rounds}.log")
    else:
        result.startup_s = payload["startup_s"]
        result.round_times_s = payload["round_times_s"]
        result.round_s = payload["round_s"]
        result.accuracy = payload["accuracy"]
        result.epsilon_max = payload["epsilon_max"]
        if result.round_s is not None and result.startup_s is not None:
            result.startup_only_s = result.startup_s - result.round_s
    shutil.copy(log_path, f"/tmp/mc_{engine}_{clients}_{per_round}_{rounds}.log")
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def ratio_line(baseline: Measurement, privet: Measurement) -> str:
    """flower / in-process for one configuration, and whether both computed the same run."""

    def ratio(a: float | None, b: float | None) -> str:
        return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

    same = baseline.accuracy == privet.accuracy and baseline.epsilon_max == privet.epsilon_max
    return (
        f"ratio flower/in-process clients={privet.clients} per_round={privet.per_round}: "
        f"round {ratio(baseline.round_s, privet.round_s)}, "
        f"start-up {ratio(baseline.startup_s, privet.startup_s)}, "
        f"wall {ratio(baseline.total_s, privet.total_s)}, "
        f"peak RSS {ratio(baseline.peak_rss_gb, privet.peak_rss_gb)}; "
        f"same accuracy and epsilon: {'yes' if same else 'NO'}"
    )


def main(argv: list[str] | None = None) -> None:
    """Run each configuration on each engine and print one line each, then the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sampling", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated engines")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--grid", action="store_true", help="run the standard configurations")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.child:
        run_child(engines[0], args.clients, args.per_round, args.rounds, args.sampling, args.output)
        return
    configs = GRID if args.grid else ((args.clients, args.per_round, args.rounds),)
    results: dict[tuple[str, int, int], Measurement] = {}
    for clients, per_round, rounds in configs:
        for engine in engines:
            measured = measure(engine, clients, per_round, rounds, args.sampling, args.timeout)
            results[(engine, clients, per_round)] = measured
            print(measured.line(), flush=True)
    for clients, per_round, _ in configs:
        privet = results.get(("in-process", clients, per_round))
        baseline = results.get(("flower", clients, per_round))
        if privet is not None and baseline is not None:
            print(ratio_line(baseline, privet), flush=True)


if __name__ == "__main__":
    main()
