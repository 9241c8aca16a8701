"""DP-SGD step throughput of Privet's client trainer, side by side with non-private training.

What it measures, for each model (MLP and CNN on MNIST by default), in one process and with the
same model, data, batch size and thread count:

- ``nonprivate``: plain SGD over fixed-size batches sliced from in-memory tensors (the fastest
  non-private loop; the baseline of every ratio).
- ``nonprivate-loader``: the same, but batches come from a shuffling ``torch`` DataLoader over a
  ``TensorDataset`` (the loader kind Privet's trainer uses), to show what data loading alone costs.
- ``privet``: :func:`client.trainer.train_locally` itself — the product's Opacus DP-SGD round
  (Poisson sampling, ghost clipping where the model allows it, accounting checks). Each timed call
  trains one local epoch on a subset of ``batch * steps`` examples, so it runs about ``steps``
  steps of expected size ``batch``; the per-call setup (``make_private``, plan checks, weight
  export) is included, because a client pays it every round.
- ``opacus-hooks`` (reference): Opacus' classic per-sample-gradient mode ("hooks") with Poisson
  sampling, the mode Privet would use without ghost clipping.

Why: DP-SGD's per-example clipping is the main cost of private training; the ratio
private / non-private is what a user gives up in speed for privacy. Modes run interleaved and each
is repeated ``--repeats`` times; the table shows the median, so background load on the machine
affects all modes alike.

Run from the repository root::

    .venv/bin/python -m benchmarks.dp_throughput --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import opacus
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privet.client.local_plan import plan_local_training
from privet.client.trainer import train_locally
from privet.task.datasets import ArrayDataset, load_dataset
from privet.task.models import build_model

MODES: tuple[str, ...] = ("nonprivate", "nonprivate-loader", "privet", "opacus-hooks")
BASELINE = "nonprivate"
DEFAULT_MODELS = ("mlp", "cnn")
NOISE_MULTIPLIER = 1.0
"""σ used by the private modes; the noise level does not change the cost of a step."""
MAX_GRAD_NORM = 1.0
LEARNING_RATE = 0.1
DELTA = 1e-5


@dataclass(frozen=True)
class Measurement:
    """One timed run of one mode: how many steps and examples it processed in how long."""

    model: str
    mode: str
    steps: int
    examples: int
    seconds: float

    @property
    def steps_per_s(self) -> float:
        """Optimizer steps per second."""
        return self.steps / self.seconds

    @property
    def examples_per_s(self) -> float:
        """Training examples per second (expected count for Poisson-sampled modes)."""
        return self.examples / self.seconds


@dataclass(frozen=True)
class Summary:
    """Median over repeats of one (model, mode), and its ratio to the non-private baseline."""

    model: str
    mode: str
    steps_per_s: float
    examples_per_s: float
    ratio_to_nonprivate: float
    repeats: int
    grad_sample_mode: str


def _tensors(data: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(data.features, dtype=torch.float32),
        torch.tensor(data.labels, dtype=torch.long),
    )


def time_nonprivate(
    model: nn.Module, data: ArrayDataset, batch_size: int, steps: int, warmup: int
) -> tuple[int, int, float]:
    """Plain SGD over fixed-size batches sliced from in-memory tensors; returns (steps, ex, s)."""
    features, labels = _tensors(data)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    batches = len(data) // batch_size
    model.train()

    def step(i: int) -> None:
        start = (i % batches) * batch_size
        x, y = features[start : start + batch_size], labels[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    for i in range(warmup):
        step(i)
    begin = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps, steps * batch_size, time.perf_counter() - begin


def time_nonprivate_loader(
    model: nn.Module, data: ArrayDataset, batch_size: int, steps: int, warmup: int, seed: int
) -> tuple[int, int, float]:
    """Plain SGD with batches from a shuffling DataLoader over a TensorDataset."""
    features, labels = _tensors(data)
    loader = DataLoader(
        TensorDataset(features, labels),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def batches() -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        iterator = iter(loader)

        def following() -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal iterator
            try:
                return next(iterator)
            except StopIteration:
                iterator = iter(loader)
                return next(iterator)

        return following

    next_batch = batches()

    def step() -> int:
        x, y = next_batch()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        return int(y.shape[0])

    for _ in range(warmup):
        step()
    begin = time.perf_counter()
    examples = sum(step() for _ in range(steps))
    return steps, examples, time.perf_counter() - begin


def time_privet(
    model: nn.Module, data: ArrayDataset, batch_size: int, seed: int
) -> tuple[int, int, float, str]:
    """One call of Privet's `train_locally` (one local epoch); returns (steps, ex, s, mode)."""
    plan = plan_local_training(
        num_examples=len(data),
        batch_size=batch_size,
        local_epochs=1,
        rounds=1,
        delta=DELTA,
        noise_multiplier=NOISE_MULTIPLIER,
        target_epsilon=None,
    )
    begin = time.perf_counter()
    result = train_locally(
        model,
        data,
        plan,
        batch_size=batch_size,
        max_grad_norm=MAX_GRAD_NORM,
        learning_rate=LEARNING_RATE,
        local_epochs=1,
        seed=seed,
        device=torch.device("cpu"),
    )
    seconds = time.perf_counter() - begin
    # Poisson sampling: the expected number of examples seen in one epoch is len(data).
    return result.steps, len(data), seconds, result.grad_sample_mode


def time_opacus_hooks(
    model: nn.Module, data: ArrayDataset, batch_size: int, steps: int, warmup: int, seed: int
) -> tuple[int, int, float]:
    """Opacus DP-SGD with per-sample gradients from hooks and Poisson sampling (reference)."""
    features, labels = _tensors(data)
    loader = DataLoader(
        TensorDataset(features, labels),
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
        private_model, private_optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=NOISE_MULTIPLIER,
            max_grad_norm=MAX_GRAD_NORM,
            poisson_sampling=True,
            grad_sample_mode="hooks",
        )
    loss_fn = nn.CrossEntropyLoss()
    private_model.train()
    iterator = iter(private_loader)

    def step() -> int:
        nonlocal iterator
        try:
            x, y = next(iterator)
        except StopIteration:
            iterator = iter(private_loader)
            x, y = next(iterator)
        private_optimizer.zero_grad(set_to_none=True)
        loss_fn(private_model(x), y).backward()
        private_optimizer.step()
        return int(y.shape[0])

    with warnings.catch_warnings():
        # Opacus' hooks fire on a first layer whose input needs no gradient; harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(warmup):
            step()
        begin = time.perf_counter()
        examples = sum(step() for _ in range(steps))
    return steps, examples, time.perf_counter() - begin


def measure(
    model_name: str,
    mode: str,
    pristine: nn.Module,
    data: ArrayDataset,
    *,
    batch_size: int,
    steps: int,
    warmup: int,
    seed: int,
) -> tuple[Measurement, str]:
    """Time one mode on a fresh copy of the model; returns the measurement and clipping mode."""
    model = copy.deepcopy(pristine)
    clipping = "-"
    if mode == "nonprivate":
        done = time_nonprivate(model, data, batch_size, steps, warmup)
    elif mode == "nonprivate-loader":
        done = time_nonprivate_loader(model, data, batch_size, steps, warmup, seed)
    elif mode == "privet":
        subset = data.subset(np.arange(batch_size * steps))
        *done_privet, clipping = time_privet(model, subset, batch_size, seed)
        done = tuple(done_privet)  # type: ignore[assignment]
    elif mode == "opacus-hooks":
        done = time_opacus_hooks(model, data, batch_size, steps, warmup, seed)
        clipping = "hooks"
    else:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    step_count, examples, seconds = done
    return Measurement(model_name, mode, int(step_count), int(examples), float(seconds)), clipping


def warm_up(
    model_name: str,
    modes: Sequence[str],
    pristine: nn.Module,
    data: ArrayDataset,
    batch_size: int,
    warmup: int,
) -> None:
    """Run every mode briefly so that first-call costs (imports, allocator) are not timed."""
    for mode in modes:
        measure(
            model_name,
            mode,
            pristine,
            data,
            batch_size=batch_size,
            steps=max(1, warmup),
            warmup=0,
            seed=12345,
        )


def summarise(
    measurements: list[Measurement], clipping: dict[tuple[str, str], str]
) -> list[Summary]:
    """Median steps/s and examples/s per (model, mode), and the ratio to `nonprivate`."""
    keys: list[tuple[str, str]] = []
    for item in measurements:
        if (item.model, item.mode) not in keys:
            keys.append((item.model, item.mode))
    medians: dict[tuple[str, str], tuple[float, float, int]] = {}
    for key in keys:
        runs = [m for m in measurements if (m.model, m.mode) == key]
        medians[key] = (
            statistics.median(m.steps_per_s for m in runs),
            statistics.median(m.examples_per_s for m in runs),
            len(runs),
        )
    summaries = []
    for model, mode in keys:
        steps_per_s, examples_per_s, repeats = medians[(model, mode)]
        baseline = medians.get((model, BASELINE))
        ratio = examples_per_s / baseline[1] if baseline else float("nan")
        summaries.append(
            Summary(
                model=model,
                mode=mode,
                steps_per_s=steps_per_s,
                examples_per_s=examples_per_s,
                ratio_to_nonprivate=ratio,
                repeats=repeats,
                grad_sample_mode=clipping.get((model, mode), "-"),
            )
        )
    return summaries


def format_table(summaries: list[Summary]) -> str:
    """A plain-text table of the summaries."""
    header = (
        f"{'model':<6} {'mode':<18} {'clipping':<8} {'steps/s':>9} {'examples/s':>11} "
        f"{'vs nonprivate':>14}"
    )
    lines = [header, "-" * len(header)]
    for s in summaries:
        lines.append(
            f"{s.model:<6} {s.mode:<18} {s.grad_sample_mode:<8} {s.steps_per_s:>9.1f} "
            f"{s.examples_per_s:>11.0f} {s.ratio_to_nonprivate:>13.3f}x"
        )
    return "\n".join(lines)


def machine_description(threads: int) -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opacus": opacus.__version__,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dp_throughput",
        description="DP-SGD step throughput (Privet's trainer) vs non-private SGD, on MNIST.",
    )
    parser.add_argument("--data-dir", default="../shared/data/mnist", help="MNIST IDX folder")
    parser.add_argument("--batch-size", type=int, default=256, help="(expected) batch size")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated: mlp,cnn,logreg"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    parser.add_argument("--seed", type=int, default=0, help="model init and sampling seed")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if BASELINE not in args.modes:
        args.modes.insert(0, BASELINE)
    for name in ("batch_size", "steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and optionally write JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", data_dir=args.data_dir).train
    needed = args.batch_size * args.steps
    if needed > len(data):
        print(
            f"error: --batch-size x --steps = {needed} exceeds the {len(data)} MNIST training "
            "examples",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    measurements: list[Measurement] = []
    clipping: dict[tuple[str, str], str] = {}
    for model_name in args.models:
        pristine = build_model(model_name, data.feature_shape, data.num_classes, seed=args.seed)
        warm_up(model_name, args.modes, pristine, data, args.batch_size, args.warmup)
        for repeat in range(args.repeats):
            for mode in args.modes:
                result, clip = measure(
                    model_name,
                    mode,
                    pristine,
                    data,
                    batch_size=args.batch_size,
                    steps=args.steps,
                    warmup=args.warmup,
                    seed=args.seed + repeat,
                )
                measurements.append(result)
                clipping[(model_name, mode)] = clip
                print(
                    f"  {model_name} {mode:<18} run {repeat + 1}/{args.repeats}: "
                    f"{result.steps_per_s:8.1f} steps/s",
                    file=sys.stderr,
                    flush=True,
                )
    summaries = summarise(measurements, clipping)
    machine = machine_description(args.threads)
    print(
        f"DP-SGD throughput on MNIST, batch {args.batch_size}, {args.steps} timed steps, "
        f"median of {args.repeats}, {args.threads} torch threads, {machine['cpu_count']} CPUs, "
        f"{'CUDA available (unused)' if machine['cuda'] else 'no GPU'}"
    )
    print(format_table(summaries))
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        payload = {
            "machine": machine,
            "settings": {
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "threads": args.threads,
                "noise_multiplier": NOISE_MULTIPLIER,
                "max_grad_norm": MAX_GRAD_NORM,
            },
            "summary": [asdict(s) for s in summaries],
            "runs": [
                {**asdict(m), "steps_per_s": m.steps_per_s, "examples_per_s": m.examples_per_s}
                for m in measurements
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
