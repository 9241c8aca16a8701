"""Rényi DP of the distributed discrete Gaussian, with Poisson sampling of the clients (issue 16).

The mechanism (`privacy.distributed_dp`): each round, clients are Poisson-sampled at rate q; the
n of the cohort each round their update to an integer vector of L2 norm at most Δ and add d
independent discrete Gaussians of variance W/n, so that the cohort's noise sums to variance W
whatever n is; only the sum of the s survivors is unmasked. Neighbouring data sets differ in one
client's update, replaced by zeros (the client is still sampled, and still adds its share).

Two facts about discrete Gaussians carry the analysis:

- Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
  Secure Aggregation" (ICML 2021), Theorem 1 / Prop. 13: the sum of m independent N_Z(0, σ²) is
  within max divergence τ(σ², m) = 10·Σ_{k=1}^{m−1} exp(−2π²σ²·k/(k+1)) of N_Z(0, mσ²), both
  ways; their Prop. 14 / Eq. (17) then bounds the sum's Rényi divergence of order α, for a shift
  of L2 norm Δ, by `ddg_rdp`.
- For an integer shift v and integer k, E_{N_Z(0,W)}[(p(x − v)/p(x))^k] = exp(k(k−1)v²/(2W))
  exactly (complete the square: the sum over Z is invariant under the integer shift kv). So the
  discrete Gaussian's integer moments are the Gaussian's.

**No one dropped** (`poisson_ddg_rdp`). Condition on which other clients were sampled. Whether
or not the client was, the cohort's noise has variance W, so the round's output is, within
max divergence d·τ* (τ* = τ(W/(n+1), n+1), the largest of the cohorts involved), the ideal pair
P = (1−q)·μ0 + q·μ1 against Q = μ0, with μ0 = N_Z(0, W)^d around the others' sum and μ1 the same
shifted by the client's update. Then

- P‖Q: E_Q[(P/Q)^α] = Σ_k C(α,k)(1−q)^(α−k) q^k E_μ0[(μ1/μ0)^k], which by the moments above is
  exactly the sampled Gaussian's series at z = √W/Δ (Mironov, Talwar, Zhang 2019, Sec. 3.3).
- Q‖P is no larger, for any pair symmetric under a reflection (here z ↦ x − z), which maps μ0 to
  μ1. Proof: under μ0 the likelihood ratio L = μ1/μ0 satisfies E[f(1/L)] = E[L·f(L)], so the
  values s and 1/s (s > 1) come in pairs of mass 1 : s; with φ(λ) = λ^α − λ^(1−α) and the
  mixture's ratio x = 1−q+qs, y = 1−q+q/s, the difference E_Q[(P/Q)^α] − E_P[(Q/P)^α] is a sum of
  terms c·(φ(x) + s·φ(y)). Since φ(1/λ) = −φ(λ)/λ and s·y = (x − 1)/(w − 1) with w = 1/y, each
  term is c·(x−1)·(ψ(x) − ψ(w)) with ψ(λ) = φ(λ)/(λ−1), which is increasing on (1, ∞) because φ
  is convex there and φ(1) = 0; and x ≥ w because x·y = (1−q)² + q(1−q)(s + 1/s) + q² ≥ 1.
- The max divergence adds (2α−1)·d·τ*/(α−1) to either direction.

So a round in which nobody dropped costs what the central Gaussian costs at z = √W/Δ, at integer
orders, plus a τ term below 10⁻¹⁵ for shares of a few units.

**Someone dropped, or the round was not released** (`weak_ddg_rdp`). The survivors' noise then
depends on who was sampled, so given the others the output with and without the client differ
beyond the shift, and the amplification above does not hold. What holds for any such pair is
joint convexity: with R whatever the round releases when the client is not sampled,
E[(P/Q)^α] ≤ (1−q) + q·exp((α−1)·ε(α)), ε(α) the unsampled bound (`ddg_rdp`) at the noise the
survivors carried; the same for Q‖P. This is far weaker (linear in q, not quadratic): dropouts
cost privacy, and the results say which rounds paid it.

Who took part must stay hidden for the amplification to count: the server (which chose and saw
the cohort) and the cohort's clients (whom secure aggregation introduces to each other) get the
unsampled composition instead (`server.distributed_release`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.special import gammaln, logsumexp

__all__ = ["ORDERS", "ddg_rdp", "ddg_tau", "poisson_ddg_rdp", "weak_ddg_rdp"]

ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 160, 192, 256, 384, 512)
"""Integer Rényi orders the distributed discrete Gaussian is accounted at."""


def ddg_tau(local_variance: float, summands: int) -> float:
    """τ of Kairouz et al. (Thm 1): how far a sum of n discrete Gaussians is from one of nσ²."""
    return 10.0 * sum(
        math.exp(-2 * math.pi**2 * local_variance * k / (k + 1)) for k in range(1, summands)
    )


def ddg_rdp(
    order: int,
    l2_sensitivity: float,
    local_variance: float,
    summands: int,
    dimension: int,
    tau: float | None = None,
) -> float:
    """ε(α) of one release of the sum of ``summands`` clients' noised vectors (no sampling).

    ``tau`` overrides the sum's own τ with a larger one (a bound for several sums at once).
    """
    scale = l2_sensitivity / math.sqrt(summands * local_variance)
    tau = ddg_tau(local_variance, summands) if tau is None else tau
    return min(
        order * scale**2 / 2 + tau * dimension,
        order / 2 * (scale + math.sqrt(dimension) * tau) ** 2,
    )


def _log_binomials(alpha: int) -> np.ndarray:
    k = np.arange(alpha + 1)
    return gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)


@lru_cache(maxsize=4096)
def poisson_ddg_rdp(
    l2_sensitivity: float,
    total_variance: float,
    cohort: int,
    dimension: int,
    sample_rate: float,
) -> np.ndarray:
    """ε(α) at every order of `ORDERS` of one round in which all ``cohort`` clients survived.

    ``total_variance`` is W, the variance of the cohort's summed noise per coordinate (grid
    units²), the same for every cohort size; each client's share was W/cohort. Read-only array.
    """
    z2 = total_variance / l2_sensitivity**2
    tau = ddg_tau(total_variance / (cohort + 1), cohort + 1)
    out = np.empty(len(ORDERS))
    q = sample_rate
    for index, alpha in enumerate(ORDERS):
        correction = (2 * alpha - 1) * dimension * tau / (alpha - 1)
        if q >= 1:
            out[index] = alpha / (2 * z2) + correction
            continue
        k = np.arange(alpha + 1)
        exponents = (
            _log_binomials(alpha)
            + (alpha - k) * math.log1p(-q)
            + k * math.log(q)
            + k * (k - 1) / (2 * z2)
        )
        out[index] = float(logsumexp(exponents)) / (alpha - 1) + correction
    out.setflags(write=False)
    return out


@lru_cache(maxsize=4096)
def weak_ddg_rdp(
    l2_sensitivity: float,
    local_variance: float,
    summands: int,
    dimension: int,
    sample_rate: float,
    cohort: int,
) -> np.ndarray:
    """ε(α) at every order of `ORDERS` of a round whose noise depended on who was sampled.

    Joint convexity only: log(1 − q + q·exp((α−1)·ε(α)))/(α−1), with ε Kairouz et al.'s
    unsampled bound at the noise the ``summands`` shares of ``local_variance`` carried. Had the
    client been sampled too, the cohort would have been one larger: its shares (variance
    σ²·n/(n+1), one more of them) sum to more noise but sit a little further from a discrete
    Gaussian, so τ is taken there, the larger of the two. Read-only array.
    """
    q = sample_rate
    tau = ddg_tau(local_variance * cohort / (cohort + 1), summands + 1)
    out = np.empty(len(ORDERS))
    for index, alpha in enumerate(ORDERS):
        base = ddg_rdp(alpha, l2_sensitivity, local_variance, summands, dimension, tau)
        if q >= 1:
            out[index] = base
            continue
        value = float(logsumexp([math.log1p(-q), math.log(q) + (alpha - 1) * base])) / (alpha - 1)
        out[index] = min(value, base)
    out.setflags(write=False)
    return out
