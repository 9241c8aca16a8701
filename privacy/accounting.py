"""Events that describe what a DP-SGD client released, and the ε they add up to.

An event is an immutable record of work that actually ran (in the style of Google's
`dp-accounting`): `steps` steps of the Poisson-subsampled Gaussian mechanism with one noise
multiplier and one sample rate. The accountant composes a client's whole history of events, across
every round it took part in, so the ε reported is cumulative and never reset.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opacus.accountants.analysis import rdp as opacus_rdp

# The orders Opacus' RDP accountant uses by default (opacus/accountants/rdp.py), so the numbers
# Privet prints agree with what an Opacus user would compute for the same run.
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
)


@dataclass(frozen=True)
class PoissonGaussianSteps:
    """`steps` DP-SGD steps, each sampling at rate `sample_rate` and adding N(0, (σ·C)²) noise."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(
                f"noise multiplier must be finite and >= 0, got {self.noise_multiplier}"
            )
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 0:
            raise ValueError(f"step count must be >= 0, got {self.steps}")

    def to_list(self) -> list[float]:
        """Plain numbers for JSON and Flower records: [σ, q, steps]."""
        return [float(self.noise_multiplier), float(self.sample_rate), float(self.steps)]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> PoissonGaussianSteps:
        """Inverse of `to_list`; rejects anything that is not exactly three numbers."""
        if len(values) != 3:
            raise ValueError(f"an event is [sigma, q, steps], got {list(values)!r}")
        sigma, q, steps = values
        if float(steps) != int(steps):
            raise ValueError(f"step count must be an integer, got {steps}")
        return cls(float(sigma), float(q), int(steps))


def compose(events: Iterable[PoissonGaussianSteps]) -> list[PoissonGaussianSteps]:
    """Merge consecutive events with the same (σ, q) so a long history stays short."""
    merged: list[PoissonGaussianSteps] = []
    for event in events:
        if event.steps == 0:
            continue
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.noise_multiplier == event.noise_multiplier
            and last.sample_rate == event.sample_rate
        ):
            merged[-1] = PoissonGaussianSteps(
                last.noise_multiplier, last.sample_rate, last.steps + event.steps
            )
        else:
            merged.append(event)
    return merged


def epsilon_for(
    events: Iterable[PoissonGaussianSteps],
    delta: float,
    orders: Sequence[float] = DEFAULT_RDP_ORDERS,
) -> float:
    """ε at `delta` of the composition of all `events`, by Rényi DP (Mironov et al. 2019).

    No events means nothing was released: ε = 0. A noise multiplier of 0 means no privacy: ε = ∞.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    history = compose(events)
    if not history:
        return 0.0
    if any(event.noise_multiplier == 0 for event in history):
        return math.inf
    total = sum(
        opacus_rdp.compute_rdp(
            q=event.sample_rate,
            noise_multiplier=event.noise_multiplier,
            steps=event.steps,
            orders=list(orders),
        )
        for event in history
    )
    with warnings.catch_warnings():
        # Opacus warns when the best order is at the edge of the range; the bound stays valid.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = opacus_rdp.get_privacy_spent(orders=list(orders), rdp=total, delta=delta)
    return float(eps)
