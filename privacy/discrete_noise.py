"""Exact samplers of discrete noise, for distributed DP inside secure aggregation (issue 16).

Distributed DP has each client add integer noise to its quantized update before masking, so the
sum the server unmasks already carries the noise. The noise must be exactly what the accountant
assumes: a floating-point approximation of a Gaussian, rounded, is not a discrete Gaussian, and
its privacy would not be what is printed. These samplers follow Canonne, Kamath and Steinke,
"The Discrete Gaussian for Differential Privacy" (NeurIPS 2020), Algorithms 1–3: every
probability is a rational number or exp of one, and every draw is made with integer arithmetic
from uniformly random bytes, so the output distribution is exactly the target one (up to the
randomness source).

- `bernoulli_exp`: Bernoulli(exp(−γ)) for a rational γ ≥ 0.
- `discrete_laplace`: P(x) ∝ exp(−|x|/t) on the integers, for an integer scale t ≥ 1.
- `discrete_gaussian`: P(x) ∝ exp(−x²/(2σ²)) on the integers, for a rational σ² > 0.

- `discrete_gaussian_array`: many draws of the discrete Gaussian of an integer or rational σ² at
  once, the same algorithms run on numpy integer arrays (a client noises a whole update in
  milliseconds); `array_variance_fits` says which σ² it takes.

Randomness comes from a `RandomSource` (n -> n bytes): the operating system's
(``os.urandom``) unless a caller passes a seeded source, which only a reproducible simulation
may do (`noise_source`). The scalar functions are pure Python (tens of microseconds a draw): they
are the reference the array sampler is tested against.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from privet.privacy.secagg.crypto import RandomSource, SeededRandom

__all__ = [
    "MAX_ARRAY_ACCEPTANCE_DENOMINATOR",
    "MAX_ARRAY_VARIANCE",
    "array_variance_fits",
    "bernoulli",
    "bernoulli_exp",
    "discrete_gaussian",
    "discrete_gaussian_array",
    "discrete_gaussian_pmf",
    "discrete_laplace",
    "noise_source",
    "uniform_below",
]

Rational = Fraction | int


def noise_source(seed: bytes | None) -> RandomSource:
    """The bytes noise is drawn from: the operating system's, or (``seed``) a reproducible one.

    A deployment passes None and gets ``os.urandom``. A reproducible simulation passes a 32-byte
    seed; its guarantee then holds only against someone who does not know the seed.
    """
    return os.urandom if seed is None else SeededRandom(seed)


def uniform_below(n: int, random_bytes: RandomSource = os.urandom) -> int:
    """A uniform integer in [0, n): whole random bytes, masked to n's bit length, rejected above."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    bits = (n - 1).bit_length()
    if bits == 0:
        return 0
    size, mask = (bits + 7) // 8, (1 << bits) - 1
    while True:  # accepts with probability > 1/2 each time
        value = int.from_bytes(random_bytes(size), "little") & mask
        if value < n:
            return value


def bernoulli(p: Rational, random_bytes: RandomSource = os.urandom) -> bool:
    """True with probability exactly ``p`` (a rational in [0, 1])."""
    p = Fraction(p)
    if not 0 <= p <= 1:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    return uniform_below(p.denominator, random_bytes) < p.numerator


def bernoulli_exp(gamma: Rational, random_bytes: RandomSource = os.urandom) -> bool:
    """True with probability exactly exp(−γ), for a rational γ ≥ 0 (CKS 2020, Algorithm 1)."""
    gamma = Fraction(gamma)
    if gamma < 0:
        raise ValueError(f"gamma must be at least 0, got {gamma}")
    while gamma > 1:  # exp(−γ) = exp(−1)^⌊γ⌋ · exp(−(γ − ⌊γ⌋))
        if not _bernoulli_exp_at_most_one(Fraction(1), random_bytes):
            return False
        gamma -= 1
    return _bernoulli_exp_at_most_one(gamma, random_bytes)


def _bernoulli_exp_at_most_one(gamma: Fraction, random_bytes: RandomSource) -> bool:
    """Bernoulli(exp(−γ)) for γ in [0, 1]: the parity of the first K with Bernoulli(γ/K) = 0."""
    k = 1
    while bernoulli(gamma / k, random_bytes):
        k += 1
    return k % 2 == 1


def discrete_laplace(t: int, random_bytes: RandomSource = os.urandom) -> int:
    """An integer with P(x) ∝ exp(−|x|/t), for an integer scale t ≥ 1 (CKS 2020, Algorithm 2)."""
    if t < 1:
        raise ValueError(f"t must be a whole number of at least 1, got {t}")
    while True:
        u = uniform_below(t, random_bytes)
        if not bernoulli_exp(Fraction(u, t), random_bytes):
            continue
        v = 0
        while bernoulli_exp(1, random_bytes):
            v += 1
        magnitude = u + t * v
        negative = bernoulli(Fraction(1, 2), random_bytes)
        if negative and magnitude == 0:
            continue  # zero would otherwise be counted twice
        return -magnitude if negative else magnitude


def discrete_gaussian(sigma2: Rational, random_bytes: RandomSource = os.urandom) -> int:
    """An integer with P(x) ∝ exp(−x²/(2σ²)), for a rational σ² > 0 (CKS 2020, Algorithm 3).

    A discrete Laplace proposal of scale t = ⌊σ⌋ + 1, accepted with probability
    exp(−(|y| − σ²/t)² / (2σ²)), all in exact rational arithmetic.
    """
    sigma2 = Fraction(sigma2)
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2}")
    t = math.isqrt(sigma2.numerator // sigma2.denominator) + 1  # ⌊σ⌋ + 1, exactly
    while True:
        y = discrete_laplace(t, random_bytes)
        gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if bernoulli_exp(gamma, random_bytes):
            return y


MAX_ARRAY_VARIANCE = 1 << 24
"""The largest σ² `discrete_gaussian_array` takes (σ ≤ 4096); the smallest is 1."""
MAX_ARRAY_ACCEPTANCE_DENOMINATOR = 1 << 56
"""The largest denominator 2·a·b·t² of `discrete_gaussian_array`'s acceptance test (σ² = a/b in
lowest terms, t = ⌊σ⌋ + 1): below it every integer the test draws stays inside int64. Every
integer σ² up to `MAX_ARRAY_VARIANCE` fits (2σ²t² < 2^50); a Fraction fits when its denominator
is small enough (for σ² near 2^24, b ≤ 11; near 2^20, b ≤ 180; near 1, b ≤ 9·10^7)."""
_NEAR_LIMIT = 1 << 31
"""A proposal y is tested with int64 arithmetic when |y|·b·t and a lie below this (the square of
their difference is then below 2^62); one further out goes to the exact scalar test."""
_EXACT_LIMIT = 1 << 62
"""Bounds of uniform draws stay below this, so a 64-bit word almost never has to be redrawn."""


def _words(count: int, random_bytes: RandomSource) -> np.ndarray:
    """``count`` uniformly random 64-bit words."""
    return np.frombuffer(random_bytes(8 * count), dtype="<u8").astype(np.uint64)


def uniform_below_array(bounds: np.ndarray, random_bytes: RandomSource = os.urandom) -> np.ndarray:
    """A uniform integer in [0, n) for each n of ``bounds`` (int64, 1 ≤ n < 2^62).

    A random 64-bit word w is kept when it lies below the largest multiple of n that fits in
    2^64, and w mod n is returned: each residue then has exactly 2^64 // n words. A word is
    redrawn with probability below n / 2^64, so almost never.
    """
    bounds = np.asarray(bounds, dtype=np.int64)
    if bounds.size and (int(bounds.min()) < 1 or int(bounds.max()) >= _EXACT_LIMIT):
        raise ValueError("every bound must lie in [1, 2^62)")
    n = bounds.astype(np.uint64)
    top = np.uint64(np.iinfo(np.uint64).max)
    spare = (top % n + np.uint64(1)) % n  # 2^64 mod n: the words past the last full multiple
    last = top - spare  # the largest word kept
    out = np.zeros(bounds.shape, dtype=np.int64)
    pending = np.arange(bounds.size)
    while pending.size:
        words = _words(pending.size, random_bytes)
        kept = words <= last[pending]
        out[pending[kept]] = (words[kept] % n[pending[kept]]).astype(np.int64)
        pending = pending[~kept]
    return out


def _bernoulli_array(
    numerators: np.ndarray, denominators: np.ndarray, random_bytes: RandomSource
) -> np.ndarray:
    """True with probability exactly numerator/denominator, element by element."""
    return uniform_below_array(denominators, random_bytes) < numerators


def bernoulli_exp_array(
    numerators: np.ndarray, denominator: int, random_bytes: RandomSource = os.urandom
) -> np.ndarray:
    """Bernoulli(exp(−a/denominator)) for each integer a ≥ 0 of ``numerators`` (CKS Algorithm 1).

    exp(−γ) = exp(−1)^⌊γ⌋ · exp(−{γ}): ⌊γ⌋ trials of Bernoulli(exp(−1)) that must all succeed, then
    one of the fractional part, each by the parity of the first K with Bernoulli(γ/K) = 0.
    """
    numerators = np.asarray(numerators, dtype=np.int64)
    if numerators.size and int(numerators.min()) < 0:
        raise ValueError("exponents must be at least 0")
    whole, fraction = np.divmod(numerators, denominator)
    result = np.ones(numerators.shape, dtype=bool)
    live = np.flatnonzero(whole > 0)
    done = 0
    while live.size:  # the whole part: one Bernoulli(exp(−1)) per unit, stopping at a failure
        ok = _bernoulli_exp_unit(np.ones(live.size, dtype=np.int64), 1, random_bytes)
        result[live[~ok]] = False
        done += 1
        live = live[ok]
        live = live[whole[live] > done]
    live = np.flatnonzero(result)
    result[live] = _bernoulli_exp_unit(fraction[live], denominator, random_bytes)
    return result


def _bernoulli_exp_unit(
    numerators: np.ndarray, denominator: int, random_bytes: RandomSource
) -> np.ndarray:
    """Bernoulli(exp(−a/d)) for 0 ≤ a ≤ d: K is the first k ≥ 1 with Bernoulli(a/(d·k)) = 0."""
    k = np.ones(numerators.shape, dtype=np.int64)
    live = np.arange(numerators.size)
    while live.size:
        bounds = k[live] * denominator
        if int(bounds.max()) >= _EXACT_LIMIT:
            raise ValueError("Bernoulli(exp(-gamma)) ran past its integer range")  # p < 1/K!
        hit = _bernoulli_array(numerators[live], bounds, random_bytes)
        k[live[hit]] += 1
        live = live[hit]
    return k % 2 == 1


def _accepted(
    size: int, proposals: Callable[[int], tuple[np.ndarray, np.ndarray]], rate: float
) -> np.ndarray:
    """``size`` accepted values of a rejection sampler, from batches of ``proposals(n)``.

    ``proposals(n)`` returns n candidate values and which of them are accepted. Batches are
    oversized by the expected acceptance ``rate``, so most calls need one batch. The values kept
    are the first accepted ones: which candidates are accepted does not depend on the accepted
    values, so these are independent draws from the target law, as one-at-a-time would be.
    """
    out = np.zeros(size, dtype=np.int64)
    filled = 0
    while filled < size:
        need = size - filled
        values, accepted = proposals(int(need / rate) + 64)
        taken = values[accepted][:need]
        out[filled : filled + taken.size] = taken
        filled += taken.size
    return out


def discrete_laplace_array(
    t: int, size: int, random_bytes: RandomSource = os.urandom
) -> np.ndarray:
    """``size`` draws of P(x) ∝ exp(−|x|/t), for an integer t ≥ 1, as `discrete_laplace`."""
    if t < 1:
        raise ValueError(f"t must be a whole number of at least 1, got {t}")

    def proposals(n: int) -> tuple[np.ndarray, np.ndarray]:
        u = uniform_below_array(np.full(n, t, dtype=np.int64), random_bytes)
        keep = bernoulli_exp_array(u, t, random_bytes)
        v = np.zeros(n, dtype=np.int64)
        live = np.flatnonzero(keep)
        while live.size:  # V: the number of Bernoulli(exp(−1)) successes before the first failure
            hit = _bernoulli_exp_unit(np.ones(live.size, dtype=np.int64), 1, random_bytes)
            v[live[hit]] += 1
            live = live[hit]
        magnitude = u + t * v
        negative = _bernoulli_array(
            np.ones(n, dtype=np.int64), np.full(n, 2, dtype=np.int64), random_bytes
        )
        keep &= ~(negative & (magnitude == 0))  # zero would otherwise be counted twice
        return np.where(negative, -magnitude, magnitude), keep

    # Acceptance is E[exp(−U/t)] ≥ 1 − 1/e ≈ 0.63 (less the rejected negative zero).
    return _accepted(size, proposals, 0.55)


def _array_variance_terms(sigma2: object) -> tuple[int, int] | str:
    """σ² = a/b in lowest terms as (a, b), or why `discrete_gaussian_array` refuses it."""
    if isinstance(sigma2, bool) or not isinstance(sigma2, (int, np.integer, Fraction)):
        return (
            f"sigma2 must be an int or a Fraction (a float is not exact: pass a Fraction), "
            f"got {sigma2!r}"
        )
    value = Fraction(int(sigma2)) if isinstance(sigma2, np.integer) else Fraction(sigma2)
    if not 1 <= value <= MAX_ARRAY_VARIANCE:
        return f"sigma2 must lie in [1, {MAX_ARRAY_VARIANCE}], got {value}"
    a, b = value.numerator, value.denominator
    t = math.isqrt(a // b) + 1
    if 2 * a * b * t * t > MAX_ARRAY_ACCEPTANCE_DENOMINATOR or a >= _NEAR_LIMIT:
        return (
            f"sigma2 = {value} needs an acceptance denominator 2*a*b*t^2 = {2 * a * b * t * t}, "
            f"above MAX_ARRAY_ACCEPTANCE_DENOMINATOR = 2^56: use a smaller denominator"
        )
    return a, b


def array_variance_fits(sigma2: object) -> bool:
    """Whether `discrete_gaussian_array` takes this σ² (an int or a Fraction; never a float).

    It does when 1 ≤ σ² ≤ `MAX_ARRAY_VARIANCE` and, with σ² = a/b in lowest terms and
    t = ⌊σ⌋ + 1, 2·a·b·t² ≤ `MAX_ARRAY_ACCEPTANCE_DENOMINATOR` (2^56): every integer in range
    does; a Fraction does when its denominator is small enough. A planner checks here first.
    """
    return not isinstance(_array_variance_terms(sigma2), str)


def discrete_gaussian_array(
    sigma2: Rational, size: int, random_bytes: RandomSource = os.urandom
) -> np.ndarray:
    """``size`` independent draws of the discrete Gaussian of an int or Fraction variance σ².

    `discrete_gaussian`'s algorithm on arrays, with every probability an exact ratio of integers.
    With σ² = a/b in lowest terms and t = ⌊σ⌋ + 1 = isqrt(a // b) + 1, a discrete Laplace
    proposal y of scale t is kept with probability

        exp(−(|y| − σ²/t)² / (2σ²)) = exp(−(|y|·b·t − a)² / (2·a·b·t²)),

    an integer numerator over the integer denominator 2·a·b·t² (b = 1 for an integer σ²). The
    sampler takes σ² when 1 ≤ σ² ≤ `MAX_ARRAY_VARIANCE` and 2·a·b·t² ≤
    `MAX_ARRAY_ACCEPTANCE_DENOMINATOR` = 2^56 (`array_variance_fits` says whether it does); then
    a < 2^28 (since t² > a/b, 2a² < 2·a·b·t²), and the Bernoulli(exp(−γ)) trials stay inside
    int64 (their bounds k·2^56 stay below 2^62 until k = 64, which they reach with probability
    below 1/63!). A proposal with |y| ≥ ⌊2^31/(b·t)⌋, whose squared offset could leave int64, is
    decided exactly by the scalar `bernoulli_exp` on a Fraction. Such a proposal has probability
    about exp(−2^31/(b·t²)): below exp(−127) for an integer σ², at most about 0.5% for any σ²
    taken (σ² just above 1 with b near 2^26.5); it is accepted with probability below exp(−43).

    A float σ² is refused, since it is not exact: pass a Fraction.
    """
    terms = _array_variance_terms(sigma2)
    if isinstance(terms, str):
        raise ValueError(terms)
    a, b = terms
    if size < 0:
        raise ValueError(f"size must be at least 0, got {size}")
    t = math.isqrt(a // b) + 1
    scale = b * t  # the numerator is (|y|·scale − a)²
    denominator = 2 * a * b * t * t
    far = _NEAR_LIMIT // scale

    def proposals(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = discrete_laplace_array(t, n, random_bytes)
        magnitude = np.abs(y)
        near = magnitude < far
        keep = np.zeros(n, dtype=bool)
        offsets = magnitude[near] * scale - a
        keep[near] = bernoulli_exp_array(offsets * offsets, denominator, random_bytes)
        for i in np.flatnonzero(~near):  # rare (see above): exact rationals
            gamma = Fraction((int(magnitude[i]) * scale - a) ** 2, denominator)
            keep[i] = bernoulli_exp(gamma, random_bytes)
        return y, keep

    # CKS 2020 (Section 5.3): for t = ⌊σ⌋ + 1 a proposal is accepted with probability about 0.7.
    return _accepted(size, proposals, 0.6)


def discrete_gaussian_pmf(sigma2: float | Fraction, support: np.ndarray) -> np.ndarray:
    """P(x) of the discrete Gaussian of σ² at each integer of ``support`` (for tests and plans).

    σ² may be a float, an int or a Fraction (taken as a float here). Normalised over
    |x| ≤ 40σ + 40, beyond which the mass is below 1e-300.
    """
    sigma2 = float(sigma2)
    reach = int(40 * math.sqrt(sigma2)) + 40
    everywhere = np.arange(-reach, reach + 1, dtype=np.float64)
    total = float(np.exp(-(everywhere**2) / (2 * sigma2)).sum())
    points = np.asarray(support, dtype=np.float64)
    return np.exp(-(points**2) / (2 * sigma2)) / total
