"""The one workload every system in `benchmarks.peers` runs, and the report its child prints.

What: MNIST from the checksum-verified IDX files (never downloaded), an IID split over N clients
(`task.partition.partition_indices`, seed 0), each client holding out the same 10% of its shard
that Privet holds out for local evaluation (`client.node_data.split_shard`), the ``mlp`` model
of `task.models` with the same seeded initial weights, and example-level DP-SGD on every client
(Poisson sampling, fixed σ and clip norm C, expected batch 32, 1 local epoch, plain SGD).

Why a module of its own: the peers run in other processes, one of them in another virtual
environment (pfl's), and must all read the same settings and build the same shards; and each
child reports its rounds the same way (`ChildReport`, one ``RESULT {json}`` line on stdout)
so the parent can time and check every system alike. This module imports only NumPy and
Privet's `task` and `client.node_data` (NumPy-only), so it loads in either environment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

# ../shared/data/mnist beside the repository (the checksum-verified files; nothing is downloaded).
MNIST_DIR = str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist")
RESULT_MARK = "RESULT "
NUM_CLASSES = 10


@dataclass(frozen=True)
class Workload:
    """The settings shared by all systems; ``per_round`` is K, the clients sampled per round."""

    clients: int
    per_round: int
    rounds: int = 3
    batch_size: int = 32
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    lr: float = 0.5
    local_epochs: int = 1
    delta: float = 1e-5
    seed: int = 0
    model: str = "mlp"
    data_dir: str = MNIST_DIR

    def to_args(self) -> list[str]:
        """The command-line flags that `from_args` reads back (for a child process)."""
        return [f"--workload={json.dumps(asdict(self))}"]

    @classmethod
    def add_argument(cls, parser: argparse.ArgumentParser) -> None:
        """Declare the ``--workload`` flag a child process takes."""
        parser.add_argument("--workload", required=True, help="JSON of benchmarks.peer_workload")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Workload:
        """The workload a parent passed with `to_args`."""
        return cls(**json.loads(args.workload))


def default_per_round(clients: int) -> int:
    """K for a population: 10 clients per round up to 100 clients, then 10% of them."""
    return 10 if clients <= 100 else max(10, clients // 10)


@dataclass(frozen=True)
class ClientData:
    """One client's training examples and held-out examples, as NumPy arrays."""

    train_x: np.ndarray
    train_y: np.ndarray
    holdout_x: np.ndarray
    holdout_y: np.ndarray


class FederatedMnist:
    """MNIST split over the workload's clients exactly as Privet splits it in a simulation."""

    def __init__(self, workload: Workload) -> None:
        from privet.task.datasets import load_dataset
        from privet.task.partition import partition_indices

        data = load_dataset("mnist", data_dir=workload.data_dir, seed=workload.seed)
        self.workload = workload
        self.train = data.train
        self.test = data.test
        self.feature_shape = data.train.feature_shape
        self.num_classes = data.num_classes
        self.shards = partition_indices(
            data.train.labels, workload.clients, "iid", seed=workload.seed
        )

    def client(self, client_id: int) -> ClientData:
        """Client `client_id`'s examples: its shard less Privet's 10% local hold-out."""
        from privet.client.node_data import split_shard

        train_idx, holdout_idx = split_shard(self.shards[client_id], client_id, self.workload.seed)
        features, labels = self.train.features, self.train.labels
        return ClientData(
            features[train_idx], labels[train_idx], features[holdout_idx], labels[holdout_idx]
        )


def build_mlp(workload: Workload, feature_shape: tuple[int, ...], num_classes: int) -> Any:
    """The workload's model with Privet's seeded initial weights (a torch ``nn.Module``)."""
    from privet.task.models import build_model

    return build_model(workload.model, feature_shape, num_classes, seed=workload.seed)


@dataclass
class ChildReport:
    """What a child process reports: wall-clock time, test accuracy and ε at each round's end.

    ``round_end`` holds ``time.time()`` stamps taken inside the system's own server loop (a
    round callback) after the round's server-side evaluation, so the parent can compute the
    start-up and per-round times from the moment it started the child. ``epsilon`` is the
    largest ε over the clients at that round, as the system reports it; ``epsilon_kind`` says
    what that number covers (cumulative over the run, or one round only).
    """

    system: str
    round_end: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    epsilon: list[float] = field(default_factory=list)
    clients_trained: list[int] = field(default_factory=list)
    epsilon_kind: str = "cumulative"
    notes: list[str] = field(default_factory=list)

    def add_round(self, accuracy: float, epsilon: float, clients_trained: int) -> None:
        """Record the end of a round now, and print the report so far.

        Printing after every round means a run cut off by the parent's time limit still tells
        how far it got and how long its rounds took (the parent reads the last report).
        """
        self.round_end.append(time.time())
        self.accuracy.append(float(accuracy))
        self.epsilon.append(float(epsilon))
        self.clients_trained.append(int(clients_trained))
        self.emit()

    def emit(self) -> None:
        """Print the report as the one ``RESULT {json}`` line the parent looks for."""
        payload = asdict(self)
        payload["epsilon"] = [e if math.isfinite(e) else str(e) for e in self.epsilon]
        print(RESULT_MARK + json.dumps(payload), flush=True)

    @classmethod
    def parse(cls, text: str) -> ChildReport | None:
        """The last report in a child's stdout, or None when it printed none."""
        report = None
        for line in text.splitlines():
            if line.startswith(RESULT_MARK):
                payload = json.loads(line[len(RESULT_MARK) :])
                payload["epsilon"] = [float(e) for e in payload["epsilon"]]
                report = cls(**payload)
        return report


def exit_child(work: Callable[[], None]) -> NoReturn:
    """Run a child's work, then end the process at once: status 0, or 1 with the traceback.

    When Flower's simulation runtime fails (e.g. Ray cannot start), ``run_simulation`` raises
    in the main thread but leaves a non-daemon thread waiting, and the interpreter would never
    exit: the parent would wait for its time-out. Ending with ``os._exit`` after flushing the
    output reports the failure now.
    """
    code = 0
    try:
        work()
    except BaseException:  # noqa: BLE001 (any failure is the child's result)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
