"""Rényi DP of the distributed discrete Gaussian, with Poisson sampling of the clients (issue 16).

The mechanism: n clients each add an independent discrete Gaussian N_Z(0, σ²) to every one of d
integer coordinates of their update, whose L2 norm is at most Δ (`privacy.distributed_dp`), and
only the sum is seen. A sum of discrete Gaussians is not a discrete Gaussian, but it is close to
the one of variance nσ²: Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation" (ICML 2021), Proposition 14 / Eq. (17), bound its
Rényi divergence of order α by

    ε(α) = min( α·Δ²/(2nσ²) + τ·d,  (α/2)·(Δ/√(nσ²) + τ·√d)² ),
    τ = 10 · Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1)).

(The paper's third bound, through the L1 sensitivity, is not used: a valid bound may omit it.)
For σ² of a few units τ is below 10⁻¹⁷, and ε(α) is the Gaussian mechanism's α/(2z²) at the
noise multiplier z = √(nσ²)/Δ.

Clients are Poisson-sampled at rate q each round. Mironov's tight bound for the sampled Gaussian
does not apply to another mechanism, so this uses the general upper bound of Zhu and Wang,
"Poisson Subsampled Rényi Differential Privacy" (ICML 2019), for an integer order α ≥ 2:

    ε_q(α) ≤ 1/(α−1) · log( (1−q)^(α−1)·(αq − q + 1) + C(α,2)·q²·(1−q)^(α−2)·e^(ε(2))
                            + 3·Σ_{l=3}^{α} C(α,l)·q^l·(1−q)^(α−l)·e^((l−1)·ε(l)) ),

and min(ε_q(α), ε(α)) since sampling never hurts. It is looser than the Gaussian's bound, so
distributed DP needs somewhat more noise than central DP for the same ε. Orders are the integers
in `ORDERS` (the bound is for integer orders).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.special import gammaln, logsumexp

__all__ = ["ORDERS", "ddg_rdp", "ddg_tau", "sampled_ddg_rdp"]

ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 160, 192, 256, 384, 512)
"""Integer Rényi orders the distributed discrete Gaussian is accounted at."""


def ddg_tau(local_variance: float, summands: int) -> float:
    """τ of Kairouz et al. (Thm 1): how far a sum of n discrete Gaussians is from one of nσ²."""
    return 10.0 * sum(
        math.exp(-2 * math.pi**2 * local_variance * k / (k + 1)) for k in range(1, summands)
    )


def ddg_rdp(
    order: int, l2_sensitivity: float, local_variance: float, summands: int, dimension: int
) -> float:
    """ε(α) of one release of the sum of ``summands`` clients' noised vectors (no sampling)."""
    scale = l2_sensitivity / math.sqrt(summands * local_variance)
    tau = ddg_tau(local_variance, summands)
    return min(
        order * scale**2 / 2 + tau * dimension,
        order / 2 * (scale + math.sqrt(dimension) * tau) ** 2,
    )


@lru_cache(maxsize=4096)
def sampled_ddg_rdp(
    l2_sensitivity: float,
    local_variance: float,
    summands: int,
    dimension: int,
    sample_rate: float,
) -> np.ndarray:
    """ε_q(α) at every order of `ORDERS`, for one round (read-only; cached per mechanism)."""
    top = max(ORDERS)
    base = np.array(
        [0.0]
        + [
            ddg_rdp(order, l2_sensitivity, local_variance, summands, dimension)
            for order in range(1, top + 1)
        ]
    )
    out = np.empty(len(ORDERS))
    q = sample_rate
    for index, alpha in enumerate(ORDERS):
        if q >= 1:
            out[index] = base[alpha]
            continue
        terms = np.arange(3, alpha + 1)
        log_binomials = gammaln(alpha + 1) - gammaln(terms + 1) - gammaln(alpha - terms + 1)
        exponents = [0.0, base[2]] + list(
            (terms - 1) * base[terms]
            + log_binomials
            + (alpha - terms) * math.log1p(-q)
            + terms * math.log(q)
        )
        weights = [
            (1 - q) ** (alpha - 1) * (alpha * q - q + 1),
            math.comb(alpha, 2) * q**2 * (1 - q) ** (alpha - 2),
        ] + [3.0] * len(terms)
        sampled = float(logsumexp(exponents, b=weights)) / (alpha - 1)
        out[index] = min(sampled, base[alpha])
    out.setflags(write=False)
    return out
