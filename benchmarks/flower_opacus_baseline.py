"""The baseline "as Flower users write it": Flower's simulation runtime with a plain Opacus client.

What: a Message-API ClientApp and ServerApp that follow the pattern of Flower's own Opacus example
(``examples/opacus`` in the flwr repository): on every train message the client loads its
partition, builds the model, loads the global weights, wraps model, optimizer and a shuffling
``DataLoader`` with a *new* ``opacus.PrivacyEngine().make_private(...)`` (Opacus' defaults:
Poisson sampling, per-sample gradients by hooks), trains one local epoch and reports the ε of the
engine's accountant. Nothing survives between rounds, so that ε covers *one round only*: a client
sampled in r rounds has really spent more (the example does the same; Privet's ε is cumulative).
``PrivacyEngine()`` takes Opacus 1.6's default accountant, PRV, whose ``get_epsilon`` costs
0.04 s (q = 1/169) to 0.2 s (q = 1/2) per call on this machine: at N = 1000 (q = 1/2, 100 clients
a round) that is about 20 CPU-seconds a round, half the round on two client actors.
The server runs `flwr.serverapp.strategy.FedAvg` (K of N nodes sampled per round for training and
for local evaluation on each node's held-out examples) with a server-side ``evaluate_fn`` on the
MNIST test set, on `flwr.simulation.run_simulation` with the Ray backend and one CPU per client
actor (Privet's setting).

Why: to compare Privet with what a Flower user gets without it, on the same workload
(`benchmarks.peer_workload`). Written afresh for this benchmark; it is not Flower's example code
(which trains CIFAR-10 with a CNN and other hyperparameters).

Run as a child of `benchmarks.peers`: ``python -m benchmarks.flower_opacus_baseline --workload
JSON``; it prints one ``RESULT {json}`` line (`benchmarks.peer_workload.ChildReport`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import warnings

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.peer_workload import (
    ChildReport,
    FederatedMnist,
    Workload,
    build_mlp,
    exit_child,
)

SYSTEM = "flower-opacus"


@functools.lru_cache(maxsize=2)
def _federated_data(workload: Workload) -> FederatedMnist:
    """MNIST and its shards, loaded once per process (an actor serves many virtual nodes)."""
    return FederatedMnist(workload)


def _weights_into(model: nn.Module, arrays: ArrayRecord) -> None:
    """Load the global model sent by the server."""
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)


def _evaluate(model: nn.Module, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on the given examples."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(features))  # a copy: the cached test arrays are read-only
        target = torch.tensor(labels)
        loss = float(nn.functional.cross_entropy(logits, target))
        accuracy = float((logits.argmax(dim=1) == target).float().mean())
    return loss, accuracy


def make_client_app(workload: Workload, grad_sample_mode: str = "hooks") -> ClientApp:
    """The ClientApp: a fresh Opacus PrivacyEngine on every train message."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from opacus import PrivacyEngine  # imported where used, as an actor would

        data = _federated_data(workload)
        mine = data.client(int(context.node_config["partition-id"]))  # type: ignore[call-overload]
        model = build_mlp(workload, data.feature_shape, data.num_classes)
        _weights_into(model, msg.content["arrays"])  # type: ignore[arg-type]
        loader = DataLoader(
            TensorDataset(torch.from_numpy(mine.train_x), torch.from_numpy(mine.train_y)),
            batch_size=workload.batch_size,
            shuffle=True,
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=workload.lr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus: "Secure RNG turned off", as in the example
            engine = PrivacyEngine()
            made = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                criterion=nn.CrossEntropyLoss(),
                noise_multiplier=workload.noise_multiplier,
                max_grad_norm=workload.max_grad_norm,
                grad_sample_mode=grad_sample_mode,
            )
        private_model, private_optimizer, private_loader = made[0], made[1], made[-1]
        criterion = made[2] if grad_sample_mode == "ghost" else nn.CrossEntropyLoss()
        private_model.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(workload.local_epochs):
                for features, labels in private_loader:
                    private_optimizer.zero_grad()
                    criterion(private_model(features), labels).backward()
                    private_optimizer.step()
        epsilon = engine.get_epsilon(delta=workload.delta)
        # The wrapped module shares its parameters with `model`: read the trained weights there.
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord(
                    {
                        "num-examples": len(mine.train_y),
                        "epsilon": float(epsilon),
                        "torch-threads": torch.get_num_threads(),
                    }
                ),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        data = _federated_data(workload)
        mine = data.client(int(context.node_config["partition-id"]))  # type: ignore[call-overload]
        model = build_mlp(workload, data.feature_shape, data.num_classes)
        _weights_into(model, msg.content["arrays"])  # type: ignore[arg-type]
        loss, accuracy = _evaluate(model, mine.holdout_x, mine.holdout_y)
        metrics = MetricRecord(
            {"num-examples": len(mine.holdout_y), "loss": loss, "accuracy": accuracy}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def make_server_app(workload: Workload, report: ChildReport) -> ServerApp:
    """The ServerApp: FedAvg over K sampled nodes a round, test-set evaluation after each round."""
    app = ServerApp()
    last_round: dict[str, float] = {}

    def train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
        """ε is aggregated with max (FedAvg's default would average it); also count replies."""
        values = [next(iter(r.metric_records.values())) for r in records]
        last_round["epsilon"] = max(float(v["epsilon"]) for v in values)  # type: ignore[arg-type]
        last_round["trained"] = len(values)
        last_round["threads"] = max(float(v["torch-threads"]) for v in values)  # type: ignore[arg-type]
        return MetricRecord({"epsilon-max": last_round["epsilon"]})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        data = _federated_data(workload)
        model = build_mlp(workload, data.feature_shape, data.num_classes)
        test_x, test_y = data.test.features, data.test.labels
        fraction = workload.per_round / workload.clients

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            _weights_into(model, arrays)
            loss, accuracy = _evaluate(model, test_x, test_y)
            if server_round > 0:
                if "epsilon" not in last_round:
                    raise RuntimeError(f"round {server_round}: no client replied to training")
                report.add_round(accuracy, last_round["epsilon"], int(last_round["trained"]))
            return MetricRecord({"loss": loss, "accuracy": accuracy})

        strategy = FedAvg(
            fraction_train=fraction,
            fraction_evaluate=fraction,
            min_train_nodes=min(2, workload.per_round),
            min_evaluate_nodes=min(2, workload.per_round),
            min_available_nodes=workload.clients,
            train_metrics_aggr_fn=train_metrics,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=workload.rounds,
            evaluate_fn=evaluate_fn,
        )
        if "threads" in last_round:
            report.notes.append(f"torch threads per client actor: {int(last_round['threads'])}")

    return app


def run(workload: Workload, grad_sample_mode: str = "hooks") -> ChildReport:
    """Run the baseline on Flower's Ray simulation runtime in this process."""
    from flwr.simulation import run_simulation
    from opacus import PrivacyEngine

    # The example's `PrivacyEngine()` takes Opacus' default accountant (PRV in Opacus 1.6).
    accountant = PrivacyEngine().accountant.mechanism().upper()
    report = ChildReport(
        SYSTEM, epsilon_kind=f"one round only ({accountant}, a fresh accountant every round)"
    )
    logging.getLogger("flwr").setLevel(logging.ERROR)  # as Privet's engine does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=make_server_app(workload, report),
            client_app=make_client_app(workload, grad_sample_mode),
            num_supernodes=workload.clients,
            backend_config={  # the same resources as simulations.flower_engine gives Privet
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "include_dashboard": False},
            },
        )
    report.notes.append(f"Opacus grad_sample_mode={grad_sample_mode}")
    return report


def main(argv: list[str] | None = None) -> None:
    """Child entry point: run the workload and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    Workload.add_argument(parser)
    parser.add_argument("--grad-sample-mode", default="hooks", choices=("hooks", "ghost"))
    args = parser.parse_args(argv)
    exit_child(lambda: run(Workload.from_args(args), args.grad_sample_mode).emit())


if __name__ == "__main__":
    # Ray pickles the apps' functions by module name: run them from the importable module, not
    # from `__main__`, which Ray's worker processes cannot import.
    from benchmarks.flower_opacus_baseline import main as module_main

    module_main()
