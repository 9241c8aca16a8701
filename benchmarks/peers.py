"""Privet against its peers, side by side on one workload: round time and peak memory.

What: for each population N (``--clients``, default 10, 100 and 1000; K = 10 clients a round, or
100 at N = 1000) it runs the workload of `benchmarks.peer_workload` (MNIST, IID split, model
``mlp``, example-level Opacus DP-SGD on every client with σ = 1, C = 1, expected batch 32, one local
epoch, SGD, 3 rounds, server-side test-set evaluation after every round) on each system:

- ``privet-inprocess``: Privet's in-process engine (`simulations.inprocess_engine`), the
  reference every ratio is taken against;
- ``privet-flower``: Privet's apps on Flower's simulation runtime (Ray), as ``privet simulate``;
- ``flower-opacus``: Flower's runtime with a plain Opacus client in the pattern of Flower's own
  Opacus example (`benchmarks.flower_opacus_baseline`);
- ``pfl``: Apple's pfl-research simulation with Opacus DP-SGD in its local training
  (`benchmarks.pfl_baseline`), in its own virtual environment (``benchmarks/setup_pfl.sh``);
  pfl has no example-level DP-SGD of its own.

Each (system, N) runs in a child process in its own session; the parent samples the summed RSS
of the child and all its descendants (Ray's daemons and actors) every 0.5 s from ``/proc``
(`benchmarks.process_tree`) and stops the group by PID at the end or on time-out. Each child
stamps the end of every round inside its own server loop (a round callback, after the
server-side evaluation); from the moment the parent started it:

- ``steady round`` = the median duration of rounds 2..R;
- ``start-up`` = the end of round 1 minus one steady round (interpreter start, imports, data,
  Ray and node start-up, client discovery);
- ``peak RSS`` = the largest summed RSS of the tree (``peak PSS`` counts shared pages once).

A run is an error, not a measurement, when it times out, prints no report, stops short of R
rounds, ends below ``--min-accuracy`` (chance is 0.1) or reports a non-finite ε. The ratios are
peer / Privet in-process for the same N: above 1 means Privet's in-process engine is faster
(round time) or smaller (memory).

Usage::

    python -m benchmarks.peers          # everything: ~6 min on a quiet machine, ~15 min loaded
    python -m benchmarks.peers --clients 10 --systems privet-inprocess,flower-opacus --rounds 2
    python -m benchmarks.peers --json /tmp/peers.json --timeout 900
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.peer_workload import (
    MNIST_DIR,
    ChildReport,
    Workload,
    default_per_round,
    exit_child,
)
from benchmarks.process_tree import run_sampled, runtime_env

ROOT = Path(__file__).resolve().parent.parent
PFL_PYTHON = ROOT / ".venv-pfl" / "bin" / "python"
PFL_SETUP = "bash benchmarks/setup_pfl.sh"
REFERENCE = "privet-inprocess"
LOG_DIR = Path(tempfile.gettempdir()) / "privet-peers-logs"


@dataclass(frozen=True)
class System:
    """One system under test: how to start its child and what its ε means."""

    name: str
    title: str
    module: str
    child_args: tuple[str, ...] = ()
    python: str = sys.executable
    takes_grad_sample_mode: bool = False


SYSTEMS: dict[str, System] = {
    system.name: system
    for system in (
        System(
            "privet-inprocess",
            "Privet, in-process engine",
            "benchmarks.peers",
            ("--child", "privet-inprocess"),
        ),
        System(
            "privet-flower",
            "Privet on Flower's simulation runtime (Ray)",
            "benchmarks.peers",
            ("--child", "privet-flower"),
        ),
        System(
            "flower-opacus",
            "Flower simulation (Ray) + plain Opacus client",
            "benchmarks.flower_opacus_baseline",
            takes_grad_sample_mode=True,
        ),
        System(
            "pfl",
            "pfl-research simulation + Opacus DP-SGD",
            "benchmarks.pfl_baseline",
            python=str(PFL_PYTHON),
            takes_grad_sample_mode=True,
        ),
    )
}


@dataclass
class Measurement:
    """One (system, N): the timings, peak memory, the run's outcome, or why there is none."""

    system: str
    clients: int
    per_round: int
    rounds: int
    startup_s: float | None = None
    round_s: float | None = None
    round_times_s: list[float] = field(default_factory=list)
    peak_rss_gb: float | None = None
    peak_pss_gb: float | None = None
    peak_processes: int | None = None
    accuracy: float | None = None
    epsilon_max: float | None = None
    epsilon_kind: str | None = None
    clients_trained: list[int] = field(default_factory=list)
    wall_s: float | None = None
    load_before: float | None = None
    load_after: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def seconds_per_client(self) -> float | None:
        """Seconds per trained client over rounds 2..R.

        Privet Poisson-samples clients (K on average: 8 in one round, 15 in the next), the
        peers take exactly K; this figure compares the rounds' work per client.
        """
        trained = sum(self.clients_trained[1:])
        if len(self.round_times_s) < 2 or trained == 0:
            return None
        return sum(self.round_times_s[1:]) / trained


# ---------------------------------------------------------------- children: Privet's two engines


def run_privet_child(engine: str, workload: Workload) -> None:
    """Run the workload with one of Privet's engines in this process and print the report."""
    from privet.task.config import RunConfig

    output = tempfile.mkdtemp(prefix="privet-peers-out-")
    config = RunConfig(
        dataset="mnist",
        data_dir=workload.data_dir,
        model=workload.model,
        clients=workload.clients,
        clients_per_round=workload.per_round,
        client_sampling="fixed",  # exactly K a round, as the peers sample
        rounds=workload.rounds,
        local_epochs=workload.local_epochs,
        batch_size=workload.batch_size,
        noise_multiplier=workload.noise_multiplier,
        max_grad_norm=workload.max_grad_norm,
        lr=workload.lr,
        delta=workload.delta,
        seed=workload.seed,
        reproducible=True,
        output=output,
    )
    report = ChildReport(
        engine, epsilon_kind=f"cumulative ({config.accountant.upper()}, per-client ledger)"
    )

    def on_round(record: object) -> None:
        report.add_round(record.accuracy, record.epsilon_max, record.clients_trained)  # type: ignore[attr-defined]

    try:
        if engine == "privet-inprocess":
            from privet.simulations.inprocess_engine import run_in_process

            run_in_process(config, on_round)
        else:
            from privet.simulations.flower_engine import run_flower_simulation

            run_flower_simulation(config, on_round)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    report.emit()


# ---------------------------------------------------------------- parent: run, measure, check


def pfl_problem() -> str | None:
    """Why pfl cannot be measured here (no environment, or it cannot import), else None."""
    if not PFL_PYTHON.exists():
        return f"no pfl environment at {PFL_PYTHON.relative_to(ROOT)}; create it with {PFL_SETUP}"
    probe = subprocess.run(
        [str(PFL_PYTHON), "-c", "import pfl, opacus, torch; print(pfl.__version__)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"its environment cannot import pfl/opacus/torch ({last}); rerun {PFL_SETUP}"
    return None


def _tail(path: Path, lines: int = 4) -> str:
    """The last lines of a log, for an error message."""
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(line.strip() for line in text[-lines:])


def measure(
    system: System,
    workload: Workload,
    timeout_s: float,
    min_accuracy: float,
    grad_sample_mode: str,
    extra_args: tuple[str, ...] = (),
) -> Measurement:
    """Run one system on one workload in a child process; time, sample and check it."""
    result = Measurement(system.name, workload.clients, workload.per_round, workload.rounds)
    # Short: Ray's socket paths under RAY_TMPDIR must stay within 107 bytes.
    scratch = Path(tempfile.mkdtemp(prefix="pp", dir="/tmp"))
    env = runtime_env(scratch, {"PYTHONPATH": str(ROOT)})
    command = [system.python, "-m", system.module, *system.child_args, *workload.to_args()]
    if system.takes_grad_sample_mode:
        command.append(f"--grad-sample-mode={grad_sample_mode}")
    command.extend(extra_args)
    stdout, stderr = scratch / "child.out", scratch / "child.err"
    result.load_before = os.getloadavg()[0]
    run = run_sampled(
        command, cwd=ROOT, env=env, stdout_path=stdout, stderr_path=stderr, timeout_s=timeout_s
    )
    result.load_after = os.getloadavg()[0]
    result.wall_s = run.wall_s
    result.peak_rss_gb, result.peak_pss_gb = run.peak_rss_gb, run.peak_pss_gb
    result.peak_processes = run.peak_processes
    report = ChildReport.parse(stdout.read_text(errors="replace"))
    result.error = _check(run.timed_out, run.returncode, report, workload, timeout_s, min_accuracy)
    if result.error is not None and not run.timed_out:  # a stopped child's last words are noise
        result.error += f"; stderr: {_tail(stderr)}"
    if report is not None:
        _fill(result, report, run.started_at)
    if result.error is not None:
        LOG_DIR.mkdir(exist_ok=True)
        kept = LOG_DIR / f"{system.name}-{workload.clients}.log"
        shutil.copy(stderr, kept)
        result.notes.append(f"child's stderr kept in {kept}")
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def _check(
    timed_out: bool,
    returncode: int | None,
    report: ChildReport | None,
    workload: Workload,
    timeout_s: float,
    min_accuracy: float,
) -> str | None:
    """Why a run does not count as a measurement, or None when it does."""
    if timed_out:
        done = 0 if report is None else len(report.round_end)
        return f"timed out after {timeout_s:.0f} s ({done} rounds reported)"
    if report is None:
        return f"the child exited with status {returncode} and no report"
    if len(report.round_end) != workload.rounds:
        return f"{len(report.round_end)} of {workload.rounds} rounds reported"
    if report.accuracy[-1] < min_accuracy:
        return f"final accuracy {report.accuracy[-1]:.4f} is below the sanity bar {min_accuracy}"
    if not all(math.isfinite(e) and e > 0 for e in report.epsilon):
        return f"non-finite or zero epsilon reported: {report.epsilon}"
    return None


def _fill(result: Measurement, report: ChildReport, started_at: float) -> None:
    """Timings from the child's round stamps; outcome from its last round."""
    ends = [stamp - started_at for stamp in report.round_end]
    durations = [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    result.round_times_s = durations
    if len(durations) > 1:
        result.round_s = statistics.median(durations[1:])
        result.startup_s = ends[0] - result.round_s
    elif durations:
        result.startup_s = ends[0]
    if report.accuracy:
        result.accuracy = report.accuracy[-1]
        result.epsilon_max = max(report.epsilon)
    result.epsilon_kind = report.epsilon_kind
    result.clients_trained = report.clients_trained
    result.notes.extend(report.notes)


# ---------------------------------------------------------------- output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[Measurement]) -> str:
    """The measurements as an aligned text table, one row per (system, N)."""
    header = (
        f"{'system':<17} {'N':>5} {'K':>4} {'start-up s':>10} {'round s':>8} "
        f"{'trained 2..R':>12} {'peak RSS GB':>11} {'peak PSS GB':>11} {'accuracy':>8} "
        f"{'max eps':>8}  note"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        note = f"ERROR: {r.error}" if r.error else ""
        trained = ",".join(str(count) for count in r.clients_trained[1:]) or "-"
        lines.append(
            f"{r.system:<17} {r.clients:>5} {r.per_round:>4} {_fmt(r.startup_s, '.1f'):>10} "
            f"{_fmt(r.round_s, '.2f'):>8} {trained:>12} {_fmt(r.peak_rss_gb, '.2f'):>11} "
            f"{_fmt(r.peak_pss_gb, '.2f'):>11} {_fmt(r.accuracy, '.4f'):>8} "
            f"{_fmt(r.epsilon_max, '.3f'):>8}  {note}"
        )
    return "\n".join(lines)


def ratios(results: list[Measurement]) -> list[dict[str, object]]:
    """Each peer against Privet's in-process engine for the same N (peer / Privet)."""
    reference = {r.clients: r for r in results if r.system == REFERENCE and r.error is None}
    rows: list[dict[str, object]] = []
    for r in results:
        base = reference.get(r.clients)
        if r.system == REFERENCE or base is None or r.error is not None:
            continue
        row: dict[str, object] = {"system": r.system, "clients": r.clients}
        for key, mine, theirs in (
            ("round", r.round_s, base.round_s),
            ("startup", r.startup_s, base.startup_s),
            ("memory", r.peak_rss_gb, base.peak_rss_gb),
            ("per_client", r.seconds_per_client, base.seconds_per_client),
        ):
            row[key] = None if not mine or not theirs else mine / theirs
        rows.append(row)
    return rows


def ratio_lines(rows: list[dict[str, object]]) -> str:
    """The ratios as text, saying which way is better."""
    lines = [
        f"Ratios against {REFERENCE} (peer / Privet in-process, same N; above 1 = Privet's "
        "in-process engine is faster or smaller):",
        f"{'peer':<17} {'N':>5} {'round time':>11} {'start-up':>9} {'peak RSS':>9} "
        f"{'round/client':>16}",
    ]
    for row in rows:
        cells = [
            "-" if row[key] is None else f"{row[key]:.2f}x"  # type: ignore[str-format]
            for key in ("round", "startup", "memory", "per_client")
        ]
        lines.append(
            f"{row['system']!s:<17} {row['clients']!s:>5} {cells[0]:>11} {cells[1]:>9} "
            f"{cells[2]:>9} {cells[3]:>16}"
        )
    return "\n".join(lines)


def footnotes(results: list[Measurement], grad_sample_mode: str) -> str:
    """What the ε columns mean and how each system ran (printed under the table)."""
    kinds = {r.system: r.epsilon_kind for r in results if r.epsilon_kind}
    lines = ["max eps (delta = 1e-5): " + "; ".join(f"{s}: {k}" for s, k in kinds.items())]
    lines.append(
        "DP-SGD: Privet uses Opacus ghost clipping; the peers use "
        f"grad_sample_mode={grad_sample_mode!r} (--peer-grad-sample-mode; Opacus' default and "
        "Flower's example: 'hooks')."
    )
    lines.append(
        "pfl has no example-level DP-SGD of its own (its Gaussian/Laplace mechanisms noise whole "
        "user updates): its row is pfl's simulation loop around Opacus DP-SGD."
    )
    for r in results:
        for note in dict.fromkeys(r.notes):
            lines.append(f"{r.system} N={r.clients}: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the grid (or one child) and print the table and the ratios; 1 if any run failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,100,1000", help="populations N, comma-separated")
    parser.add_argument(
        "--per-round", default="", help="K for each N (comma-separated); default 10, 100 at 1000"
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.5, help="local SGD learning rate")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--min-accuracy", type=float, default=0.2, help="sanity bar at the end")
    parser.add_argument("--peer-grad-sample-mode", default="hooks", choices=("hooks", "ghost"))
    parser.add_argument(
        "--pfl-threads", type=int, default=0, help="torch threads for pfl; 0: torch's default"
    )
    parser.add_argument("--data-dir", default=MNIST_DIR)
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        exit_child(lambda: run_privet_child(args.child, Workload.from_args(args)))

    populations = [int(n) for n in args.clients.split(",") if n]
    per_round = [int(k) for k in args.per_round.split(",") if k] or [
        default_per_round(n) for n in populations
    ]
    if len(per_round) != len(populations):
        parser.error("--per-round needs one K for each N in --clients")
    names = [s for s in args.systems.split(",") if s]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    skipped: dict[str, str] = {}
    if "pfl" in names and (problem := pfl_problem()) is not None:
        skipped["pfl"] = problem
        names.remove("pfl")

    print(
        f"Peers on MNIST, mlp, DP-SGD sigma=1 C=1 batch 32, 1 local epoch, lr {args.lr}, "
        f"{args.rounds} rounds; {os.cpu_count()} CPUs; load average at start "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: list[Measurement] = []
    started = time.perf_counter()
    for clients, k in zip(populations, per_round, strict=True):
        workload = Workload(clients, k, rounds=args.rounds, lr=args.lr, data_dir=args.data_dir)
        for name in names:
            extra = (f"--threads={args.pfl_threads}",) if name == "pfl" else ()
            result = measure(
                SYSTEMS[name],
                workload,
                args.timeout,
                args.min_accuracy,
                args.peer_grad_sample_mode,
                extra,
            )
            results.append(result)
            status = result.error or (
                f"start-up {_fmt(result.startup_s, '.1f')} s, rounds "
                f"{[round(t, 2) for t in result.round_times_s]} s, peak RSS "
                f"{_fmt(result.peak_rss_gb, '.2f')} GB, accuracy {_fmt(result.accuracy, '.4f')}, "
                f"max eps {_fmt(result.epsilon_max, '.3f')}"
            )
            print(f"  {name} N={clients} K={k}: {status}", flush=True)

    print()
    print(table(results))
    for name, reason in skipped.items():
        print(f"{name}: not measured — {reason}")
    print()
    rows = ratios(results)
    print(ratio_lines(rows))
    print()
    print(footnotes(results, args.peer_grad_sample_mode))
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")
    if args.json:
        payload = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "workload": {
                key: value
                for key, value in asdict(workload).items()
                if key not in ("clients", "per_round")
            },
            "peer_grad_sample_mode": args.peer_grad_sample_mode,
            "results": [asdict(r) for r in results],
            "ratios": rows,
            "not_measured": skipped,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
