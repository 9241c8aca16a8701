"""Distributed DP inside secure aggregation: each client noises its own integer update (issue 16).

With client-level DP and secure aggregation alone, the server unmasks the exact sum of the clipped
updates and noises it itself: it must be trusted with that sum. With distributed DP every sampled
client adds a share of discrete Gaussian noise to its update *before* masking, so the only thing
the server can ever unmask is a sum that already carries the DP noise (Kairouz, Liu, Steinke,
"The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation",
ICML 2021). The server adds no noise.

A client's part (`DistributedDpSpec.encode`), in the ring Z_m, m = 2^bits:

1. clip the update x to L2 norm S (it already is; checked again here);
2. rotate it with the randomized Hadamard transform of the round's public seed
   (`privacy.rotation`), which spreads its energy evenly over d′ (a power of two) coordinates;
3. divide by the scale γ (the grid step) and round to integers with conditional randomized
   rounding: scale into a radius just below Δ = S/γ, round each coordinate up with the
   probability of its fractional part, and redraw until the rounded vector's norm is ≤ Δ. Δ is
   then a hard bound on every client's integer vector, checked on the values themselves: it is the
   L2 sensitivity the accountant uses;
4. add d′ draws of the discrete Gaussian of variance parameter σ² = W/n (`privacy.discrete_noise`,
   exact, from the operating system's randomness; n is the round's cohort, the clients sampled);
5. reduce modulo m (modular clipping), and hand the vector to SecAgg+ to mask.

The server's part (`DistributedDpSpec.decode`): the unmasked sum mod m is read in [−m/2, m/2),
multiplied by γ and rotated back. A coordinate whose true sum left that interval wraps around;
the server cannot see wraps, but a wrapped coordinate lands near the interval's edges, so it
counts the coordinates in the outer sixteenth of the ring on each side, |value| ≥ 7m/16
(`edge_count`): an upper bound on the round's wraps whenever no true sum is beyond 9m/16 (the
plan puts m/2 at about 5 standard deviations of a coordinate, so 9m/16 is about 5.6 of them). The
plan makes a wrap rare: γ is the finest grid for which the expected number of wrapped
coordinates of a round is at most `WRAP_TARGET`.

The noise is sized for dropouts, and so that it does not depend on who was sampled. The run fixes
the grid (γ, Δ) and the cohort's total noise variance W = ⌈z²Δ²/φ⌉ once, for a noise fraction φ
(the secure-aggregation threshold as a fraction of the cohort); a round of n sampled clients asks
each for W/n, a rational variance, and is unmasked only with t ≥ ⌈φ·n⌉ survivors, who carry
t·W/n ≥ z²Δ². When nobody drops, the sum's noise is exactly W whatever n is, which is what lets
the sampling amplify (`privacy.distributed_rdp`); with dropouts the accountant charges what the
survivors carried, without that amplification (`privacy.events.DistributedDiscreteGaussianRound`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from statistics import NormalDist

import numpy as np

from privet.privacy.discrete_noise import (
    MAX_ARRAY_VARIANCE,
    array_variance_fits,
    discrete_gaussian_array,
)
from privet.privacy.events import MIN_SHARE_VARIANCE as EVENT_MIN_SHARE_VARIANCE
from privet.privacy.rotation import padded_dimension, rotate, unrotate
from privet.privacy.secagg.crypto import RandomSource
from privet.privacy.secagg.quantization import (
    MAX_ROUNDING_TRIES,
    QuantizationError,
    conditional_rounding_radius,
    split_flat,
)

__all__ = [
    "DEFAULT_BITS",
    "MAX_BITS",
    "MIN_BITS",
    "MAX_TOTAL_VARIANCE",
    "MIN_SHARE_VARIANCE",
    "WRAP_TARGET",
    "DistributedDpError",
    "DistributedDpSpec",
    "plan_spec",
    "survivors_needed",
]

MIN_BITS = 8
MAX_BITS = 32
DEFAULT_BITS = 16
WRAP_TARGET = 0.01
"""The expected number of wrapped coordinates per round the grid is planned for."""
ROTATION_SEED_BYTES = 16
MAX_TOTAL_VARIANCE = 2 * MAX_ARRAY_VARIANCE
"""The largest total noise variance W (grid units²) a run is planned with: its shares W/n, n ≥ 2
(secure aggregation's fewest clients), stay within the exact array sampler's range
(`discrete_noise.array_variance_fits`)."""
MIN_SHARE_VARIANCE = EVENT_MIN_SHARE_VARIANCE
"""The smallest share W/n (grid units²) that counts as a discrete Gaussian share (and keeps
Kairouz et al.'s correction τ negligible); the accountant knows it too."""

_KEYS = {
    "bits": "ddp-bits",
    "scale": "ddp-scale",
    "norm_bound": "ddp-norm-bound",
    "total_variance": "ddp-total-variance",
    "cohort": "ddp-cohort",
    "dimension": "ddp-dimension",
    "rotation_seed": "ddp-rotation-seed",
    "min_survivors": "ddp-min-survivors",
}


class DistributedDpError(ValueError):
    """Distributed-DP settings that cannot work, or a message that does not follow the protocol."""


@dataclass(frozen=True)
class DistributedDpSpec:
    """One round's distributed-DP encoding, fixed by the server and sent to every sampled client.

    Attributes:
        bits: the ring Z_m of secure aggregation, m = 2^bits.
        scale: γ, the size of one integer step in update units.
        norm_bound: Δ = S/γ, the L2 bound of every client's rounded integer vector (grid units).
        total_variance: W, the variance of the cohort's summed noise per coordinate (grid
            units²), the same in every round of the run.
        cohort: n, the clients sampled this round; each adds a share of variance W/n.
        dimension: the update's coordinates d (the vector has d′ = next power of two).
        rotation_seed: the round's public rotation seed.
        min_survivors: t; a round with fewer survivors is not unmasked.

    """

    bits: int
    scale: float
    norm_bound: float
    total_variance: int
    cohort: int
    dimension: int
    rotation_seed: bytes
    min_survivors: int

    def __post_init__(self) -> None:
        def whole(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise DistributedDpError(f"distributed DP: {name} must be an integer")
            if not low <= int(value) <= high:
                raise DistributedDpError(f"distributed DP: {name} must lie in [{low}, {high}]")

        whole("bits", MIN_BITS, MAX_BITS)
        whole("total_variance", 1, MAX_TOTAL_VARIANCE)
        whole("cohort", 1, 1 << 20)
        whole("dimension", 1, 1 << 40)
        whole("min_survivors", 1, 1 << 30)
        if self.min_survivors > self.cohort:
            raise DistributedDpError(
                "distributed DP: min_survivors must not exceed the round's cohort"
            )
        if self.local_variance < MIN_SHARE_VARIANCE:
            raise DistributedDpError(
                f"distributed DP: a share of {float(self.local_variance):.6g} grid units² is below "
                f"{MIN_SHARE_VARIANCE}, too coarse to count as a discrete Gaussian share"
            )
        if not array_variance_fits(self.local_variance):
            raise DistributedDpError(
                f"distributed DP: a share of {float(self.local_variance):.6g} grid units² is "
                "outside the exact sampler's range"
            )
        for name in ("scale", "norm_bound"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DistributedDpError(f"distributed DP: {name} must be a number")
            if not (math.isfinite(value) and value > 0):
                raise DistributedDpError(f"distributed DP: {name} must be positive and finite")
        if not isinstance(self.rotation_seed, bytes) or len(self.rotation_seed) != (
            ROTATION_SEED_BYTES
        ):
            raise DistributedDpError(
                f"distributed DP: the rotation seed must be {ROTATION_SEED_BYTES} bytes"
            )

    @property
    def modulus(self) -> int:
        """M = 2^bits."""
        return 1 << self.bits

    @property
    def padded_dimension(self) -> int:
        """d′, the length of the vector each client masks."""
        return padded_dimension(self.dimension)

    @property
    def clip_norm(self) -> float:
        """S = Δ·γ, the clip norm in update units."""
        return self.norm_bound * self.scale

    @property
    def local_variance(self) -> Fraction:
        """σ² = W/n, the variance parameter of each client's discrete Gaussian share."""
        return Fraction(self.total_variance, self.cohort)

    @property
    def noise_stddev(self) -> float:
        """The std of one client's noise share in update units (γ·σ, for reports)."""
        return self.scale * math.sqrt(self.local_variance)

    def total_noise_multiplier(self, survivors: int) -> float:
        """Noise of a sum of ``survivors`` shares over the sensitivity: √(s·W/n)/Δ."""
        return math.sqrt(survivors * self.total_variance / self.cohort) / self.norm_bound

    def for_cohort(self, cohort: int, min_survivors: int) -> DistributedDpSpec:
        """The run's grid and noise for a round of ``cohort`` clients and its survivors needed."""
        return replace(self, cohort=cohort, min_survivors=min_survivors)

    def expected_wraps(self, clients: int) -> float:
        """Expected wrapped coordinates of a round of ``clients`` (a Gaussian model of the sum).

        Each coordinate of the sum has std at most √(n²Δ²/d′ + n·σ² + n/4) grid units (the
        rotated updates, at worst all aligned; the noise; the rounding) and wraps when it leaves
        [−m/2, m/2).
        """
        return _expected_wraps(
            self.modulus, self.padded_dimension, clients, self.norm_bound, self.total_variance
        )

    def to_config(self) -> dict[str, int | float | bytes]:
        """The spec as train-config keys (``ddp-*``)."""
        return {key: getattr(self, name) for name, key in _KEYS.items()}

    @classmethod
    def from_config(cls, values: Mapping[str, object]) -> DistributedDpSpec | None:
        """The spec in a train config; None when the round has no distributed DP."""
        present = [key for key in _KEYS.values() if key in values]
        if not present:
            return None
        missing = [key for key in _KEYS.values() if key not in values]
        if missing:
            raise DistributedDpError(f"train config lacks the distributed-DP key {missing[0]}")
        return cls(**{name: values[key] for name, key in _KEYS.items()})  # type: ignore[arg-type]

    def encode(
        self,
        update: Sequence[np.ndarray],
        dither: np.random.Generator,
        noise_bytes: RandomSource = os.urandom,
    ) -> np.ndarray:
        """The client's noised share of the sum: a uint64 vector of d′ values in [0, m).

        ``dither`` drives the rounding only (its randomness is not what protects privacy);
        the noise comes from ``noise_bytes``, the operating system's unless a reproducible
        simulation passes a seeded source.
        """
        flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in update])
        if flat.size != self.dimension:
            raise DistributedDpError(
                f"distributed DP: the server expects {self.dimension} update values, the model "
                f"has {flat.size}"
            )
        if not np.all(np.isfinite(flat)):
            raise DistributedDpError("distributed DP: the update has NaN or infinite values")
        norm = float(np.linalg.norm(flat))
        if norm > self.clip_norm:
            flat *= self.clip_norm / norm
        grid = rotate(flat, self.rotation_seed) / self.scale
        rounded = round_within(grid, self.norm_bound, dither)
        noised = rounded + discrete_gaussian_array(self.local_variance, grid.size, noise_bytes)
        return np.mod(noised, self.modulus).astype(np.uint64)

    def centred(self, aggregate: np.ndarray) -> np.ndarray:
        """The unmasked sum mod m read as integers in [−m/2, m/2)."""
        values = np.asarray(aggregate, dtype=np.uint64)
        if values.ndim != 1 or values.size != self.padded_dimension:
            raise DistributedDpError(
                f"distributed DP: the sum has {values.size} values, expected "
                f"{self.padded_dimension}"
            )
        if values.size and int(values.max()) >= self.modulus:
            raise DistributedDpError("distributed DP: the sum has values outside the ring")
        signed = values.astype(np.int64)
        signed[signed >= self.modulus // 2] -= self.modulus
        return signed

    def edge_count(self, aggregate: np.ndarray) -> int:
        """Coordinates of the sum with |value| ≥ 7m/16: an upper bound on the round's wraps."""
        edge = 7 * self.modulus // 16
        return int(np.count_nonzero(np.abs(self.centred(aggregate)) >= edge))

    def decode(self, aggregate: np.ndarray, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """The noised sum of the updates, in update units and the model's shapes."""
        flat = unrotate(self.centred(aggregate) * self.scale, self.rotation_seed, self.dimension)
        sizes = [math.prod(shape) for shape in shapes]
        if sum(sizes) != self.dimension:
            raise DistributedDpError(
                f"distributed DP: the shapes hold {sum(sizes)} values, the sum {self.dimension}"
            )
        return split_flat(flat, shapes)


def round_within(grid: np.ndarray, norm_bound: float, dither: np.random.Generator) -> np.ndarray:
    """Conditional randomized rounding of ``grid`` to integers whose L2 norm is ≤ ``norm_bound``.

    The vector is first scaled into `conditional_rounding_radius` (so one rounding exceeds the
    bound with probability ≤ 10⁻⁶), then rounded up with the probability of each fractional part
    until the rounded vector is within the bound (Kairouz, Liu, Steinke 2021, Section 4.1).
    """
    try:
        radius = conditional_rounding_radius(norm_bound, grid.size, 1.0)
    except QuantizationError as error:
        raise DistributedDpError(f"distributed DP: {error}") from None
    norm = float(np.linalg.norm(grid))
    values = grid * (radius / norm) if norm > radius else grid.copy()
    low = np.floor(values)
    fraction = values - low
    base = low.astype(np.int64)
    for _ in range(MAX_ROUNDING_TRIES):
        rounded = base + (dither.random(values.shape) < fraction)
        if float(np.linalg.norm(rounded.astype(np.float64))) <= norm_bound:
            return rounded
    raise DistributedDpError(
        f"distributed DP: rounding exceeded the norm bound {MAX_ROUNDING_TRIES} times in a row"
    )


def _expected_wraps(
    modulus: int, padded: int, clients: int, norm_bound: float, total_variance: float
) -> float:
    variance = clients**2 * norm_bound**2 / padded + total_variance + clients * 0.25
    tail = 2 * NormalDist().cdf(-(modulus / 2) / math.sqrt(variance))
    return padded * tail


def survivors_needed(cohort: int, noise_fraction: float) -> int:
    """⌈φ·n⌉: the fewest survivors whose shares W/n carry the planned noise (at least 1)."""
    return max(1, min(cohort, math.ceil(noise_fraction * cohort - 1e-9)))


def plan_spec(
    *,
    clip_norm: float,
    noise_multiplier: float,
    clients: int,
    noise_fraction: float,
    dimension: int,
    bits: int,
    rotation_seed: bytes,
) -> DistributedDpSpec:
    """The run's grid and noise, as the spec of a round of ``clients`` (the grid's cohort).

    The finest grid for which a round of ``clients`` wraps about `WRAP_TARGET` coordinates: each
    coordinate of the sum must stay within k standard deviations of the ring's half-width,
    k = Φ⁻¹(1 − WRAP_TARGET/(2d′)). With Δ = S/γ and the cohort's noise W = z²Δ²/φ, that std is
    √(Δ²·(n²/d′ + z²/φ) + n/4), which fixes Δ (and γ = S/Δ). W is rounded up to an integer,
    which only adds noise, and capped at `MAX_TOTAL_VARIANCE` (the grid is then coarser than the
    ring allows, and wraps rarer). Other rounds use the same grid and W for their own cohort
    (`DistributedDpSpec.for_cohort`): the grid must not depend on who was sampled. Raises
    `DistributedDpError` when the ring is too small for the rounding of d′ coordinates or each
    share would be below `MIN_SHARE_VARIANCE`.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise DistributedDpError("distributed DP needs a positive noise multiplier")
    if not (math.isfinite(noise_fraction) and 0 < noise_fraction <= 1):
        raise DistributedDpError(
            f"distributed DP: the noise fraction must lie in (0, 1], got {noise_fraction!r}"
        )
    if clients < 1:
        raise DistributedDpError("distributed DP: a round needs at least one client")
    padded = padded_dimension(dimension)
    modulus = 1 << bits
    k = NormalDist().inv_cdf(1 - WRAP_TARGET / (2 * padded))
    room = (modulus / (2 * k)) ** 2 - clients / 4
    spread = clients**2 / padded + noise_multiplier**2 / noise_fraction
    if room <= 0:
        raise DistributedDpError(
            f"distributed DP: {bits} bits cannot hold the sum of {clients} clients; "
            "raise --secagg-bits"
        )
    norm_bound = math.sqrt(room / spread)
    total_variance = math.ceil(noise_multiplier**2 * norm_bound**2 / noise_fraction)
    if total_variance > MAX_TOTAL_VARIANCE:
        norm_bound = math.sqrt((MAX_TOTAL_VARIANCE - 1) * noise_fraction) / noise_multiplier
        total_variance = math.ceil(noise_multiplier**2 * norm_bound**2 / noise_fraction)
        total_variance = min(total_variance, MAX_TOTAL_VARIANCE)
    if total_variance < MIN_SHARE_VARIANCE * clients:
        raise DistributedDpError(
            f"distributed DP: at {bits} bits each of {clients} clients' noise shares would have "
            f"variance {total_variance / clients:.3g} grid units, too coarse to count as a "
            "discrete Gaussian share; raise --secagg-bits"
        )
    try:
        radius = conditional_rounding_radius(norm_bound, padded, 1.0)
    except QuantizationError:
        radius = 0.0
    if radius < 0.5 * norm_bound:
        raise DistributedDpError(
            f"distributed DP: at {bits} bits, rounding {padded} coordinates would take more than "
            "half of each update's norm; raise --secagg-bits"
        )
    return DistributedDpSpec(
        bits=bits,
        scale=clip_norm / norm_bound,
        norm_bound=norm_bound,
        total_variance=total_variance,
        cohort=clients,
        dimension=dimension,
        rotation_seed=rotation_seed,
        min_survivors=survivors_needed(clients, noise_fraction),
    )


def rounding_shrink(spec: DistributedDpSpec) -> float:
    """r/Δ: how much conditional rounding shrinks an update of norm S before rounding (≤ 1)."""
    return conditional_rounding_radius(spec.norm_bound, spec.padded_dimension, 1.0) / (
        spec.norm_bound
    )
