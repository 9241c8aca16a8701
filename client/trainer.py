"""Local DP-SGD with Opacus: one round of a client's training, accounted from what actually ran.

What is learned comes from the run's task (privet.task.task): how the examples become tensors,
the loss Opacus wraps, which parameters train (the rest are frozen before Opacus sees the model),
the optimizer, and which tensors the round returns (those that travel).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, Dataset

from privet.client.local_plan import LocalPlan
from privet.privacy import PoissonGaussianSteps
from privet.task.datasets import ArrayDataset
from privet.task.dp_compatible import make_dp_compatible
from privet.task.models import get_weights
from privet.task.task import (
    DEFAULT_TASK,
    Task,
    freeze_for_training,
    task_named,
    travelling_keys,
)

logger = logging.getLogger(__name__)


class AccountingMismatchError(RuntimeError):
    """What Opacus recorded differs from what the plan promised: the ε would not be trustworthy."""


@dataclass(frozen=True)
class LocalTrainResult:
    """A client's new weights and the privacy events of the round that produced them.

    `weights` are the tensors that travel (the task's update format), in state-dict order.
    """

    weights: list[np.ndarray]
    num_examples: int
    events: list[PoissonGaussianSteps]
    steps: int
    grad_sample_mode: str
    gpu_peak_bytes: int | None = None
    """The most GPU memory the round held at once (None: it trained on the CPU)."""


class PrivateStepObserver(Protocol):
    """Something that watches (or adds to) every noisy DP-SGD step of a client's round.

    `privet audit` uses it to add gradient canaries to the clipped sum before Opacus adds the
    noise, and to see the noisy step Opacus releases. Only an audit passes one: a normal run
    trains exactly as without this seam.
    """

    def attach(
        self,
        optimizer: DPOptimizer,
        parameters: Mapping[str, nn.Parameter],
        plan: LocalPlan,
    ) -> None:
        """Hook into `optimizer` (Opacus' own, after `make_private`) for this round's steps.

        `parameters` are the trainable parameters by their name in the plain model.
        """


StepObservers = Callable[[int], PrivateStepObserver | None]
"""For a client id, what watches its DP-SGD steps (None: nothing does)."""


PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
"""Forward-pass precisions: fp32, or bf16 autocast (parameters, gradients and noise stay fp32).

fp16 is not offered: it needs loss scaling, and a scaled loss scales every per-example gradient
before Opacus clips it, so the clip norm would no longer bound what it claims to."""


class InMemoryExamples(Dataset):
    """Examples held as two tensors (a task's inputs and targets); a batch is one indexing.

    A plain `TensorDataset` makes the DataLoader fetch examples one by one and stack them, which
    for small models costs as much as the DP-SGD step itself (benchmarks/dp_throughput.py).
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs[chosen], self.targets[chosen]


def _already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collation for `InMemoryExamples`, whose batches arrive stacked."""
    return batch


def supports_ghost_clipping(model: nn.Module) -> bool:
    """True when Opacus has a ghost-norm or per-sample rule for every layer with parameters."""
    known = set(GradSampleModuleFastGradientClipping.NORM_SAMPLERS) | set(
        GradSampleModuleFastGradientClipping.GRAD_SAMPLERS
    )
    for module in model.modules():
        owns_parameters = any(p.requires_grad for p in module.parameters(recurse=False))
        if owns_parameters and type(module) not in known:
            return False
    return True


ADAPTER_FRACTION = 0.1
"""A model that trains at most this fraction of its parameters, the rest frozen, is "adapters"."""


def grad_sample_mode(model: nn.Module) -> str:
    """How Opacus gets per-example gradient norms: "ghost" clipping or "hooks".

    Ghost clipping (two backward passes, no per-example gradients kept) when it has a rule for
    every layer that trains, except for adapters on a frozen backbone (at most
    `ADAPTER_FRACTION` of the parameters train): their per-example gradients are small, and
    ghost clipping's second backward pass runs through the whole backbone. Measured by
    benchmarks/dp_lora.py (13.4M-parameter BERT, LoRA rank 8, 2-core CPU): a DP step took 1.27×
    a plain one with ghost clipping and 0.81× with hooks, in the same memory.
    """
    parameters = [(p.numel(), p.requires_grad) for p in model.parameters()]
    total = sum(size for size, _ in parameters)
    trained = sum(size for size, trains in parameters if trains)
    if trained < total and trained <= ADAPTER_FRACTION * total:
        return "hooks"
    return "ghost" if supports_ghost_clipping(model) else "hooks"


def train_locally(
    model: nn.Module,
    data: ArrayDataset,
    plan: LocalPlan,
    *,
    batch_size: int,
    max_grad_norm: float,
    learning_rate: float,
    local_epochs: int,
    seed: int,
    device: torch.device,
    task: Task | None = None,
    physical_batch_size: int | None = None,
    precision: str = "fp32",
    step_observer: PrivateStepObserver | None = None,
) -> LocalTrainResult:
    """Run `local_epochs` of Opacus DP-SGD with Poisson sampling on `data`, starting from `model`.

    `task` (default: classification) gives the tensors, the loss, the trainable parameters (the
    others are frozen, so only these are clipped, noised and stepped), the optimizer and the
    tensors returned (those that travel). `seed` drives both the Poisson sampler and the
    Gaussian noise, so a simulation is reproducible. The returned events come from Opacus' own
    accountant hook (one per optimizer step that ran) and are checked against the plan; any
    disagreement raises `AccountingMismatchError`.

    `physical_batch_size` bounds the examples of one forward and backward pass: a larger Poisson
    batch is processed in parts whose clipped gradients add up before the one noisy step
    (Opacus' BatchMemoryManager), so the DP batch, the noise and ε do not change, only the
    memory. `step_observer` (audits only) is attached to Opacus' optimizer before the first
    step. `precision` "bf16" runs the forward pass under bfloat16 autocast. On a GPU the
    round's peak memory is measured and the cache emptied afterwards, so clients that share a
    GPU one after another do not pile up memory.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    task = task if task is not None else task_named(DEFAULT_TASK)
    if len(data) != plan.num_examples:
        raise AccountingMismatchError(
            f"the plan was made for {plan.num_examples} examples but the data has {len(data)}"
        )
    model = make_dp_compatible(model).to(device)
    travelling = travelling_keys(task, model)
    freeze_for_training(task, model)  # before Opacus: frozen parameters get no gradient at all
    model.train()
    mode = grad_sample_mode(model)
    dataset = InMemoryExamples(*task.tensors(data))
    sampler_generator = torch.Generator().manual_seed(seed)
    noise_generator = torch.Generator(device=device).manual_seed(seed + 1)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        generator=sampler_generator,
        # torch's types say collate_fn gets a list of examples; with `__getitems__` it gets that
        # method's batch instead (torch/utils/data/_utils/fetch.py), which they do not describe.
        collate_fn=_already_batched,  # type: ignore[arg-type]
    )
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = task.optimizer(list(trainable.values()), learning_rate)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off; Privet states the noise source in its results.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        # Opacus asks a Hugging Face model whether it checkpoints activations by transformers'
        # old name, which transformers 5 deprecates with a warning on every call.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        engine = PrivacyEngine(accountant="rdp")
        made = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=task.criterion(),
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise_generator,
            grad_sample_mode=mode,
        )
    if mode == "ghost":
        private_model, private_optimizer, criterion, private_loader = made
    else:
        private_model, private_optimizer, private_loader = made
        criterion = task.criterion()
    if private_loader.batch_sampler.sample_rate != plan.sample_rate:
        raise AccountingMismatchError(
            f"Opacus samples at rate {private_loader.batch_sampler.sample_rate}, "
            f"the plan has {plan.sample_rate}"
        )
    if len(private_loader) * local_epochs != plan.steps_per_round:
        raise AccountingMismatchError(
            f"Opacus will run {len(private_loader) * local_epochs} steps per round, "
            f"the plan has {plan.steps_per_round}"
        )

    if step_observer is not None:
        step_observer.attach(private_optimizer, trainable, plan)
    steps_run = 0
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        # Ghost clipping's double backward pass makes torch warn that inputs need no gradient.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        # A model's own randomness (dropout, as in pretrained transformers) draws from torch's
        # global generator: seeded for the round here and put back after, so a round is the
        # same whatever ran before it in the process (a resumed run, many clients in one).
        forked = []
        if device.type == "cuda":
            forked = [device.index if device.index is not None else torch.cuda.current_device()]
        stack.enter_context(torch.random.fork_rng(devices=forked))
        torch.manual_seed(seed + 2)
        batches: DataLoader = private_loader
        if physical_batch_size is not None:
            batches = stack.enter_context(
                BatchMemoryManager(
                    data_loader=private_loader,
                    max_physical_batch_size=physical_batch_size,
                    optimizer=private_optimizer,
                )
            )
        for _ in range(local_epochs):
            for inputs, targets in batches:
                inputs, targets = inputs.to(device), targets.to(device)
                # Opacus keeps the clipped sum of a batch's earlier parts across this call.
                private_optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = task.loss(private_model(inputs), targets, criterion)
                loss.backward()
                private_optimizer.step()
                # A part of a larger batch only adds its clipped gradients: no step, no noise.
                if not private_optimizer._is_last_step_skipped:
                    steps_run += 1

    events = [
        PoissonGaussianSteps(float(sigma), float(rate), int(count))
        for sigma, rate, count in engine.accountant.history
    ]
    _check_events(events, plan, steps_run)
    # Hand the caller's model back without Opacus' hooks and per-sample gradient buffers.
    plain_model = private_model.to_standard_module()
    weights = get_weights(plain_model, travelling)
    peak = None
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
        del private_model, private_optimizer, plain_model, model
        torch.cuda.empty_cache()  # the next client sharing this GPU starts from nothing
    return LocalTrainResult(
        weights=weights,
        num_examples=len(data),
        events=events,
        steps=steps_run,
        grad_sample_mode=mode,
        gpu_peak_bytes=peak,
    )


def _check_events(events: list[PoissonGaussianSteps], plan: LocalPlan, steps_run: int) -> None:
    """Refuse to report privacy unless Opacus accounted exactly the steps, σ and q that ran."""
    recorded = sum(event.steps for event in events)
    if recorded != steps_run or steps_run != plan.steps_per_round:
        raise AccountingMismatchError(
            f"Opacus accounted {recorded} steps, the loop ran {steps_run}, "
            f"the plan has {plan.steps_per_round}"
        )
    for event in events:
        if event.noise_multiplier != plan.noise_multiplier or not np.isclose(
            event.sample_rate, plan.sample_rate, rtol=1e-12, atol=0
        ):
            raise AccountingMismatchError(
                f"Opacus accounted sigma={event.noise_multiplier}, q={event.sample_rate}; "
                f"the plan has sigma={plan.noise_multiplier}, q={plan.sample_rate}"
            )
