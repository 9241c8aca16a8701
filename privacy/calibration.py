"""The inverse problem: the smallest noise multiplier that keeps a planned run within a target ε."""

from __future__ import annotations

import math

from privacy.accounting import PoissonGaussianSteps, epsilon_for

# Above this σ DP-SGD learns nothing useful; a target that needs more is reported as unreachable.
MAX_NOISE_MULTIPLIER = 1000.0


class CalibrationError(ValueError):
    """A target ε that no noise multiplier within bounds can meet for the planned run."""


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    tolerance: float = 1e-4,
) -> float:
    """Smallest σ (to within `tolerance`) such that `steps` steps at `sample_rate` stay ≤ target ε.

    The search is a bisection on ε(σ), which decreases monotonically in σ; the result is rounded
    up, so the planned run never exceeds the target.
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise CalibrationError(f"target epsilon must be a positive number, got {target_epsilon}")
    if steps <= 0:
        raise CalibrationError(
            f"the planned run has no training steps ({steps}); nothing to calibrate"
        )

    def eps(sigma: float) -> float:
        return epsilon_for([PoissonGaussianSteps(sigma, sample_rate, steps)], delta)

    if eps(MAX_NOISE_MULTIPLIER) > target_epsilon:
        raise CalibrationError(
            f"target epsilon {target_epsilon:g} is unreachable at delta={delta:g} for {steps} "
            f"steps at sample rate {sample_rate:.4g}, even with noise multiplier "
            f"{MAX_NOISE_MULTIPLIER:g}; "
            "raise --target-epsilon or --delta, or train fewer rounds or epochs"
        )
    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, min(2 * high, MAX_NOISE_MULTIPLIER)
    while high - low > tolerance:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
