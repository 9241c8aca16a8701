"""Apple's pfl-research (PyPI ``pfl``) on the peers' workload, with Opacus DP-SGD on each user.

What: pfl's in-process simulation (`pfl.aggregate.simulate.SimulatedBackend`, FedAvg through
`pfl.algorithm.FederatedAveraging`, `pfl.model.pytorch.PyTorchModel`, users from a
`pfl.data.federated_dataset.FederatedDataset`, K users a round by pfl's ``minimize_reuse``
sampler, updates weighted by data points) on the workload of `benchmarks.peer_workload`, with
the test-set accuracy measured by a callback after every central iteration.

The privacy part differs from pfl's own, on purpose. pfl 0.6 has no example-level DP-SGD: its
mechanisms (`pfl.privacy.GaussianMechanism`, ``LaplaceMechanism``, adaptive clipping, banded
matrix factorisation), used as local or as central privacy, clip and noise each *user's whole
model update* (user-level DP), and ``NNTrainHyperParams.local_max_grad_norm`` clips the batch
gradient, not per example. So that every system does the same work, ``OpacusFedAvg`` replaces
pfl's local SGD with Opacus DP-SGD (a ``PrivacyEngine`` per user and round, Opacus defaults:
Poisson sampling, per-sample hooks), keeping one RDP accountant per user across rounds, so the
ε reported is cumulative like Privet's (computed once per distinct accountant history).
Everything else (sampling, aggregation, the central update, evaluation on the users' held-out
examples) is pfl's.

Why: the task asks for pfl as a peer; this is the closest honest equivalent, and its numbers
measure pfl's simulation loop around the same DP-SGD work, not pfl's privacy code.

It runs in its own virtual environment (``.venv-pfl``, see ``benchmarks/setup_pfl.sh``): pfl
pins ``packaging<26`` and other versions that must not touch Privet's ``.venv``. Run as a child
of `benchmarks.peers`: ``.venv-pfl/bin/python -m benchmarks.pfl_baseline --workload JSON``.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Metrics, StringMetricName, Weighted
from pfl.model.pytorch import PyTorchModel
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.peer_workload import (
    ChildReport,
    FederatedMnist,
    Workload,
    build_mlp,
    exit_child,
)

SYSTEM = "pfl"
EVAL_BATCH = 1024


class PflModule(nn.Module):
    """The workload's network with the ``loss`` and ``metrics`` methods pfl's model needs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The network's logits."""
        return self.net(features)

    def loss(self, features: torch.Tensor, labels: torch.Tensor, eval: bool = False) -> Any:  # noqa: A002
        """Mean cross-entropy (pfl's own local SGD would minimise this; here Opacus does)."""
        self.train(not eval)
        return nn.functional.cross_entropy(self(features), labels.long())

    @torch.no_grad()
    def metrics(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        eval: bool = True,  # noqa: A002
    ) -> dict[str, Weighted]:
        """Summed loss and correct predictions, weighted by the number of examples.

        pfl hands every array over as a float tensor: the labels are cast back to integers.
        """
        self.eval()
        labels = labels.long()
        logits = self(features)
        count = len(labels)
        loss = float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct = float((logits.argmax(dim=1) == labels).sum())
        return {"loss": Weighted(loss, count), "accuracy": Weighted(correct, count)}


class OpacusFedAvg(FederatedAveraging):
    """pfl's FedAvg whose local training is Opacus DP-SGD, with an accountant kept per user."""

    def __init__(self, workload: Workload, grad_sample_mode: str = "hooks") -> None:
        super().__init__()
        self.workload = workload
        self.grad_sample_mode = grad_sample_mode
        self.accountants: dict[str, RDPAccountant] = {}
        self.round_trained = 0
        self.epsilon_max = 0.0  # no user has trained yet
        self._epsilon_of_history: dict[tuple[tuple[float, float, int], ...], float] = {}

    def _note_epsilon(self, accountant: RDPAccountant) -> None:
        """Fold a user's cumulative ε, computed after its training, into the running max.

        Users with the same history of (σ, q, steps) have the same ε, so it is computed once per
        distinct history: Opacus takes 0.1-0.25 s per ``get_epsilon`` call, which would
        otherwise be most of a round at 100 users (pfl itself accounts centrally, once).
        """
        history = tuple(accountant.history)
        if history not in self._epsilon_of_history:
            self._epsilon_of_history[history] = accountant.get_epsilon(delta=self.workload.delta)
        self.epsilon_max = max(self.epsilon_max, self._epsilon_of_history[history])

    def train_one_user(
        self,
        initial_model_state: Any,
        model: PyTorchModel,
        user_dataset: Dataset,
        central_context: Any,
    ) -> tuple[Any, Metrics]:
        """One user's round: DP-SGD from the central weights; the model difference is returned."""
        workload = self.workload
        features, labels = user_dataset.raw_data
        network = copy.deepcopy(model.pytorch_model.net)  # the central weights, free of hooks
        network.train()  # pfl evaluated the model just before (eval mode); Opacus refuses it
        loader = DataLoader(
            TensorDataset(torch.from_numpy(features), torch.from_numpy(labels)),
            batch_size=workload.batch_size,
            shuffle=True,
        )
        optimizer = torch.optim.SGD(network.parameters(), lr=workload.lr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus: "Secure RNG turned off"
            engine = PrivacyEngine()
            # The user's accountant survives the round: ε accumulates as in Privet's ledger.
            accountant = self.accountants.setdefault(user_dataset.user_id, RDPAccountant())
            engine.accountant = accountant
            made = engine.make_private(
                module=network,
                optimizer=optimizer,
                data_loader=loader,
                criterion=nn.CrossEntropyLoss(),
                noise_multiplier=workload.noise_multiplier,
                max_grad_norm=workload.max_grad_norm,
                grad_sample_mode=self.grad_sample_mode,
            )
            private_model, private_optimizer, private_loader = made[0], made[1], made[-1]
            criterion = made[2] if self.grad_sample_mode == "ghost" else nn.CrossEntropyLoss()
            private_model.train()
            for _ in range(workload.local_epochs):
                for batch_x, batch_y in private_loader:
                    private_optimizer.zero_grad()
                    criterion(private_model(batch_x), batch_y).backward()
                    private_optimizer.step()
        with torch.no_grad():
            for target, trained in zip(
                model.pytorch_model.net.parameters(), network.parameters(), strict=True
            ):
                target.copy_(trained)
        self._note_epsilon(accountant)
        self.round_trained += 1
        return model.get_model_difference(initial_model_state), Metrics()


class RoundClock(TrainingProcessCallback):
    """After each central iteration: test-set accuracy, max ε so far, and the time."""

    def __init__(
        self, algorithm: OpacusFedAvg, test: Dataset, eval_params: NNEvalHyperParams
    ) -> None:
        self.algorithm = algorithm
        self.test = test
        self.eval_params = eval_params
        self.report = ChildReport(SYSTEM, epsilon_kind="cumulative (RDP, one accountant per user)")

    def after_central_iteration(
        self, aggregate_metrics: Metrics, model: PyTorchModel, *, central_iteration: int
    ) -> tuple[bool, Metrics]:
        """Evaluate the new central model and stamp the end of the round."""
        metrics = model.evaluate(
            self.test, lambda name: StringMetricName(f"test {name}"), self.eval_params
        )
        accuracy = metrics[StringMetricName("test accuracy")].overall_value
        trained, self.algorithm.round_trained = self.algorithm.round_trained, 0
        self.report.add_round(accuracy, self.algorithm.epsilon_max, trained)
        return False, Metrics()


def run(workload: Workload, grad_sample_mode: str = "hooks", threads: int = 0) -> ChildReport:
    """Run the workload in pfl's in-process simulation and return the child's report.

    ``threads`` > 0 sets torch's intra-op threads (pfl leaves torch's default: one per core).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(workload.seed)
    np.random.seed(workload.seed)
    data = FederatedMnist(workload)

    def user_data(user_id: str, holdout: bool) -> Dataset:
        mine = data.client(int(user_id))
        arrays = (mine.holdout_x, mine.holdout_y) if holdout else (mine.train_x, mine.train_y)
        return Dataset(raw_data=arrays, user_id=user_id)

    user_ids = [str(i) for i in np.random.default_rng(workload.seed).permutation(workload.clients)]
    training = FederatedDataset(
        lambda uid: user_data(uid, holdout=False), get_user_sampler("minimize_reuse", user_ids)
    )
    validation = FederatedDataset(
        lambda uid: user_data(uid, holdout=True), get_user_sampler("minimize_reuse", user_ids)
    )
    network = build_mlp(workload, data.feature_shape, data.num_classes)
    model = PyTorchModel(
        model=PflModule(network),
        local_optimizer_create=torch.optim.SGD,
        # FedAvg: the averaged update is applied as is (a step of 1 along the mean difference).
        central_optimizer=torch.optim.SGD(network.parameters(), lr=1.0),
    )
    backend = SimulatedBackend(
        training_data=training, val_data=validation, postprocessors=[WeightByDatapoints()]
    )
    algorithm = OpacusFedAvg(workload, grad_sample_mode)
    eval_params = NNEvalHyperParams(local_batch_size=EVAL_BATCH)
    test = Dataset(raw_data=(np.array(data.test.features), np.array(data.test.labels)))
    clock = RoundClock(algorithm, test, eval_params)
    algorithm.run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=workload.rounds,
            evaluation_frequency=1,
            train_cohort_size=workload.per_round,
            val_cohort_size=workload.per_round,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_num_epochs=workload.local_epochs,
            local_learning_rate=workload.lr,
            local_batch_size=workload.batch_size,
        ),
        model_eval_params=eval_params,
        callbacks=[clock],
    )
    clock.report.notes.append(
        f"Opacus grad_sample_mode={grad_sample_mode}; torch threads {torch.get_num_threads()}"
    )
    return clock.report


def main(argv: list[str] | None = None) -> None:
    """Child entry point: run the workload and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    Workload.add_argument(parser)
    parser.add_argument("--grad-sample-mode", default="hooks", choices=("hooks", "ghost"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: its default")
    args = parser.parse_args(argv)
    exit_child(lambda: run(Workload.from_args(args), args.grad_sample_mode, args.threads).emit())


if __name__ == "__main__":
    main()
