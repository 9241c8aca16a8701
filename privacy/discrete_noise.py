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

Randomness comes from a `RandomSource` (n -> n bytes): the operating system's
(``os.urandom``) unless a caller passes a seeded source, which only a reproducible simulation
may do (`noise_source`). Pure Python: exact but slow (tens of microseconds a draw); it is the
reference a faster sampler must match.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np

from privet.privacy.secagg.crypto import RandomSource, SeededRandom

__all__ = [
    "bernoulli",
    "bernoulli_exp",
    "discrete_gaussian",
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


def discrete_gaussian_pmf(sigma2: float, support: np.ndarray) -> np.ndarray:
    """P(x) of the discrete Gaussian of σ² at each integer of ``support`` (for tests and plans).

    Normalised over |x| ≤ 40σ + 40, beyond which the mass is below 1e-300.
    """
    reach = int(40 * math.sqrt(sigma2)) + 40
    everywhere = np.arange(-reach, reach + 1, dtype=np.float64)
    total = float(np.exp(-(everywhere**2) / (2 * sigma2)).sum())
    points = np.asarray(support, dtype=np.float64)
    return np.exp(-(points**2) / (2 * sigma2)) / total
