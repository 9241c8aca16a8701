"""Distributed DP beside central DP at the same client-level ε: accuracy, noise and bytes up.

Workload (issue 16): MNIST, 100 clients, 20 expected per round (Poisson sampling), secure
aggregation, client-level ε = 8 at δ = 1e-5. Four runs of ``privet simulate`` (the in-process
engine), alike but for where the noise is added:

- central: the server unmasks the exact sum and adds Gaussian noise (DP-FedAvg);
- distributed at 16, 14 and 12 bits: every client adds its discrete Gaussian share before
  masking; the server adds nothing.

Each run's z is calibrated for the same ε by its own accountant (the distributed one is accounted
with Kairouz et al.'s bound and Zhu and Wang's sampling bound, looser than the sampled Gaussian's,
so it needs more noise). Example-level DP-SGD runs with a token σ alike in every run (Privet has no
off switch for it); it is not the subject here. The model is logistic regression (7,850
parameters), the largest setting whose four runs fit in 15 minutes on 2 CPU cores.

Run from the repository root::

    .venv/bin/python -m benchmarks.distributed_dp --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def simulate_arguments(
    args: argparse.Namespace,
    output: Path,
    bits: int | None,
    threshold: float | None = None,
    noise_multiplier: float | None = None,
) -> list[str]:
    """The `privet simulate` flags of one run (bits None: central DP).

    ``noise_multiplier``: a fixed client-level z instead of the target ε (the comparison row);
    ``threshold``: the secure-aggregation threshold t, which sizes the clients' noise shares.
    """
    flags = [
        "simulate",
        "--dataset",
        "mnist",
        "--data-dir",
        str(args.data_dir),
        "--clients",
        str(args.clients),
        "--clients-per-round",
        str(args.clients_per_round),
        "--rounds",
        str(args.rounds),
        "--model",
        args.model,
        "--lr",
        repr(args.lr),
        "--noise-multiplier",
        "0.05",
        "--secure-aggregation",
        *(
            ["--client-target-epsilon", repr(args.epsilon)]
            if noise_multiplier is None
            else ["--client-noise-multiplier", repr(noise_multiplier)]
        ),
        "--client-clip-norm",
        repr(args.clip_norm),
        "--delta",
        "1e-5",
        "--engine",
        "in-process",
        "--seed",
        str(args.seed),
        "--output",
        str(output),
        "--overwrite",
    ]
    if bits is not None:
        flags += ["--distributed-dp", "--secagg-bits", str(bits)]
    if threshold is not None:
        flags += ["--secagg-threshold", repr(threshold)]
    if args.secagg_degree is not None:
        flags += ["--secagg-degree", str(args.secagg_degree)]
    return flags


def run_one(
    args: argparse.Namespace,
    folder: Path,
    name: str,
    bits: int | None,
    threshold: float | None = None,
    noise_multiplier: float | None = None,
) -> dict[str, Any]:
    """Run one variant and read what it achieved back from results.json."""
    output = folder / f"run{len(list(folder.iterdir()))}"
    started = time.perf_counter()
    flags = simulate_arguments(args, output, bits, threshold, noise_multiplier)
    completed = subprocess.run(
        [sys.executable, "-m", "privet.cli", *flags],
        capture_output=True,
        text=True,
        timeout=args.timeout,
        check=False,
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:]
        raise SystemExit(f"{output.name} failed: {tail[0] if tail else completed.returncode}")
    results = json.loads((output / "results.json").read_text())
    rounds = results["rounds"]
    level = results["client_level"]
    details = [
        r["secure_aggregation"].get("distributed_dp") or {}
        for r in rounds
        if r.get("secure_aggregation")
    ]
    carried = [d["noise_multiplier_carried"] for d in details if "noise_multiplier_carried" in d]
    return {
        "variant": name,
        "accuracy": rounds[-1]["accuracy"],
        "epsilon": level["epsilon"],
        "epsilon_against_server": level.get("epsilon_against_server"),
        "noise_multiplier": level["noise_multiplier"],
        "noise_carried": sum(carried) / len(carried) if carried else level["noise_multiplier"],
        "bytes_up_per_client": rounds[-1]["cost"]["bytes_up_per_client"],
        "edge_coordinates": sum(d.get("edge_coordinates", 0) for d in details),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--model", default="logreg")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--bits", default="16,14,12", help="comma-separated bit widths")
    parser.add_argument(
        "--high-threshold",
        type=float,
        default=0.9,
        help="also run the first bit width with this secure-aggregation threshold (0: skip)",
    )
    parser.add_argument(
        "--secagg-degree",
        type=int,
        help="SecAgg+ neighbours per client (default: Privet's: complete up to 64 clients a "
        "round under distributed DP, sparse above)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    args = parser.parse_args(argv)
    widths = [int(part) for part in args.bits.split(",") if part]
    rows = []

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    with tempfile.TemporaryDirectory(prefix="privet-ddp-") as tmp:
        folder = Path(tmp)
        record(run_one(args, folder, "central (server noise)", None))
        for bits in widths:
            record(run_one(args, folder, f"distributed, {bits} bits", bits))
        if args.high_threshold and widths:
            bits = widths[0]
            name = f"distributed, {bits} bits, threshold {args.high_threshold:g}"
            record(run_one(args, folder, name, bits, threshold=args.high_threshold))
        if len(rows) > 1:  # central DP with the noise the first distributed run carried
            carried = rows[1]["noise_carried"]
            name = f"central at the distributed run's noise (z = {carried:.3f})"
            record(run_one(args, folder, name, None, noise_multiplier=carried))
    central = rows[0]
    print(
        f"\nMNIST, {args.clients} clients, {args.clients_per_round} per round, {args.rounds} "
        f"rounds, {args.model}, client-level epsilon {args.epsilon:g} at delta 1e-5\n"
    )
    print(
        "| variant | accuracy | vs central | eps | eps vs server | z planned | z carried "
        "| bytes up | edges |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        against = row["epsilon_against_server"]
        print(
            f"| {row['variant']} | {row['accuracy']:.4f} | "
            f"{100 * (row['accuracy'] - central['accuracy']):+.2f} pt | {row['epsilon']:.3f} | "
            f"{'-' if against is None else f'{against:.3f}'} | {row['noise_multiplier']:.3f} | "
            f"{row['noise_carried']:.3f} | "
            f"{row['bytes_up_per_client']:,} | {row['edge_coordinates']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
