"""The independent ε the tests compare Privet's numbers with: Opacus' RDP analysis and Google's
dp-accounting, called directly.

Privet's own accountants are never the reference for a number Privet prints. The orders are
written out here, so a change to Privet's orders shows up as a failing comparison instead of
moving both sides:

- `ORDERS`: Opacus' defaults (1.1 … 63). Privet's RDP ε equals `opacus_epsilon` bit for bit
  whenever the optimal order is 63 or below (at δ = 1e-5, roughly every plan with ε above 0.2).
- `PRIVET_ORDERS`: Privet's orders, Opacus' defaults followed by larger integer orders (every
  integer to 256, then 256·2^(k/16) to 16384). Below ε ≈ 0.2 the optimum is above 63; compare
  with `dp_accounting_rdp_epsilon` there (Opacus' own loop overflows above order ≈ 1030).
"""

from __future__ import annotations

import functools
import logging

import dp_accounting
from opacus.accountants.analysis import rdp

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
PRIVET_ORDERS = ORDERS + list(range(64, 257)) + [round(256 * 2 ** (k / 16)) for k in range(1, 97)]
# The integer orders of PRIVET_ORDERS: dp-accounting 0.6 is inaccurate at fractional orders (see
# tests/privacy/test_accountant_grid.py), and they never hold the optimum of a small ε.
PRIVET_INTEGER_ORDERS = tuple(order for order in PRIVET_ORDERS if float(order).is_integer())


@functools.lru_cache(maxsize=256)  # many clients share a (q, σ, steps): compute each once
def opacus_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """ε of `steps` Poisson-subsampled Gaussian steps (rate q, noise multiplier σ) at δ."""
    if steps == 0:
        return 0.0
    eps, _ = rdp.get_privacy_spent(
        orders=ORDERS,
        rdp=rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS),
        delta=delta,
    )
    return float(eps)


@functools.lru_cache(maxsize=64)
def dp_accounting_rdp(
    q: float, sigma: float, steps: int, delta: float, orders: tuple[float, ...]
) -> tuple[float, tuple[float, ...]]:
    """dp-accounting's RdpAccountant: (ε at δ, RDP at each order) of `steps` sampled Gaussians."""
    accountant = dp_accounting.rdp.RdpAccountant(list(orders))
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    logging.disable(logging.WARNING)  # its convergence warnings are logged, not raised
    try:
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
        return accountant.get_epsilon(delta), tuple(float(value) for value in accountant.rdp)
    finally:
        logging.disable(logging.NOTSET)


def dp_accounting_rdp_epsilon(
    q: float,
    sigma: float,
    steps: int,
    delta: float,
    orders: tuple[float, ...] = PRIVET_INTEGER_ORDERS,
) -> float:
    """dp-accounting's RDP ε of `steps` sampled Gaussians, by default on Privet's integer orders."""
    return dp_accounting_rdp(q, sigma, steps, delta, tuple(orders))[0]


def dp_accounting_pld_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """dp-accounting's PLD ε, discretized at 1/10⁴ of dp-accounting's RDP ε (tight to ≪ 1 %)."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    interval = min(1e-3, max(2.5e-7, dp_accounting_rdp_epsilon(q, sigma, steps, delta) / 1e4))
    distribution = pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma, sampling_prob=q, value_discretization_interval=interval
    ).self_compose(steps)
    return distribution.get_epsilon_for_delta(delta)
