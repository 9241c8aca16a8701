"""Turning client updates into the next global model: FedAvg, and DP-FedAvg at the client level.

Plain NumPy, no Flower. Clients send *updates* (local weights minus global weights).
- Without client-level DP the server averages updates weighted by example counts (FedAvg).
- With client-level DP (McMahan et al., ICLR 2018) every update is clipped to L2 norm S by its
  client; the server checks the bound, sums, adds Gaussian noise of std z·S to the sum and divides
  by the *expected* number of clients per round, so one client can move the result by at most
  S / expected. With adaptive clipping (Andrew et al., NeurIPS 2021) S follows a target quantile of
  the update norms, estimated from a noised count of clients whose update was within S.

What each release can reveal about one client is fixed here, where the release is made, and the
accounting reads it from here (`COUNT_SENSITIVITY`, `ClientLevelAggregator.update_sensitivity`);
tests/test_sensitivity.py measures both from this code with neighbouring inputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privet.privacy.events import CENTRED_COUNT_SENSITIVITY

logger = logging.getLogger(__name__)

# Float slack when checking a client's clipped norm against S: an update up to this much above S
# (float32 round-off of the client's own clipping) is projected back onto the ball of radius S, so
# it is never summed above S; anything larger is rejected.
CLIP_TOLERANCE = 1e-5

COUNT_SENSITIVITY = CENTRED_COUNT_SENSITIVITY
"""The sensitivity of adaptive clipping's released count: `release_sum` releases the centred
count Σ(b_i − ½) plus a public constant, which one client moves by exactly ½."""


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
            for acc, part in zip(total, project_to_ball(item.update, clip), strict=True):
                acc += part
        within = sum(1 for item in accepted if item.within_clip)
        return self.release_sum(total, [item.client_id for item in accepted], within, rejected)

    @property
    def update_sensitivity(self) -> float:
        """The most one client can move the update sum this round: the clip norm S."""
        return self.clip_norm

    @property
    def count_sensitivity(self) -> float | None:
        """The most one client can move the released count (None: no count is released)."""
        return None if self.adaptive is None else COUNT_SENSITIVITY

    def release_sum(
        self,
        total: Sequence[np.ndarray],
        aggregated: list[int],
        within_clip: int,
        rejected: list[int] | None = None,
    ) -> RoundAggregate:
        """Noise a sum of clipped updates, divide by the expected count, adapt the clip norm.

        `total` sums the updates of the clients in `aggregated`, each of L2 norm ≤ S, and
        `within_clip` counts those whose update was within S before clipping. Under secure
        aggregation the server has only this sum and count, never the single updates, so it
        cannot check norms: the clients clip (and round within S, `privacy.secagg.quantization`).

        The count is released centred, as Andrew et al. (NeurIPS 2021, Sec. 3) analyse it:
        Σ(b_i − ½) + N(0, σ_b²), then ½ of the *expected* number of clients (a public constant)
        is added back. Adding or removing one client moves that by ½ (`COUNT_SENSITIVITY`); the
        raw count Σ b_i + N(0, σ_b²) would move by 1 and cost more than the ledger charges.
        """
        if not 0 <= within_clip <= len(aggregated):
            raise ValueError(
                f"{within_clip} updates within the clip norm out of {len(aggregated)} summed"
            )
        clip = self.clip_norm
        sigma = self.update_noise_multiplier * clip
        mean = [
            (np.asarray(acc, dtype=np.float64) + self._rng.normal(0.0, sigma, size=acc.shape))
            / self.expected_clients
            for acc in total
        ]
        within_fraction = None
        if self.adaptive is not None:
            centred = within_clip - 0.5 * len(aggregated)
            noised = centred + self._rng.normal(0.0, self.adaptive.count_stddev)
            within_fraction = (noised + 0.5 * self.expected_clients) / self.expected_clients
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


def project_to_ball(update: Sequence[np.ndarray], radius: float) -> list[np.ndarray]:
    """The update in float64, scaled down onto the L2 ball of `radius` if it lies outside."""
    parts = [np.asarray(part, dtype=np.float64) for part in update]
    norm = l2_norm(parts)
    if norm <= radius:
        return parts
    scale = radius / norm
    return [part * scale for part in parts]


def apply_update(weights: Sequence[np.ndarray], update: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Global weights plus an update, kept in each array's dtype."""
    return [
        (w.astype(np.float64) + u).astype(w.dtype) for w, u in zip(weights, update, strict=True)
    ]
