"""What a client will run before it runs it: sample rate, steps and the noise for the whole plan.

Opacus' Poisson loader samples each example with rate q = 1 / len(loader), where the loader has
ceil(n / batch) batches, and runs ceil(n / batch) steps per epoch. The plan uses the same numbers,
and the trainer checks the real loader against them, so the noise calibrated here is calibrated for
exactly the steps that will run.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from privet.privacy import DEFAULT_ACCOUNTANT, noise_for_target_epsilon

# The most DP-SGD steps one client may plan over a whole run (rounds × local epochs × batches).
# Ten million steps is days of training for every client even on a GPU (DP-SGD runs at tens to
# hundreds of steps a second): a plan beyond it is a typo (`--local-epochs 1000000000` ran until
# killed), refused before anything starts.
MAX_PLANNED_STEPS = 10_000_000


class PlanError(ValueError):
    """A local training plan that cannot give the privacy it promises."""


@dataclass(frozen=True)
class LocalPlan:
    """One client's DP-SGD schedule for the whole run (every planned round)."""

    num_examples: int
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    noise_multiplier: float

    @property
    def planned_steps(self) -> int:
        """Steps if the client takes part in every planned round."""
        return self.steps_per_round * self.planned_rounds


@functools.lru_cache(maxsize=256)
def plan_local_training(
    *,
    num_examples: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    delta: float,
    noise_multiplier: float | None,
    target_epsilon: float | None,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> LocalPlan:
    """The sample rate, steps and σ of a client with `num_examples` examples.

    Exactly one of `noise_multiplier` and `target_epsilon` is given; with a target, σ is calibrated
    for every planned round × local epoch by `accountant` (the run's `--accountant`, the one that
    reports the client's ε), so the client ends at or below the target by that accountant: PLD
    and PRV are tighter than RDP, so they meet the same target with less noise. The plan is a
    pure function of its arguments (the accountant included) and is remembered: calibrating costs
    tenths of a second (more with PLD or PRV), and in a simulation every client asks for its plan
    every round.
    """
    if num_examples < 1:
        raise PlanError("a client has no training examples; use fewer clients")
    if batch_size < 1:
        raise PlanError(f"batch size must be positive, got {batch_size}")
    if delta >= 1.0 / num_examples:
        raise PlanError(
            f"delta={delta:g} is not below 1/n = {1.0 / num_examples:.3g} for a client with "
            f"{num_examples} examples, so it would allow releasing an example outright; "
            "lower --delta or use fewer clients"
        )
    if (noise_multiplier is None) == (target_epsilon is None):
        raise PlanError("give exactly one of --noise-multiplier and --target-epsilon")
    batches = math.ceil(num_examples / batch_size)
    sample_rate = 1.0 / batches
    steps_per_round = batches * local_epochs
    if steps_per_round * rounds > MAX_PLANNED_STEPS:
        raise PlanError(
            f"a client with {num_examples} examples would run {steps_per_round * rounds:.3g} "
            f"DP-SGD steps ({rounds} rounds × {local_epochs} local epochs × {batches} batches), "
            f"more than the {MAX_PLANNED_STEPS:.0e} Privet plans for; lower --local-epochs or "
            "--rounds, or raise --batch-size"
        )
    if target_epsilon is not None:
        sigma = noise_for_target_epsilon(
            target_epsilon, delta, sample_rate, steps_per_round * rounds, accountant
        )
    else:
        assert noise_multiplier is not None
        sigma = noise_multiplier
    return LocalPlan(
        num_examples=num_examples,
        sample_rate=sample_rate,
        steps_per_round=steps_per_round,
        planned_rounds=rounds,
        noise_multiplier=sigma,
    )
