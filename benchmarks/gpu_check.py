"""The CUDA path of DP fine-tuning, checked in a few minutes on a machine with a GPU.

What it runs, on ``cuda``, with the BERT of ``benchmarks.dp_lora`` (default 6 layers of width
384, over 10M parameters) and LoRA adapters of rank 8, through Privet's own ``train_locally``:

- one client round in fp32 and one in bf16 autocast, each printing its step time and the peak
  GPU memory Privet reports (``gpu_peak_bytes``), beside the same rounds on the CPU for the
  step-time ratio;
- the same round with ``physical_batch_size`` 8: the peak memory must fall, the private steps
  must not change;
- ten clients one after another on the one GPU: the memory allocated after each must return to
  what it was before the first (no leak across clients, the failure of Flower issue 1942).

It exits 1 with a one-line reason when no CUDA GPU is visible or a check fails. Run from the
repository root::

    .venv/bin/python -m benchmarks.gpu_check --sms ../shared/data/sms-spam/SMSSpamCollection
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.dp_lora import DEFAULT_SMS, LENGTH, PUBLIC, RANK, model_folder, read_sms

if TYPE_CHECKING:
    from privet.client.trainer import LocalTrainResult


def one_round(
    folder: Path, texts: Sequence[str], labels: Sequence[int], device: str, **options: object
) -> tuple[float, LocalTrainResult]:
    """(seconds per step, result) of one client round of DP-LoRA on ``device``."""
    import numpy as np
    import torch

    from privet.client.local_plan import plan_local_training
    from privet.client.trainer import train_locally
    from privet.task.datasets import ArrayDataset
    from privet.task.lora import LoraSettings
    from privet.task.task import build_task_model, task_named
    from privet.task.text import encode_texts, load_tokenizer

    data = ArrayDataset(
        encode_texts(load_tokenizer(folder), texts, LENGTH), np.asarray(labels, np.int64), 2
    )
    plan = plan_local_training(
        num_examples=len(data),
        batch_size=64,
        local_epochs=1,
        rounds=1,
        delta=1e-5,
        noise_multiplier=1.0,
        target_epsilon=None,
    )
    task = task_named("classification")
    model = build_task_model(
        task, f"hf:{folder}", (2, LENGTH), 2, 0, lora=LoraSettings(RANK, 2.0 * RANK)
    )
    started = time.perf_counter()
    result = train_locally(
        model,
        data,
        plan,
        batch_size=64,
        max_grad_norm=1.0,
        learning_rate=0.5,
        local_epochs=1,
        seed=1,
        device=torch.device(device),
        task=task,
        **options,
    )
    return (time.perf_counter() - started) / max(result.steps, 1), result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sms", type=Path, default=DEFAULT_SMS)
    parser.add_argument("--size", default="6x384")
    parser.add_argument("--examples", type=int, default=640)
    args = parser.parse_args(argv)
    import torch

    warnings.filterwarnings("ignore")
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible; run it on a machine with one", file=sys.stderr)
        return 1
    rows = read_sms(args.sms)
    root = Path(tempfile.mkdtemp(prefix="privet-gpu-"))
    folder = model_folder(root, rows[:PUBLIC], args.size)
    chosen = rows[PUBLIC : PUBLIC + args.examples]
    texts, labels = [t for _, t in chosen], [int(label == "spam") for label, _ in chosen]
    print(f"GPU: {torch.cuda.get_device_name(0)}; model {args.size}, LoRA rank {RANK}")
    failures = []
    cpu_step, _ = one_round(folder, texts[:128], labels[:128], "cpu")
    figures = {}
    for name, options in (
        ("fp32", {}),
        ("bf16", {"precision": "bf16"}),
        ("fp32 physical 8", {"physical_batch_size": 8}),
    ):
        step, result = one_round(folder, texts, labels, "cuda", **options)
        figures[name] = (step, result)
        print(
            f"cuda {name:16}: {step * 1000:8.1f} ms/step ({cpu_step / step:5.1f}x the CPU), "
            f"peak {result.gpu_peak_bytes / 2**20:8.1f} MiB, {result.steps} steps"
        )
    whole, parts = figures["fp32"][1], figures["fp32 physical 8"][1]
    if parts.events != whole.events:
        failures.append("physical batches changed the private steps")
    if not parts.gpu_peak_bytes < whole.gpu_peak_bytes:
        failures.append("physical batches did not lower the peak GPU memory")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(10):
        one_round(folder, texts[:128], labels[:128], "cuda")
    after = torch.cuda.memory_allocated()
    print(f"10 clients in turn: allocated {before} bytes before, {after} after")
    if after > before:
        failures.append(f"GPU memory grew by {after - before} bytes over 10 clients")
    if failures:
        print(f"gpu_check: FAILED: {'; '.join(failures)}", file=sys.stderr)
        return 1
    print("gpu_check: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
