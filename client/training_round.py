"""One client round, as plain code: budget check, DP-SGD, write-ahead ledger, update clipping.

The Flower ClientApp only converts messages to and from these functions, so the same round runs in
Flower's simulation runtime, in a deployment and in unit tests.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from privet.client.device import resolve_device
from privet.client.local_plan import LocalPlan, plan_local_training
from privet.client.node_data import NodeData
from privet.client.trainer import PrivateStepObserver, train_locally
from privet.privacy import ClientPrivacy, PoissonGaussianSteps, PrivacyLedger
from privet.task.config import RunConfig
from privet.task.models import set_weights
from privet.task.task import build_task_model, task_named

logger = logging.getLogger(__name__)

NODE_BUDGET_NAME = "node-epsilon-budget"
"""The node config key of a node's lifetime ε budget (read by `client.app`)."""


@dataclass(frozen=True)
class ClientTrainReport:
    """What a client releases after training: its model update and its privacy (run, lifetime)."""

    status: ClientPrivacy
    update: list[np.ndarray]
    within_clip: bool | None
    train_seconds: float | None = None
    """Wall-clock seconds of the round's local DP training (model built, Opacus, every step)."""
    steps: int | None = None
    """DP-SGD steps the round ran."""
    gpu_peak_bytes: int | None = None
    """The most GPU memory the round's training held at once (None: on the CPU)."""


@dataclass(frozen=True)
class ClientDecline:
    """A client that did not train because the round would take it past a budget (`reason`)."""

    status: ClientPrivacy
    reason: str


def round_seed(config: RunConfig, server_round: int, client_id: int, purpose: int = 0) -> int:
    """A per-client, per-round seed for DP noise, sampling or dither.

    Derived from the run's seed when the run is reproducible (different for every round, client
    and purpose), else fresh from the operating system.
    """
    return config.random_seed(server_round, client_id, purpose)


def distributed_noise_seed(config: RunConfig, server_round: int, client_id: int) -> bytes | None:
    """The seed of a client's distributed-DP noise: only in a reproducible run, else None.

    None makes the client draw its noise share from the operating system's randomness.
    """
    if not config.reproducible:
        return None
    words = np.random.SeedSequence([config.seed, server_round, client_id, 3]).generate_state(8)
    return words.astype("<u4").tobytes()


def planned_client_noise(config: RunConfig) -> float | None:
    """Under distributed DP, the z the run's own configuration calibrates (None otherwise).

    A client checks the noise shares the server asks for against it (`check_noise_share`).
    """
    if not config.distributed_dp:
        return None
    if config.client_target_epsilon is None:
        return config.client_noise_multiplier
    from privet.privacy.calibration import distributed_noise_for_target_epsilon

    return distributed_noise_for_target_epsilon(
        config.client_target_epsilon, config.delta, config.client_sample_rate, config.rounds
    )


def client_plan(config: RunConfig, num_examples: int) -> LocalPlan:
    """The client's DP-SGD schedule for the whole run, from the run configuration.

    With a target ε, σ is calibrated by the run's accountant, the one its ε is reported by, for
    the run's own ε: earlier runs on the node's ledger do not change σ (a node's lifetime budget
    is enforced by declining, see `budget_problem`).
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


def client_status(
    config: RunConfig,
    data: NodeData,
    plan: LocalPlan,
    ledger: PrivacyLedger,
    run_token: str | None = None,
) -> ClientPrivacy:
    """What the client reports: this run's own ε, steps and rounds, and its lifetime figures.

    The run's figures come from the ledger entries tagged `run_token` alone, the lifetime ones
    from every entry (earlier runs included), both at the run's δ by the run's accountant; the
    ledger's entry count and digest name the state they were computed from.
    """
    run_epsilon = ledger.run_epsilon(run_token, config.accountant, delta=config.delta)
    only_this_run = ledger.only_run(run_token)
    lifetime = run_epsilon if only_this_run else ledger.epsilon(config.accountant)
    return ClientPrivacy(
        client_id=data.client_id,
        num_examples=len(data.train),
        epsilon=run_epsilon,
        delta=config.delta,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=ledger.run_steps(run_token),
        rounds_participated=len(ledger.run_rounds(run_token)),
        lifetime_epsilon=lifetime,
        lifetime_steps=ledger.steps(),
        ledger_entries=len(ledger.entries),
        ledger_digest=ledger.digest(),
    )


def budget_problem(
    config: RunConfig,
    plan: LocalPlan,
    ledger: PrivacyLedger,
    server_round: int,
    run_token: str | None = None,
    node_epsilon_budget: float | None = None,
) -> str | None:
    """Why the client must decline `server_round` (one line naming the numbers), or None.

    Three checks, all before any work, on the ledger's events plus what the round would add:

    - the run's `epsilon_budget`: the run's own ε after this round;
    - the node's lifetime budget (node config `node-epsilon-budget`), with a `target-epsilon`
      run, at the run's first round on this node: σ is calibrated for the run's own ε, so if
      the whole planned run at that σ would take the node's lifetime ε above its budget, the node
      refuses the run outright (saying what earlier runs spent, where the plan would end, and the
      budget) instead of dropping out part way;
    - the node's lifetime budget: the lifetime ε (every run, at this run's δ) after this round.
      With a fixed σ a node thus trains until its next round would exceed the budget.
    """
    planned = [PoissonGaussianSteps(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)]
    if config.epsilon_budget is not None:
        after = ledger.run_epsilon_if_bounded(run_token, planned, config.accountant)
        if after > config.epsilon_budget:
            return (
                f"round {server_round} would take epsilon to {after:.4g}, above the budget "
                f"{config.epsilon_budget:g}"
            )
    if node_epsilon_budget is None:
        return None
    if config.target_epsilon is not None and not ledger.run_entries(run_token):
        whole = PoissonGaussianSteps(plan.noise_multiplier, plan.sample_rate, plan.planned_steps)
        end = ledger.epsilon_if_bounded([whole], config.accountant)
        if end > node_epsilon_budget:
            spent = ledger.epsilon(config.accountant)
            return (
                f"this node already spent epsilon {spent:.4g} in earlier runs, and this run's "
                f"plan (target epsilon {config.target_epsilon:g}: sigma "
                f"{plan.noise_multiplier:.4g} for {plan.planned_steps} steps) would take its "
                f"lifetime epsilon to {end:.4g}, above its {NODE_BUDGET_NAME} "
                f"{node_epsilon_budget:g}; raise that budget or give this run a smaller "
                "target-epsilon"
            )
    after = ledger.epsilon_if_bounded(planned, config.accountant)
    if after > node_epsilon_budget:
        return (
            f"round {server_round} would take this node's lifetime epsilon to {after:.4g}, "
            f"above its {NODE_BUDGET_NAME} {node_epsilon_budget:g}"
        )
    return None


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
    *,
    run_token: str | None = None,
    node_epsilon_budget: float | None = None,
    step_observer: PrivateStepObserver | None = None,
) -> ClientTrainReport | ClientDecline:
    """Train one round from the global weights, unless that would exceed a budget.

    The round's DP-SGD events are recorded in `ledger` (and its file), tagged with `run_token`,
    before the update is returned, so the ledger never under-reports what left the client. The
    ledger reports at the run's δ from here on; the budgets are those of `budget_problem`. With
    a target ε, σ is calibrated for the run's own ε (`client_plan`), never for the lifetime.
    """
    plan = client_plan(config, len(data.train))
    ledger.use_delta(config.delta)
    reason = budget_problem(config, plan, ledger, server_round, run_token, node_epsilon_budget)
    if reason is not None:
        logger.info("client %d declines: %s", data.client_id, reason)
        return ClientDecline(client_status(config, data, plan, ledger, run_token), reason)
    task = task_named(config.task)
    model = node_model(config, data)
    set_weights(model, global_weights)  # the travelling tensors; the rest stay as built
    started = time.perf_counter()
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
        physical_batch_size=config.physical_batch_size,
        precision=config.precision,
        step_observer=step_observer,
    )
    train_seconds = time.perf_counter() - started
    ledger.record(server_round, result.events, run=run_token)
    # The update: the change of each travelling tensor, in state-dict order (the task's format).
    update = [
        (new.astype(np.float64) - old.astype(np.float64)).astype(np.float32)
        for new, old in zip(result.weights, global_weights, strict=True)
    ]
    within: bool | None = None
    if clip_norm is not None:
        update, within = clip_update(update, clip_norm)
    status = client_status(config, data, plan, ledger, run_token)
    return ClientTrainReport(
        status, update, within, train_seconds, result.steps, result.gpu_peak_bytes
    )


def node_model(config: RunConfig, data: NodeData) -> torch.nn.Module:
    """The run's model as this node builds it for its examples (adapters included, if any)."""
    return build_task_model(
        task_named(config.task),
        config.model,
        data.train.feature_shape,
        data.train.num_classes,
        config.seed,
        lora=config.lora,
    )


def run_local_evaluation(
    config: RunConfig, data: NodeData, global_weights: list[np.ndarray]
) -> tuple[int, float, float]:
    """(examples, loss, accuracy) of the global model on the node's held-out validation slice."""
    task = task_named(config.task)
    model = node_model(config, data)
    set_weights(model, global_weights)
    metrics = task.evaluate(model, data.validation, resolve_device(config.device))
    return len(data.validation), metrics.loss, metrics.accuracy


def torch_threads_for_client() -> None:
    """One intra-op thread per client process: the simulation runs one client per core."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
