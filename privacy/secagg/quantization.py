"""Quantization of clipped float updates to integers mod 2^b, and back, for secure aggregation.

Secure aggregation sums vectors in the ring Z_{2^b}; the floats a client sends must first become
integers. Each client has already clipped its update to L2 norm ``C``, so every coordinate lies in
[−C, C] (|x_i| ≤ ‖x‖₂ ≤ C). We place ``levels`` grid points evenly on that interval,
``x ≈ −C + q·Δ`` with ``Δ = 2C / (levels − 1)`` and ``q ∈ {0, …, levels − 1}``, and round
stochastically (unbiased: E[q·Δ − C] = x, error strictly below one step Δ), as in the
"stochastic rounding" of Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", ICML 2021, §4.

Overflow is impossible by construction: a sum of at most ``num_clients`` grid indices is at most
``num_clients · (levels − 1)``, and the bit width b is chosen so that this is below 2^b. The sum
taken mod 2^b therefore equals the true integer sum, and ``dequantize_sum`` subtracts the offset
``C`` once per summed client. A coordinate outside [−C, C] (a client that did not clip, or float
round-off) is clipped to the interval and counted in ``QuantizedUpdate.clipped``; nothing is
silent.

Rounding and the norm bound. Stochastic rounding moves each coordinate by less than one step, so
it can take a vector of norm C to norm C + step·√d: if the server's noise is calibrated to C
(client-level DP), that would be a larger sensitivity than the accountant assumes. With a
``norm_bound``, `quantize` uses conditional randomized rounding (Kairouz, Liu & Steinke 2021,
§4.1): the vector is first scaled into the ball of radius `conditional_rounding_radius` (slightly
below the bound), then rounded again and again until the *rounded* vector's norm is within the
bound. The bound is then a hard guarantee checked on the released values themselves, whatever the
rounding did; the radius only makes a redraw rare (probability ≤ `ROUNDING_FAILURE` each).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# The ring arithmetic is done in numpy uint64 with explicit masking; 62 bits leave headroom so that
# adding two reduced values never wraps the uint64 itself before the mask is applied.
MAX_BITS = 62
DEFAULT_LEVELS = 2**16

ROUNDING_FAILURE = 1e-6
"""β of conditional randomized rounding: the chance that one rounding of a vector inside the
radius exceeds the norm bound and is drawn again (Kairouz, Liu & Steinke 2021, §4.1)."""
MAX_ROUNDING_TRIES = 64
"""Redraws before giving up: each fails with probability ≤ β, so 64 in a row mean a bug."""


class QuantizationError(ValueError):
    """A quantization spec that cannot be honoured, or an input that cannot be quantized."""


def required_bits(num_clients: int, levels: int) -> int:
    """Smallest b with num_clients · (levels − 1) < 2^b, so that no sum can wrap mod 2^b."""
    return max(1, (num_clients * (levels - 1)).bit_length())


@dataclass(frozen=True)
class QuantizationSpec:
    """How floats in [−clip_norm, clip_norm] map to integers mod 2^bits, for up to num_clients.

    Attributes:
        clip_norm: the L2 bound C each client's update was clipped to.
        num_clients: the most clients whose values are ever summed (the cohort size).
        levels: grid points on [−C, C]; the grid step is ``step = 2C / (levels − 1)``.
        bits: ring size 2^bits; ``None`` picks the smallest width that cannot overflow. An explicit
            width smaller than that is rejected.

    Error bound: for one client and one coordinate, the dequantized value differs from the
    (clipped) float by strictly less than ``step`` and equals it in expectation (stochastic
    rounding). A sum over m clients is off by less than ``m · step`` per coordinate, and in
    practice by about ``step · sqrt(m) / 2`` (independent errors of variance at most step²/4).

    """

    clip_norm: float
    num_clients: int
    levels: int = DEFAULT_LEVELS
    bits: int | None = None
    step: float = field(init=False)
    sum_bound: int = field(init=False)

    def __post_init__(self) -> None:
        """Validate the spec and fix the bit width so that no sum can overflow."""
        if not (isinstance(self.clip_norm, (int, float)) and not isinstance(self.clip_norm, bool)):
            raise QuantizationError(f"clip_norm must be a number, got {self.clip_norm!r}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise QuantizationError(f"clip_norm must be positive and finite, got {self.clip_norm}")
        if isinstance(self.num_clients, bool) or not isinstance(self.num_clients, int):
            raise QuantizationError(f"num_clients must be an int, got {self.num_clients!r}")
        if self.num_clients < 1:
            raise QuantizationError(f"num_clients must be at least 1, got {self.num_clients}")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2:
            raise QuantizationError(f"levels must be an int of at least 2, got {self.levels!r}")
        needed = required_bits(self.num_clients, self.levels)
        if needed > MAX_BITS:
            raise QuantizationError(
                f"{self.num_clients} clients at {self.levels} levels need {needed} bits, "
                f"more than the supported {MAX_BITS}; use fewer levels"
            )
        bits = needed if self.bits is None else self.bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not needed <= bits <= MAX_BITS:
            raise QuantizationError(
                f"bits must be an int in [{needed}, {MAX_BITS}] for {self.num_clients} clients "
                f"at {self.levels} levels, got {self.bits!r}"
            )
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "step", 2.0 * float(self.clip_norm) / (self.levels - 1))
        object.__setattr__(self, "sum_bound", self.num_clients * (self.levels - 1))

    @property
    def modulus(self) -> int:
        """The ring size 2^bits."""
        return 1 << int(self.bits)  # type: ignore[arg-type]

    @property
    def mask(self) -> np.uint64:
        """Bit mask 2^bits − 1 for reducing uint64 values mod 2^bits."""
        return np.uint64(self.modulus - 1)

    def error_bound(self, num_summed: int = 1) -> float:
        """Deterministic bound on the per-coordinate error of a sum of ``num_summed`` clients."""
        return num_summed * self.step


@dataclass(frozen=True)
class QuantizedUpdate:
    """One client's update as grid indices in [0, levels − 1], flattened, with its layout.

    ``clipped`` counts coordinates that lay outside [−C, C] and were clipped before rounding.
    """

    values: np.ndarray
    shapes: tuple[tuple[int, ...], ...]
    clipped: int


def conditional_rounding_radius(
    norm_bound: float, dimension: int, step: float, failure: float = ROUNDING_FAILURE
) -> float:
    """The radius r ≤ ``norm_bound`` to clip to before rounding so the rounded norm stays within.

    For ‖x‖ ≤ r, randomized rounding to a grid of spacing γ in d dimensions gives, with
    probability at least 1 − β (Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian
    Mechanism", §4.1):

        ‖x̃‖² ≤ min(r² + dγ²/4 + √(2 ln(1/β))·γ·(r + γ√d/2),  (r + γ√d)²),

    the second term holding always (every coordinate moves by less than γ). The radius returned is
    the largest r for which one of the two is at most ``norm_bound``². Raises QuantizationError
    when the grid is so coarse that rounding alone exceeds the bound.
    """
    if not (math.isfinite(norm_bound) and norm_bound > 0):
        raise QuantizationError(f"norm bound must be positive and finite, got {norm_bound}")
    if dimension < 1 or not (math.isfinite(step) and step > 0) or not 0 < failure < 1:
        raise QuantizationError("dimension, step and failure probability must be positive")
    a = math.sqrt(2.0 * math.log(1.0 / failure))
    root_d = math.sqrt(dimension)
    # r² + aγ·r + (dγ²/4 + aγ²√d/2 − B²) ≤ 0
    constant = dimension * step**2 / 4 + a * step**2 * root_d / 2 - norm_bound**2
    discriminant = (a * step) ** 2 - 4 * constant
    probable = (-a * step + math.sqrt(discriminant)) / 2 if discriminant >= 0 else -math.inf
    certain = norm_bound - step * root_d
    radius = min(norm_bound, max(probable, certain))
    if not radius > 0:
        # dγ²/4 < B² is needed: γ < 2B/√d, i.e. levels − 1 > √d·(grid range)/B.
        raise QuantizationError(
            f"rounding {dimension} coordinates on a grid of step {step:.3g} cannot keep the "
            f"update's norm within {norm_bound:.6g}; use more levels (at least "
            f"{math.ceil(2 * root_d) + 2} for a grid on [-S, S])"
        )
    return radius


def _flatten(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    if len(arrays) == 0:
        raise QuantizationError("update has no arrays; nothing to quantize")
    shapes = tuple(tuple(int(d) for d in np.shape(a)) for a in arrays)
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    return flat, shapes


def quantize(
    arrays: Sequence[np.ndarray],
    spec: QuantizationSpec,
    rng: np.random.Generator | None = None,
    norm_bound: float | None = None,
) -> QuantizedUpdate:
    """Map a clipped update to grid indices by unbiased stochastic rounding.

    ``rng`` drives only the rounding dither (not a secret); by default it is seeded from the
    operating system. Non-finite values are an error: they cannot be clipped meaningfully.

    With ``norm_bound`` B the rounding is conditional (see the module docstring): the values the
    indices stand for, −C + q·step, are guaranteed to have L2 norm ≤ B, so B is the sensitivity
    of a sum of such vectors. The update is scaled into `conditional_rounding_radius` first.
    """
    flat, shapes = _flatten(arrays)
    if not np.all(np.isfinite(flat)):
        raise QuantizationError("update contains NaN or infinite values; cannot quantize")
    c = float(spec.clip_norm)
    clipped = int(np.count_nonzero(np.abs(flat) > c))
    if rng is None:
        rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    if norm_bound is not None:
        radius = conditional_rounding_radius(norm_bound, flat.size, spec.step)
        norm = float(np.sqrt(np.dot(flat, flat)))
        if norm > radius:
            flat *= radius / norm
    # Position on the grid in units of the step, clipped to the grid (this also clips values
    # outside [−C, C] and float round-off at the ends); computed in place on the flat copy.
    pos = flat
    pos += c
    pos *= 1.0 / spec.step
    np.clip(pos, 0.0, float(spec.levels - 1), out=pos)
    low = np.floor(pos)
    pos -= low  # the fractional part: round up with exactly this probability
    base = low.astype(np.uint64)
    for _ in range(MAX_ROUNDING_TRIES):
        q = base + (rng.random(pos.shape) < pos)
        if norm_bound is None or rounded_norm(q, spec) <= norm_bound:
            return QuantizedUpdate(values=q, shapes=shapes, clipped=clipped)
    raise QuantizationError(
        f"conditional rounding exceeded the norm bound {norm_bound:.6g} {MAX_ROUNDING_TRIES} "
        "times in a row; the update was not clipped to the bound"
    )


def rounded_norm(values: np.ndarray, spec: QuantizationSpec) -> float:
    """L2 norm of the vector that grid indices stand for, −C + q·step (what the sum adds up)."""
    real = np.asarray(values, dtype=np.float64) * spec.step - float(spec.clip_norm)
    return float(np.sqrt(np.dot(real, real)))


def sum_mod(vectors: Sequence[np.ndarray], spec: QuantizationSpec) -> np.ndarray:
    """Sum uint64 vectors mod 2^bits (the plain-text reference for secure aggregation)."""
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.uint64))
    for v in vectors:
        total = (total + np.asarray(v, dtype=np.uint64)) & spec.mask
    return total


def dequantize_sum(
    total: np.ndarray,
    num_summed: int,
    spec: QuantizationSpec,
    shapes: Sequence[Sequence[int]],
) -> list[np.ndarray]:
    """Turn a sum mod 2^bits of ``num_summed`` clients' grid indices back into float arrays.

    Because the spec's bit width cannot overflow, the value mod 2^bits is the true integer sum;
    a value above the largest possible sum means the inputs were not produced by this spec.
    """
    if isinstance(num_summed, bool) or not isinstance(num_summed, int):
        raise QuantizationError(f"num_summed must be an int, got {num_summed!r}")
    if not 1 <= num_summed <= spec.num_clients:
        raise QuantizationError(f"num_summed must be in [1, {spec.num_clients}], got {num_summed}")
    total = np.asarray(total, dtype=np.uint64)
    sizes = [math.prod(s) for s in shapes]
    if total.ndim != 1 or total.size != sum(sizes):
        raise QuantizationError(
            f"sum has {total.size} coordinates but the shapes need {sum(sizes)}"
        )
    if total.size and int(total.max()) > num_summed * (spec.levels - 1):
        raise QuantizationError(
            f"sum exceeds {num_summed} x {spec.levels - 1}; "
            "inputs were not quantized with this spec"
        )
    flat = total.astype(np.float64) * spec.step - num_summed * float(spec.clip_norm)
    return split_flat(flat, shapes)


def split_flat(flat: np.ndarray, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """A flat vector cut into consecutive arrays of ``shapes`` (their sizes must add up to it)."""
    out: list[np.ndarray] = []
    start = 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[start : start + size].reshape(tuple(shape)))
        start += size
    return out
