"""Checking a simulation before it starts: data, shards, models and every client's DP plan.

Everything that depends on the data (too many clients, δ ≥ 1/n, an unreachable target ε, a model
that does not fit the data) is found here, in the main process, before any Flower machinery starts,
so a bad run fails in a second with one clear line.
"""

from __future__ import annotations

from dataclasses import dataclass

from privet.client.device import resolve_device
from privet.client.local_plan import LocalPlan
from privet.client.node_data import client_shards, load_federated_data, split_shard
from privet.client.training_round import client_plan
from privet.privacy import PoissonGaussianSteps, epsilon_for
from privet.server.client_dp import ClientLevelPlan, plan_client_level
from privet.server.secure_aggregation import conditional_rounding_ratio
from privet.task.config import RunConfig
from privet.task.datasets import MissingValues
from privet.task.models import get_weights
from privet.task.task import build_task_model, task_named


@dataclass(frozen=True)
class ClientPlan:
    """One virtual client's share of the data and its DP-SGD schedule."""

    client_id: int
    train_examples: int
    validation_examples: int
    local: LocalPlan
    planned_epsilon: float


@dataclass(frozen=True)
class SimulationPlan:
    """The whole federation's plan, as checked before the run."""

    config: RunConfig
    clients: list[ClientPlan]
    test_examples: int
    num_classes: int
    feature_shape: tuple[int, ...]
    client_level: ClientLevelPlan | None = None
    missing: MissingValues | None = None  # tabular data: missing values and the policy's action

    @property
    def planned_epsilon_max(self) -> float:
        """The largest ε any client reaches if it trains in every round."""
        return max(client.planned_epsilon for client in self.clients)


def plan_simulation(config: RunConfig) -> SimulationPlan:
    """Load and split the data and plan every client; raises a one-line error if anything fails."""
    resolve_device(config.device)  # `cuda` without a GPU fails here, before any client starts
    data = load_federated_data(config)
    model = build_task_model(
        task_named(config.task),
        config.model,
        data.train.feature_shape,
        data.train.num_classes,
        config.seed,
        lora=config.lora,
    )
    # Secure aggregation's grid is sized for the update: the tensors that travel.
    conditional_rounding_ratio(config, sum(int(w.size) for w in get_weights(model)))
    clients = []
    for client_id, shard in enumerate(client_shards(config)):
        train_idx, validation_idx = split_shard(shard, client_id, config.seed)
        local = client_plan(config, len(train_idx))
        planned = epsilon_for(
            [PoissonGaussianSteps(local.noise_multiplier, local.sample_rate, local.planned_steps)],
            config.delta,
            config.accountant,
        )
        clients.append(ClientPlan(client_id, len(train_idx), len(validation_idx), local, planned))
    client_level = plan_client_level(config)
    return SimulationPlan(
        client_level=client_level,
        missing=data.missing,
        config=config,
        clients=clients,
        test_examples=len(data.test),
        num_classes=data.train.num_classes,
        feature_shape=data.train.feature_shape,
    )
