"""One client round, as plain code: budget check, DP-SGD, write-ahead ledger, update clipping.

The Flower ClientApp only converts messages to and from these functions, so the same round runs in
Flower's simulation runtime, in a deployment and in unit tests.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from privet.client.device import resolve_device
from privet.client.local_plan import LocalPlan, plan_local_training
from privet.client.node_data import NodeData
from privet.client.trainer import train_locally
from privet.privacy import ClientPrivacy, PoissonGaussianSteps, PrivacyLedger
from privet.task.config import RunConfig
from privet.task.models import set_weights
from privet.task.task import build_task_model, task_named

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientTrainReport:
    """What a client releases after training: its model update and its privacy so far."""

    status: ClientPrivacy
    update: list[np.ndarray]
    within_clip: bool | None


@dataclass(frozen=True)
class ClientDecline:
    """A client that did not train because the round would take it past its budget."""

    status: ClientPrivacy
    reason: str


def round_seed(config: RunConfig, server_round: int, client_id: int, purpose: int = 0) -> int:
    """A per-client, per-round seed for DP noise, sampling or dither.

    Derived from the run's seed when the run is reproducible (different for every round, client
    and purpose), else fresh from the operating system.
    """
    return config.random_seed(server_round, client_id, purpose)


def client_plan(config: RunConfig, num_examples: int) -> LocalPlan:
    """The client's DP-SGD schedule for the whole run, from the run configuration.

    With a target ε, σ is calibrated by the run's accountant, the one its ε is reported by.
    """
    return plan_local_training(
        num_examples=num_examples,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        rounds=config.rounds,
        delta=config.delta,
        noise_multiplier=config.noise_multiplier,
        target_epsilon=config.target_epsilon,
        accountant=config.accountant,
    )


def _status(
    config: RunConfig, data: NodeData, plan: LocalPlan, ledger: PrivacyLedger
) -> ClientPrivacy:
    steps = ledger.steps()
    return ClientPrivacy(
        client_id=data.client_id,
        num_examples=len(data.train),
        epsilon=ledger.epsilon(config.accountant),
        delta=config.delta,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=steps,
        rounds_participated=len(ledger.rounds()),
    )


def clip_update(update: list[np.ndarray], clip_norm: float) -> tuple[list[np.ndarray], bool]:
    """Scale the update to L2 norm ≤ `clip_norm`; also say whether it was within the bound."""
    norm = math.sqrt(sum(float(np.sum(np.square(part, dtype=np.float64))) for part in update))
    within = norm <= clip_norm
    scale = 1.0 if within else clip_norm / norm
    return [(part * scale).astype(part.dtype) for part in update], within


def run_training_round(
    config: RunConfig,
    data: NodeData,
    global_weights: list[np.ndarray],
    ledger: PrivacyLedger,
    server_round: int,
    clip_norm: float | None = None,
) -> ClientTrainReport | ClientDecline:
    """Train one round from the global weights, unless that would exceed the client's budget.

    The round's DP-SGD events are recorded in `ledger` (and its file) before the update is
    returned, so the ledger never under-reports what left the client.
    """
    plan = client_plan(config, len(data.train))
    planned = [PoissonGaussianSteps(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)]
    if config.epsilon_budget is not None:
        after = ledger.epsilon_if_bounded(planned, config.accountant)
        if after > config.epsilon_budget:
            reason = (
                f"round {server_round} would take epsilon to {after:.4g}, above the budget "
                f"{config.epsilon_budget:g}"
            )
            logger.info("client %d declines: %s", data.client_id, reason)
            return ClientDecline(_status(config, data, plan, ledger), reason)
    task = task_named(config.task)
    model = build_task_model(
        task, config.model, data.train.feature_shape, data.train.num_classes, config.seed
    )
    set_weights(model, global_weights)  # the travelling tensors; the rest stay as built
    result = train_locally(
        model,
        data.train,
        plan,
        batch_size=config.batch_size,
        max_grad_norm=config.max_grad_norm,
        learning_rate=config.lr,
        local_epochs=config.local_epochs,
        seed=round_seed(config, server_round, data.client_id),
        device=resolve_device(config.device),
        task=task,
    )
    ledger.record(server_round, result.events)
    # The update: the change of each travelling tensor, in state-dict order (the task's format).
    update = [
        (new.astype(np.float64) - old.astype(np.float64)).astype(np.float32)
        for new, old in zip(result.weights, global_weights, strict=True)
    ]
    within: bool | None = None
    if clip_norm is not None:
        update, within = clip_update(update, clip_norm)
    return ClientTrainReport(_status(config, data, plan, ledger), update, within)


def run_local_evaluation(
    config: RunConfig, data: NodeData, global_weights: list[np.ndarray]
) -> tuple[int, float, float]:
    """(examples, loss, accuracy) of the global model on the node's held-out validation slice."""
    task = task_named(config.task)
    model = build_task_model(
        task, config.model, data.train.feature_shape, data.train.num_classes, config.seed
    )
    set_weights(model, global_weights)
    metrics = task.evaluate(model, data.validation, resolve_device(config.device))
    return len(data.validation), metrics.loss, metrics.accuracy


def torch_threads_for_client() -> None:
    """One intra-op thread per client process: the simulation runs one client per core."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
