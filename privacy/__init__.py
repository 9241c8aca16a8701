"""Differential-privacy accounting and calibration, independent of Flower and of Privet."""

from privacy.accounting import (
    DEFAULT_RDP_ORDERS,
    PoissonGaussianSteps,
    compose,
    epsilon_for,
)
from privacy.calibration import CalibrationError, noise_for_target_epsilon

__all__ = [
    "DEFAULT_RDP_ORDERS",
    "CalibrationError",
    "PoissonGaussianSteps",
    "compose",
    "epsilon_for",
    "noise_for_target_epsilon",
]
