"""One client round, as plain code: plan, train with DP-SGD, account, evaluate.

The Flower ClientApp only converts messages to and from these functions, so the same round runs in
Flower's simulation runtime, in a deployment and in unit tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from client.device import resolve_device
from client.local_plan import LocalPlan, plan_local_training
from client.node_data import NodeData
from client.trainer import train_locally
from privacy import PoissonGaussianSteps, epsilon_for
from task.config import RunConfig
from task.evaluation import evaluate_model
from task.models import build_model, set_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientTrainReport:
    """What a client releases after a round: new weights and its cumulative privacy spent."""

    client_id: int
    weights: list[np.ndarray]
    num_examples: int
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    rounds_participated: int
    history: list[PoissonGaussianSteps]


def round_seed(seed: int, server_round: int, client_id: int) -> int:
    """A per-client, per-round seed: reproducible, and different for every (round, client)."""
    return int(np.random.SeedSequence([seed, server_round, client_id]).generate_state(1)[0])


def client_plan(config: RunConfig, num_examples: int) -> LocalPlan:
    """The client's DP-SGD schedule for the whole run, from the run configuration."""
    return plan_local_training(
        num_examples=num_examples,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        rounds=config.rounds,
        delta=config.delta,
        noise_multiplier=config.noise_multiplier,
        target_epsilon=config.target_epsilon,
    )


def run_training_round(
    config: RunConfig,
    data: NodeData,
    global_weights: list[np.ndarray],
    history: list[PoissonGaussianSteps],
    server_round: int,
) -> ClientTrainReport:
    """Train one round from the global weights; return weights and ε over the whole history."""
    device = resolve_device(config.device)
    plan = client_plan(config, len(data.train))
    model = build_model(
        config.model, data.train.feature_shape, data.train.num_classes, seed=config.seed
    )
    set_weights(model, global_weights)
    result = train_locally(
        model,
        data.train,
        plan,
        batch_size=config.batch_size,
        max_grad_norm=config.max_grad_norm,
        learning_rate=config.lr,
        local_epochs=config.local_epochs,
        seed=round_seed(config.seed, server_round, data.client_id),
        device=device,
    )
    full_history = [*history, *result.events]
    total_steps = sum(event.steps for event in full_history)
    return ClientTrainReport(
        client_id=data.client_id,
        weights=result.weights,
        num_examples=result.num_examples,
        epsilon=epsilon_for(full_history, config.delta),
        delta=config.delta,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=total_steps,
        rounds_participated=total_steps // plan.steps_per_round,
        history=full_history,
    )


def run_local_evaluation(
    config: RunConfig, data: NodeData, global_weights: list[np.ndarray]
) -> tuple[int, float, float]:
    """(examples, loss, accuracy) of the global model on the node's held-out validation slice."""
    model = build_model(
        config.model, data.train.feature_shape, data.train.num_classes, seed=config.seed
    )
    set_weights(model, global_weights)
    loss, accuracy = evaluate_model(model, data.validation, resolve_device(config.device))
    return len(data.validation), loss, accuracy


def torch_threads_for_client() -> None:
    """One intra-op thread per client process: the simulation runs one client per core."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
