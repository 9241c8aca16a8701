"""Turning client updates into the next global model: FedAvg, and DP-FedAvg at the client level.

Plain NumPy, no Flower. Clients send *updates* (local weights minus global weights).
- Without client-level DP the server averages updates weighted by example counts (FedAvg).
- With client-level DP (McMahan et al., ICLR 2018) every update is clipped to L2 norm S by its
  client; the server checks the bound, sums, adds Gaussian noise of std z·S to the sum and divides
  by the *expected* number of clients per round, so one client can move the result by at most
  S / expected. With adaptive clipping (Andrew et al., NeurIPS 2021) S follows a target quantile of
  the update norms, estimated from a noised count of clients whose update was within S.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Float slack when checking a client's clipped norm against S.
CLIP_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ClientUpdate:
    """One client's update as received by the server."""

    client_id: int
    update: list[np.ndarray]
    num_examples: int
    within_clip: bool | None = None


def l2_norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm of a model-shaped list of arrays, taken as one flat vector."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def weighted_mean_update(updates: Sequence[ClientUpdate]) -> list[np.ndarray]:
    """FedAvg: the example-weighted mean of the updates, summed in client-id order."""
    ordered = sorted(updates, key=lambda item: item.client_id)
    total = sum(item.num_examples for item in ordered)
    mean = [np.zeros(part.shape, dtype=np.float64) for part in ordered[0].update]
    for item in ordered:
        for acc, part in zip(mean, item.update, strict=True):
            acc += part.astype(np.float64) * (item.num_examples / total)
    return mean


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al.'s geometric update of S towards a target quantile of update norms."""

    target_quantile: float
    learning_rate: float
    count_stddev: float


@dataclass(frozen=True)
class RoundAggregate:
    """What one DP-FedAvg round produced, for the round's record."""

    mean_update: list[np.ndarray]
    aggregated: list[int]
    rejected: list[int]
    clip_norm_used: float
    clip_norm_next: float
    noised_within_fraction: float | None


class ClientLevelAggregator:
    """Sums clipped updates, adds the Gaussian noise, and adapts the clip norm."""

    def __init__(
        self,
        update_noise_multiplier: float,
        clip_norm: float,
        expected_clients: float,
        rng: np.random.Generator,
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        self.update_noise_multiplier = update_noise_multiplier
        self.clip_norm = clip_norm
        self.expected_clients = expected_clients
        self.adaptive = adaptive
        self._rng = rng

    def aggregate(
        self, updates: Sequence[ClientUpdate], shapes: Sequence[tuple[int, ...]]
    ) -> RoundAggregate:
        """The noised mean update; updates above the clip bound are rejected and logged.

        Noise is added even when no client was sampled: the release happens either way.
        """
        clip = self.clip_norm
        accepted: list[ClientUpdate] = []
        rejected: list[int] = []
        for item in sorted(updates, key=lambda u: u.client_id):
            norm = l2_norm(item.update)
            if not math.isfinite(norm) or norm > clip * (1 + CLIP_TOLERANCE):
                logger.warning(
                    "rejected the update of client %d: norm %.6g exceeds the clip norm %.6g",
                    item.client_id,
                    norm,
                    clip,
                )
                rejected.append(item.client_id)
            else:
                accepted.append(item)
        total = [np.zeros(shape, dtype=np.float64) for shape in shapes]
        for item in accepted:
            for acc, part in zip(total, item.update, strict=True):
                acc += part.astype(np.float64)
        within = sum(1 for item in accepted if item.within_clip)
        return self.release_sum(total, [item.client_id for item in accepted], within, rejected)

    def release_sum(
        self,
        total: Sequence[np.ndarray],
        aggregated: list[int],
        within_clip: int,
        rejected: list[int] | None = None,
    ) -> RoundAggregate:
        """Noise a sum of clipped updates, divide by the expected count, adapt the clip norm.

        Under secure aggregation the server has only this sum (and the count of updates within
        S), never the single updates, so it cannot check norms: the clients clip.
        """
        clip = self.clip_norm
        sigma = self.update_noise_multiplier * clip
        mean = [
            (np.asarray(acc, dtype=np.float64) + self._rng.normal(0.0, sigma, size=acc.shape))
            / self.expected_clients
            for acc in total
        ]
        within_fraction = None
        if self.adaptive is not None:
            noised = within_clip + self._rng.normal(0.0, self.adaptive.count_stddev)
            within_fraction = noised / self.expected_clients
            self.clip_norm = clip * math.exp(
                -self.adaptive.learning_rate * (within_fraction - self.adaptive.target_quantile)
            )
        return RoundAggregate(
            mean_update=mean,
            aggregated=list(aggregated),
            rejected=list(rejected or []),
            clip_norm_used=clip,
            clip_norm_next=self.clip_norm,
            noised_within_fraction=within_fraction,
        )


def apply_update(weights: Sequence[np.ndarray], update: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Global weights plus an update, kept in each array's dtype."""
    return [
        (w.astype(np.float64) + u).astype(w.dtype) for w, u in zip(weights, update, strict=True)
    ]
