"""Distributed DP: does learning each round's client count reveal more than Privet charges?

Under distributed DP the noise of a round is the sum of its survivors' shares, so its variance,
which anyone can estimate from a released update's d′ coordinates, tells how many clients took
part. Privet's accounting (Kairouz et al.'s bound, amplified by Zhu and Wang's Poisson bound)
models a round as the sum with or without the client's shifted share, at a fixed number of
shares. This script computes, for the continuous Gaussian analogue of one round, the Rényi
divergences of a mechanism that *reveals the count exactly* (more than the variance does, so by
data processing an upper bound on what the count can add), with Privet's abort of rounds below
t survivors, and composes them over the rounds beside Privet's own per-round charge.

It is an analysis, not a guarantee, of a simplified mechanism: the shares are continuous
Gaussians, nobody drops out, and every round's shares are sized for one fixed t. Privet sizes σ²
and t per round from the round's sampled count n (t = ⌈2n/3⌉), so its sum's variance moves only
a few percent with n, but the spec itself depends on n; that is not modelled here. It tells the
next piece of work where to look (see benchmarks/README.md).

Run from the repository root::

    .venv/bin/python -m benchmarks.distributed_dp_count_leak
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
from scipy import stats
from scipy.special import logsumexp

from privet.privacy.distributed_rdp import ORDERS, sampled_ddg_rdp

NORM_BOUND = 1000.0  # grid units of Δ; large, so Kairouz et al.'s τ term is negligible
DIMENSION = 8192


def count_revealing_rdp(
    clients: int, rate: float, threshold: int, share_std: float, order: int
) -> float:
    """max of D_α(P‖Q), D_α(Q‖P) for one round whose survivor count s is public.

    Q: the client is absent, s ~ Binomial(N − 1, q) others. P: present, sampled with rate q.
    A round with s < t releases only "aborted"; otherwise the projection of the sum on the
    client's update direction: N(0, s·σ²), or N(Δ, s·σ²) when the client is among the s.
    """
    others = clients - 1
    reach = 12 * share_std * math.sqrt(clients)  # 12 standard deviations of the widest sum
    grid = np.linspace(-reach, NORM_BOUND + reach, 60001)
    step = grid[1] - grid[0]

    def binom(k: int) -> float:
        return float(stats.binom.pmf(k, others, rate)) if 0 <= k <= others else 0.0

    aborted_q = sum(binom(s) for s in range(threshold))
    aborted_p = sum((1 - rate) * binom(s) + rate * binom(s - 1) for s in range(threshold))
    results = []
    for first, second in (("p", "q"), ("q", "p")):
        mass = {"p": aborted_p, "q": aborted_q}
        terms = [order * math.log(mass[first]) + (1 - order) * math.log(mass[second])]
        for s in range(threshold, others + 1):  # s = N (all, target included) has Q = 0: δ-tail
            spread = math.sqrt(s) * share_std
            absent = stats.norm.logpdf(grid, 0.0, spread)
            shifted = stats.norm.logpdf(grid, NORM_BOUND, spread)
            log_q = math.log(binom(s)) + absent if binom(s) > 0 else None
            weight_in = binom(s - 1)
            log_p = math.log(1 - rate) + math.log(binom(s)) + absent
            if weight_in > 0:
                log_p = np.logaddexp(log_p, math.log(rate) + math.log(weight_in) + shifted)
            if log_q is None:
                continue
            a, b = (log_p, log_q) if first == "p" else (log_q, log_p)
            terms.append(float(logsumexp(order * a + (1 - order) * b)) + math.log(step))
        results.append(float(logsumexp(terms)) / (order - 1))
    return max(results)


def epsilon(rdp: list[float], orders: list[int], delta: float) -> float:
    """Balle et al.'s RDP-to-(ε, δ) conversion, as Privet's accountants use it."""
    return min(
        r + math.log1p(-1 / o) - (math.log(delta) + math.log(o)) / (o - 1)
        for r, o in zip(rdp, orders, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--threshold", type=int, default=14, help="t: fewest survivors unmasked")
    parser.add_argument("--noise-multiplier", type=float, default=1.501, help="z planned for t")
    parser.add_argument("--survivors", type=int, default=20, help="survivors Privet charges")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    variance = math.ceil(args.noise_multiplier**2 * NORM_BOUND**2 / args.threshold)
    orders = [o for o in ORDERS if o <= 48]
    charged = sampled_ddg_rdp(NORM_BOUND, variance, args.survivors, DIMENSION, args.rate)
    revealed = [
        count_revealing_rdp(args.clients, args.rate, args.threshold, math.sqrt(variance), order)
        for order in orders
    ]
    privet = [args.rounds * float(charged[ORDERS.index(o)]) for o in orders]
    counted = [args.rounds * value for value in revealed]
    plan = f"q = {args.rate}, t = {args.threshold}, z = {args.noise_multiplier}"
    print(f"{args.clients} clients, {plan}")
    print("| order | count revealed, per round | Privet's charge, per round |")
    print("|---|---|---|")
    for order, mine, theirs in zip(orders, revealed, privet, strict=True):
        if order in (2, 4, 8, 12, 16, 24, 32, 48):
            print(f"| {order} | {mine:.4f} | {theirs / args.rounds:.4f} |")
    print(
        f"\nε at δ = 1e-5 over {args.rounds} rounds: count revealed "
        f"{epsilon(counted, orders, 1e-5):.3f}, Privet's charge {epsilon(privet, orders, 1e-5):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
