"""DP fine-tuning of a pretrained transformer with LoRA: speed, memory, bytes and utility.

Three parts, each printing its figures and the ratios issue 15 sets goals for:

- ``cost``: one training step of a BERT of more than 10M parameters (built by
  ``privet model-folder``'s code with ``--size``, default 6 layers of width 384) with LoRA
  adapters of rank 8, the model Privet builds for ``--model hf:FOLDER --lora-rank 8``. The
  baseline is plain SGD on the same adapters; the private step is Opacus' DP-SGD as Privet's
  trainer runs it (ghost clipping, noise 1, clip 1). Each variant runs in a fresh process of its
  own, interleaved and repeated; time is the median step, memory the growth of the process'
  peak resident memory over what it held once the model and batch were built. Goals: private /
  plain ≤ 1.5× time and ≤ 1.3× memory.
- ``bytes``: the bytes a client sends per round with LoRA (rank 8) and with full fine-tuning of
  the same model: the float32 tensors that travel (what results.json's
  ``cost.bytes_up_per_client`` counts). Goal: ≥ 50× fewer with LoRA.
- ``utility``: a small BERT pretrained without DP on a public part of the SMS Spam Collection
  (1,000 messages, the server's), then fine-tuned with DP LoRA across 10 clients on the rest
  (``privet simulate --engine in-process``) at client ε = 3 and 8, beside the same model
  fine-tuned centrally on the same data without DP. All score the same held-out test set.

Run from the repository root::

    .venv/bin/python -m benchmarks.dp_lora --sms ../shared/data/sms-spam/SMSSpamCollection
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

DEFAULT_SMS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "sms-spam" / "SMSSpamCollection"
)
PUBLIC = 1000
"""Messages of the SMS collection that are public (the server's): tokenizer and pretraining."""
TEST = 1000
"""Messages held out for testing every model (never trained on)."""
RANK = 8
BATCH = 32
LENGTH = 64


def read_sms(path: Path) -> list[tuple[str, str]]:
    """(label, text) of every message, in the file's order."""
    with path.open(encoding="utf-8") as handle:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in handle]  # type: ignore[misc]


def write_csv(path: Path, rows: Sequence[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    return path


def model_folder(root: Path, rows: Sequence[tuple[str, str]], size: str) -> Path:
    """A model folder of the given size (layers x width) with a tokenizer from ``rows``."""
    from privet.task.model_folder import BertSize, make_text_model_folder

    layers, width = (int(part) for part in size.split("x"))
    shape = BertSize(
        hidden_size=width,
        layers=layers,
        heads=max(1, width // 64),
        intermediate_size=4 * width,
        max_positions=512,
        vocab_size=30000,
    )
    folder = root / f"bert-{size}"
    if not folder.exists():
        make_text_model_folder(folder, [t for _, t in rows], [label for label, _ in rows], shape)
    return folder


# --------------------------------------------------------------------------------------------
# cost: one step, private and plain, each in a fresh process
# --------------------------------------------------------------------------------------------


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def worker(folder: Path, sms: Path, variant: str, steps: int) -> dict[str, float]:
    """Time ``steps`` steps of one variant (``dp`` or ``plain``) in this process."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from privet.task.config import RunConfig
    from privet.task.task import build_task_model, task_named
    from privet.task.text import encode_texts, load_tokenizer

    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("PRIVET_BENCH_THREADS", "2")))
    texts = [text for _, text in read_sms(sms)[:BATCH]]
    tokenizer = load_tokenizer(folder)
    features = torch.from_numpy(encode_texts(tokenizer, texts, LENGTH))
    labels = torch.randint(0, 2, (BATCH,), generator=torch.Generator().manual_seed(0))
    config = RunConfig(
        dataset="text",
        data_file=str(sms),
        label_column="label",
        model=f"hf:{folder}",
        lora_rank=RANK,
        max_length=LENGTH,
    )
    model = build_task_model(
        task_named("classification"), config.model, (2, LENGTH), 2, 0, lora=config.lora
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    criterion: torch.nn.Module = torch.nn.CrossEntropyLoss()
    if variant != "plain":  # "dp": ghost clipping, as Privet's trainer may; "dp-hooks": hooks
        made = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=DataLoader(TensorDataset(features, labels), batch_size=BATCH),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
            grad_sample_mode="ghost" if variant == "dp" else "hooks",
        )
        model, optimizer = made[0], made[1]
        if variant == "dp":
            criterion = made[2]
    model.train()
    before = _rss_kb()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        optimizer.zero_grad()
        loss = criterion(model(features), labels)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "step_s": statistics.median(times[1:]),  # the first step builds caches
        "memory_growth_mb": (peak - before) / 1024,
        "peak_mb": peak / 1024,
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def run_cost(folder: Path, sms: Path, repeats: int, steps: int) -> dict[str, object]:
    results: dict[str, list[dict[str, float]]] = {"plain": [], "dp": [], "dp-hooks": []}
    for _ in range(repeats):
        for variant in results:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.dp_lora", "--worker", variant,
                 "--folder", str(folder), "--sms", str(sms), "--steps", str(steps)],
                capture_output=True, text=True, check=True, timeout=1800,
            )  # fmt: skip
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary: dict[str, object] = {}
    for variant, runs in results.items():
        summary[variant] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    plain, dp = summary["plain"], summary["dp"]
    assert isinstance(plain, dict) and isinstance(dp, dict)
    hooks = summary["dp-hooks"]
    assert isinstance(hooks, dict)
    summary["hooks_time_ratio"] = hooks["step_s"] / plain["step_s"]
    summary["hooks_memory_growth_ratio"] = hooks["memory_growth_mb"] / plain["memory_growth_mb"]
    summary["time_ratio"] = dp["step_s"] / plain["step_s"]
    summary["memory_growth_ratio"] = dp["memory_growth_mb"] / plain["memory_growth_mb"]
    summary["peak_ratio"] = dp["peak_mb"] / plain["peak_mb"]
    return summary


# --------------------------------------------------------------------------------------------
# bytes: what travels per round, LoRA and full fine-tuning
# --------------------------------------------------------------------------------------------


def run_bytes(folder: Path) -> dict[str, float]:
    from privet.task.lora import LoraSettings
    from privet.task.models import get_weights
    from privet.task.task import build_task_model, task_named

    task = task_named("classification")
    full = build_task_model(task, f"hf:{folder}", (2, LENGTH), 2, 0)
    lora = build_task_model(
        task, f"hf:{folder}", (2, LENGTH), 2, 0, lora=LoraSettings(RANK, 2.0 * RANK)
    )
    full_bytes = sum(w.nbytes for w in get_weights(full))
    lora_bytes = sum(w.nbytes for w in get_weights(lora))
    return {"full_bytes": full_bytes, "lora_bytes": lora_bytes, "ratio": full_bytes / lora_bytes}


# --------------------------------------------------------------------------------------------
# utility: pretrained on public data, fine-tuned with DP LoRA over 10 clients vs centrally
# --------------------------------------------------------------------------------------------


def pretrain(public_rows: Sequence[tuple[str, str]], out: Path, epochs: int) -> Path:
    """A small BERT and tokenizer made from the public messages and trained on them without DP.

    The same as ``privet model-folder --train-epochs EPOCHS`` on the public part.
    """
    from privet.task.model_folder import BertSize, make_text_model_folder

    if out.exists():
        return out
    texts, labels = [t for _, t in public_rows], [label for label, _ in public_rows]
    size = BertSize(hidden_size=64, layers=2, heads=2, intermediate_size=256, vocab_size=30000)
    return make_text_model_folder(out, texts, labels, size, train_epochs=epochs, max_length=LENGTH)


def accuracy(model: torch.nn.Module, features: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of texts whose largest logit is their label."""
    import torch

    x = torch.from_numpy(features).long()
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
    return float((logits.argmax(1).numpy() == labels).mean())


def central(pretrained: Path, private: Path, test: Path, epochs: int) -> dict[str, float]:
    """The pretrained model fine-tuned centrally without DP (LoRA, same rank), and as is."""
    import peft
    import transformers

    from privet.task.model_folder import train_without_dp
    from privet.task.text import load_tokenizer, read_text_file, text_classes, text_dataset

    tokenizer = load_tokenizer(pretrained)
    tables = [read_text_file(path, "text", "label") for path in (private, test)]
    classes = text_classes(pretrained, tables[0].labels)
    train, held = (text_dataset(t, tokenizer, LENGTH, classes) for t in tables)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(pretrained), local_files_only=True
    )
    before = accuracy(model, held.features, held.labels)
    config = peft.LoraConfig(r=RANK, lora_alpha=2 * RANK, task_type=peft.TaskType.SEQ_CLS)
    model = peft.get_peft_model(model, config)
    train_without_dp(model, train.features, train.labels.tolist(), epochs)
    return {"pretrained": before, "central_lora": accuracy(model, held.features, held.labels)}


def federated(
    pretrained: Path,
    private: Path,
    test: Path,
    epsilon: float,
    root: Path,
    rounds: int,
    training: dict[str, float],
) -> dict[str, object]:
    from privet.simulations.inprocess_engine import run_in_process
    from privet.task.config import RunConfig

    output = root / f"federated-eps{epsilon:g}"
    shutil.rmtree(output, ignore_errors=True)
    config = RunConfig(
        dataset="text",
        data_file=str(private),
        test_file=str(test),
        label_column="label",
        model=f"hf:{pretrained}",
        max_length=LENGTH,
        lora_rank=RANK,
        clients=10,
        rounds=rounds,
        local_epochs=int(training["local_epochs"]),
        batch_size=int(training["batch_size"]),
        lr=training["lr"],
        max_grad_norm=1.0,
        target_epsilon=epsilon,
        local_evaluation="never",
        reproducible=True,
        output=str(output),
    )
    started = time.perf_counter()
    results = run_in_process(config)
    return {
        "epsilon_target": epsilon,
        "accuracy": results.rounds[-1].accuracy,
        "epsilon_max": max(client.epsilon for client in results.clients),
        "finished": results.finished,
        "seconds": time.perf_counter() - started,
        "bytes_up_per_client_per_round": json.loads((output / "results.json").read_text())[
            "rounds"
        ][-1]["cost"]["bytes_up_per_client"],
    }


def run_utility(
    sms: Path, root: Path, rounds: int, epochs: int, training: dict[str, float]
) -> dict[str, object]:
    rows = read_sms(sms)
    public_rows, test_rows, private_rows = (
        rows[:PUBLIC],
        rows[PUBLIC : PUBLIC + TEST],
        rows[PUBLIC + TEST :],
    )
    test = write_csv(root / "test.csv", test_rows)
    private = write_csv(root / "private.csv", private_rows)
    write_csv(root / "public.csv", public_rows)
    pretrained = pretrain(public_rows, root / "pretrained", epochs)
    out: dict[str, object] = central(pretrained, private, test, epochs)
    out["majority"] = max(
        sum(label == "ham" for label, _ in test_rows),
        sum(label == "spam" for label, _ in test_rows),
    ) / len(test_rows)
    out["federated"] = [
        federated(pretrained, private, test, epsilon, root, rounds, training)
        for epsilon in (3.0, 8.0)
    ]
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sms", type=Path, default=DEFAULT_SMS, help="SMSSpamCollection file")
    parser.add_argument("--parts", default="cost,bytes,utility", help="which parts to run")
    parser.add_argument("--size", default="6x384", help="cost model: LAYERSxWIDTH (≥ 10M)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=10, help="federated rounds (utility)")
    parser.add_argument("--epochs", type=int, default=3, help="central epochs (utility)")
    # Defaults: the best of four settings tried at ε = 3 (benchmarks/README.md has the table).
    parser.add_argument("--lr", type=float, default=1.0, help="federated clients' SGD rate")
    parser.add_argument("--batch-size", type=int, default=64, help="federated DP batch")
    parser.add_argument("--local-epochs", type=int, default=2, help="federated local epochs")
    parser.add_argument("--workdir", type=Path, default=None, help="keep folders here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", choices=("dp", "dp-hooks", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.folder, args.sms, args.worker, args.steps)))
        return 0
    if not args.sms.is_file():
        print(f"dp_lora: {args.sms} does not exist; pass --sms", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="privet-dp-lora-"))
    root.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    figures: dict[str, object] = {}
    if parts & {"cost", "bytes"}:
        folder = model_folder(root, read_sms(args.sms)[:PUBLIC], args.size)
    if "bytes" in parts:
        figures["bytes"] = found = run_bytes(folder)
        print(
            f"bytes per client per round: full {found['full_bytes']:,.0f}, LoRA rank {RANK} "
            f"{found['lora_bytes']:,.0f}; full / LoRA = {found['ratio']:.0f}x (goal >= 50x)"
        )
    if "cost" in parts:
        figures["cost"] = cost = run_cost(folder, args.sms, args.repeats, args.steps)
        plain, dp = cost["plain"], cost["dp"]
        assert isinstance(plain, dict) and isinstance(dp, dict)
        print(
            f"model {args.size}: {dp['total_parameters']:,.0f} parameters, "
            f"{dp['trainable_parameters']:,.0f} trainable (LoRA rank {RANK} and head); "
            f"batch {BATCH} x {LENGTH} tokens"
        )
        print(f"{'':10} {'step s':>8} {'mem growth MB':>14} {'peak MB':>8}")
        for name, row in (("plain", plain), ("DP ghost", dp), ("DP hooks", cost["dp-hooks"])):
            print(
                f"{name:10} {row['step_s']:8.3f} {row['memory_growth_mb']:14.1f} "
                f"{row['peak_mb']:8.0f}"
            )
        print(
            f"DP / plain: time {cost['time_ratio']:.2f}x (goal <= 1.5x), memory growth "
            f"{cost['memory_growth_ratio']:.2f}x, peak {cost['peak_ratio']:.2f}x (goal <= 1.3x); "
            f"hooks mode: time {cost['hooks_time_ratio']:.2f}x, memory growth "
            f"{cost['hooks_memory_growth_ratio']:.2f}x"
        )
    if "utility" in parts:
        training = {"lr": args.lr, "batch_size": args.batch_size, "local_epochs": args.local_epochs}
        figures["utility"] = utility = run_utility(
            args.sms, root, args.rounds, args.epochs, training
        )
        print(
            f"test accuracy ({TEST} messages): majority class {utility['majority']:.4f}, "
            f"pretrained on public {utility['pretrained']:.4f}, central LoRA without DP "
            f"{utility['central_lora']:.4f}"
        )
        for row in utility["federated"]:  # type: ignore[union-attr]
            print(
                f"federated DP LoRA, 10 clients, target ε {row['epsilon_target']:g}: accuracy "
                f"{row['accuracy']:.4f}, ε max {row['epsilon_max']:.3f}, "
                f"finished {row['finished']}, {row['seconds']:.0f} s, "
                f"{row['bytes_up_per_client_per_round']:,} bytes up per client per round"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
