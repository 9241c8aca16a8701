"""Privet's three accountants against independent computations, over a grid of plans.

References are computed here, from Google's dp-accounting, without Privet's code:
- rdp: dp-accounting's RdpAccountant on the same (integer) orders, and numerical integration for
  the fractional orders of Opacus' defaults, where dp-accounting 0.6 is inaccurate; for small ε,
  whose optimal order is above Opacus' 63, on Privet's larger integer orders too (up to 16384);
- pld: dp-accounting's privacy loss distribution at a 2× finer discretization than Privet uses;
- prv: Opacus' PRV accountant (through Privet) must land within a few percent of that PLD.

Client-level rounds with adaptive clipping are given to the references as two separate Gaussian
queries (update sum with noise z, centred count with noise 2σ_b), never as Privet's z_eff.
"""

from __future__ import annotations

import functools
import logging
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from scipy import integrate

from privet.privacy import (
    CENTRED_COUNT_SENSITIVITY,
    EXTRA_RDP_ORDERS,
    OPACUS_RDP_ORDERS,
    ClientLevelRound,
    GaussianComposition,
    PoissonGaussianSteps,
    RdpAccountant,
    epsilon_for,
)
from tests.reference_accounting import (
    PRIVET_INTEGER_ORDERS,
    PRIVET_ORDERS,
    dp_accounting_pld_epsilon,
    dp_accounting_rdp,
)

# Opacus' default RDP orders (opacus/accountants/rdp.py DEFAULT_ALPHAS), independently written.
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
INTEGER_ORDERS = tuple(order for order in ORDERS if float(order).is_integer())

# (q, σ, steps, δ): q ∈ [1e-3, 1], σ ∈ [0.5, 5], steps ∈ [1, 20000], δ ∈ {1e-5, 1e-6, 1e-3}.
# Every plan has ε ≥ 0.07, where the PRV accountant's absolute error floor (1e-3) is < 1.5 %.
EXAMPLE_GRID = [
    (1e-3, 0.5, 20000, 1e-5),
    (1e-3, 1.0, 20000, 1e-6),
    (256 / 60000, 1.1, 14062, 1e-5),
    (4e-3, 0.8, 10000, 1e-6),
    (4e-3, 3.0, 2000, 1e-3),
    (0.01, 0.7, 5000, 1e-5),
    (0.01, 1.0, 1000, 1e-5),
    (0.01, 1.5, 20000, 1e-6),
    (0.01, 4.0, 300, 1e-3),
    (0.02, 1.2, 3000, 1e-5),
    (0.05, 1.0, 500, 1e-5),
    (0.05, 2.0, 2000, 1e-6),
    (0.05, 0.9, 100, 1e-3),
    (0.1, 1.0, 90, 1e-5),
    (0.1, 2.5, 1000, 1e-5),
    (0.1, 5.0, 10000, 1e-6),
    (0.2, 1.5, 200, 1e-3),
    (0.25, 3.0, 400, 1e-5),
    (0.3, 2.0, 50, 1e-6),
    (0.5, 4.0, 100, 1e-5),
    (0.5, 1.0, 10, 1e-3),
    (1.0, 5.0, 10, 1e-3),
    (1.0, 3.0, 1, 1e-5),
    (1.0, 2.0, 5, 1e-6),
    (1.0, 0.8, 1, 1e-3),
    (1.0, 5.0, 100, 1e-5),
    (0.002, 0.6, 2000, 1e-5),
    (0.03, 0.5, 50, 1e-5),
    (0.15, 1.3, 300, 1e-6),
    (0.7, 4.5, 30, 1e-3),
]

# (q, z of the update sum, σ_b of the count or None, rounds, δ). σ_b is in counts; the count's
# noise multiplier is 2σ_b (sensitivity 1/2 after centring, Andrew et al. 2021).
CLIENT_GRID = [
    (0.01, 1.0, None, 1000, 1e-5),
    (0.01, 0.9, 5.0, 2000, 1e-6),
    (0.02, 1.2, None, 500, 1e-5),
    (0.02, 1.5, 10.0, 3000, 1e-3),
    (0.05, 1.0, 2.5, 200, 1e-5),
    (0.05, 2.0, None, 1000, 1e-6),
    (0.1, 1.1, 1.0, 100, 1e-5),
    (0.1, 3.0, 5.0, 1000, 1e-3),
    (0.001, 0.7, 1.0, 5000, 1e-5),
    (0.001, 1.0, None, 20000, 1e-6),
    (0.003, 2.0, 10.0, 3000, 1e-5),
    (0.005, 0.6, None, 2000, 1e-3),
    (0.2, 2.0, 5.0, 100, 1e-5),
    (0.25, 4.0, 2.0, 300, 1e-6),
    (0.3, 1.5, None, 50, 1e-3),
    (0.5, 3.0, 3.0, 100, 1e-5),
    (1.0, 5.0, None, 10, 1e-5),
    (1.0, 3.0, 4.0, 5, 1e-6),
    (1.0, 2.0, 2.0, 1, 1e-3),
    (1.0, 4.0, 10.0, 50, 1e-5),
    (0.04, 0.8, 2.0, 300, 1e-5),
    (0.04, 1.3, None, 1500, 1e-5),
    (0.08, 0.5, 5.0, 20, 1e-5),
    (0.15, 1.0, 0.75, 40, 1e-6),
    (0.6, 5.0, 2.6, 200, 1e-3),
    (0.002, 1.5, 1.0, 10000, 1e-5),
    (0.01, 2.5, 1.5, 5000, 1e-6),
    (0.03, 1.0, None, 100, 1e-3),
    (0.07, 1.8, 10.0, 700, 1e-5),
    (0.12, 2.2, 1.2, 250, 1e-5),
]


# (q, σ, steps, δ) whose optimal RDP order is above Opacus' 63: ε from 0.004 to 0.17, which
# Opacus' orders alone overstate (and, below ε ≈ 0.103 at δ = 1e-5, cannot reach at any σ).
SMALL_EPSILON_GRID = [
    (1 / 9, 30.0, 18, 1e-5),  # `privet simulate`'s default plan at ε ≈ 0.05
    (0.01, 20.0, 1000, 1e-5),
    (0.01, 90.0, 1000, 1e-5),
    (1 / 9, 300.0, 18, 1e-5),
    (1.0, 50.0, 1, 1e-5),
    (0.002, 3.0, 5000, 1e-5),
    (0.3, 40.0, 20, 1e-3),
    (1.0, 200.0, 10, 1e-6),
]


def example_event(q, sigma, steps, delta):
    return PoissonGaussianSteps(sigma, q, steps)


def client_event(q, z, sigma_b, rounds, delta):
    if sigma_b is None:
        return ClientLevelRound(z, q, rounds)
    return ClientLevelRound(
        z, q, rounds, count_noise_std=sigma_b, count_sensitivity=CENTRED_COUNT_SENSITIVITY
    )


def inner_gaussians(z, sigma_b):
    """The queries of one round as dp-accounting events: one Gaussian, or two on the same data."""
    if sigma_b is None:
        return dp_accounting.GaussianDpEvent(z)
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(z), dp_accounting.GaussianDpEvent(2 * sigma_b)]
    )


class Quiet:
    """Silence dp-accounting's convergence warnings (logged, not raised) inside a block."""

    def __enter__(self):
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        logging.disable(logging.NOTSET)


@functools.cache
def reference_rdp(q, z, sigma_b, count, delta, orders):
    accountant = dp_accounting.rdp.RdpAccountant(list(orders))
    event = dp_accounting.PoissonSampledDpEvent(q, inner_gaussians(z, sigma_b))
    with Quiet():
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, count))
    return accountant.get_epsilon(delta)


@functools.cache
def reference_pld(q, z, sigma_b, count, delta):
    """dp-accounting's PLD with its own discretization, 2× finer than Privet's.

    The interval follows the ε scale (dp-accounting's RDP ε / 10⁴), since a fixed interval that
    suits ε ≈ 5 overestimates ε ≈ 0.1 by tens of percent. Two queries on the same sampled data are
    a single Gaussian query of the concatenated vector; with unit noise its L2 sensitivity is
    sqrt(z⁻² + (2σ_b)⁻²). (That reduction is checked on its own, without sampling, below.)
    """
    sensitivity = 1 / z if sigma_b is None else math.sqrt(z**-2 + (2 * sigma_b) ** -2)
    rdp_epsilon = reference_rdp(q, z, sigma_b, count, delta, INTEGER_ORDERS)
    interval = min(5e-4, max(5e-7, rdp_epsilon / 1e4))
    distribution = pld_lib.from_gaussian_mechanism(
        standard_deviation=1.0,
        sensitivity=sensitivity,
        sampling_prob=q,
        value_discretization_interval=interval,
    ).self_compose(count)
    return distribution.get_epsilon_for_delta(delta)


def _example_key(setting):
    q, sigma, steps, delta = setting
    return q, sigma, None, steps, delta


def _ids(grid):
    return ["-".join(f"{value:g}" if value is not None else "none" for value in s) for s in grid]


def _check_rdp(event, key):
    """Integer orders: equal to dp-accounting. All orders: a tighter, still valid, upper bound.

    On integer orders both libraries evaluate the same finite sum, so ε must agree. On fractional
    orders dp-accounting 0.6 and Opacus use different series: dp-accounting's is up to 18 % high
    at α = 1.1 for q = 0.01, σ = 0.7, or gives up (q ≳ 0.2), while Opacus' matches numerical
    integration to 1e-8 (test_fractional_order_rdp_matches_numerical_integration). So with all
    orders Privet's default ε is compared one-sidedly: never above the integer-order value (more
    orders can only tighten the bound) and never below the tight PLD value.
    """
    q, z, sigma_b, count, delta = key
    reference = reference_rdp(*key, orders=INTEGER_ORDERS)
    ours = RdpAccountant(INTEGER_ORDERS).epsilon([event], delta)
    assert ours == pytest.approx(reference, rel=1e-3)
    default = epsilon_for([event], delta)
    assert reference_pld(*key) < default <= reference * (1 + 1e-9)


@pytest.mark.parametrize("setting", EXAMPLE_GRID, ids=_ids(EXAMPLE_GRID))
def test_example_level_rdp_matches_dp_accounting(setting):
    _check_rdp(example_event(*setting), _example_key(setting))


@pytest.mark.parametrize("setting", CLIENT_GRID, ids=_ids(CLIENT_GRID))
def test_client_level_rdp_matches_dp_accounting(setting):
    _check_rdp(client_event(*setting), setting)


@pytest.mark.parametrize("setting", EXAMPLE_GRID, ids=_ids(EXAMPLE_GRID))
def test_example_level_pld_and_prv_match_a_finer_pld(setting):
    key = _example_key(setting)
    reference = reference_pld(*key)
    event = example_event(*setting)
    assert epsilon_for([event], setting[-1], "pld") == pytest.approx(reference, rel=0.01)
    prv = epsilon_for([event], setting[-1], "prv")
    assert reference * 0.995 <= prv <= reference * 1.03


@pytest.mark.parametrize("setting", CLIENT_GRID, ids=_ids(CLIENT_GRID))
def test_client_level_pld_and_prv_match_a_finer_pld(setting):
    reference = reference_pld(*setting)
    event = client_event(*setting)
    assert epsilon_for([event], setting[-1], "pld") == pytest.approx(reference, rel=0.01)
    prv = epsilon_for([event], setting[-1], "prv")
    assert reference * 0.995 <= prv <= reference * 1.03


@pytest.mark.parametrize(
    ("z", "sigma_b", "rounds", "delta"),
    [(1.0, 1.0, 1, 1e-5), (2.0, 1.5, 10, 1e-6), (0.8, 5.0, 3, 1e-3), (3.0, 2.0, 10, 1e-5)],
)
def test_adaptive_clipping_reduction_matches_separate_composition(z, sigma_b, rounds, delta):
    """Without sampling, dp-accounting composes the two Gaussian queries as separate PLDs/RDPs."""
    event = ClientLevelRound(
        z, 1.0, rounds, count_noise_std=sigma_b, count_sensitivity=CENTRED_COUNT_SENSITIVITY
    )
    separate = dp_accounting.SelfComposedDpEvent(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(z), dp_accounting.GaussianDpEvent(2 * sigma_b)]
        ),
        rounds,
    )
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(separate)
    assert epsilon_for([event], delta, "pld") == pytest.approx(pld.get_epsilon(delta), rel=0.01)
    rdp = dp_accounting.rdp.RdpAccountant(ORDERS)
    rdp.compose(separate)
    assert epsilon_for([event], delta, "rdp") == pytest.approx(rdp.get_epsilon(delta), rel=1e-3)


def test_heterogeneous_history_matches_dp_accounting():
    """Several different events compose: σ changes between rounds, and repeated runs merge."""
    events = [
        PoissonGaussianSteps(1.0, 0.01, 500),
        PoissonGaussianSteps(1.5, 0.02, 300),
        PoissonGaussianSteps(1.0, 0.01, 200),
    ]
    rdp = dp_accounting.rdp.RdpAccountant(ORDERS)
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for sigma, q, steps in [(1.0, 0.01, 700), (1.5, 0.02, 300)]:
        event = dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        rdp.compose(event)
        pld.compose(event)
    assert epsilon_for(events, 1e-5) == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-3)
    assert epsilon_for(events, 1e-5, "pld") == pytest.approx(pld.get_epsilon(1e-5), rel=0.01)
    prv = epsilon_for(events, 1e-5, "prv")
    assert pld.get_epsilon(1e-5) * 0.995 <= prv <= pld.get_epsilon(1e-5) * 1.03


def _rdp_by_integration(q, sigma, order):
    """RDP of one sampled Gaussian step by quadrature, log(A_α)/(α−1), where

    A_α = E_{z~N(0,σ²)}[(1 − q + q·exp((2z − 1)/2σ²))^α], as defined in Mironov, Talwar and
    Zhang 2019 (arXiv:1908.10530, Sec. 3.3).
    """

    def integrand(z):
        density = math.exp(-z * z / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
        return density * (1 - q + q * math.exp((2 * z - 1) / (2 * sigma**2))) ** order

    value, _ = integrate.quad(
        integrand, -40 * sigma, 40 * sigma + 10, points=[0, 0.5, 1], limit=500, epsrel=1e-12
    )
    return math.log(value) / (order - 1)


@pytest.mark.parametrize(
    ("q", "sigma", "order"),
    [
        (0.01, 0.7, 1.1),
        (0.01, 0.7, 2.8),
        (0.2, 1.5, 1.5),
        (0.6, 3.6, 1.3),
        (0.15, 1.3, 3.5),
        (0.5, 1.0, 5.5),
        (256 / 60000, 1.1, 8.1),
    ],
)
def test_fractional_order_rdp_matches_numerical_integration(q, sigma, order):
    ours = RdpAccountant([order]).rdp([GaussianComposition(sigma, q, 1)])[0]
    assert ours == pytest.approx(_rdp_by_integration(q, sigma, order), rel=1e-6)


def test_reference_orders_are_privets():
    """The references below use orders written out in tests/reference_accounting.py."""
    assert tuple(float(order) for order in ORDERS) == OPACUS_RDP_ORDERS
    assert tuple(float(order) for order in PRIVET_ORDERS) == OPACUS_RDP_ORDERS + EXTRA_RDP_ORDERS


@pytest.mark.parametrize("setting", SMALL_EPSILON_GRID, ids=_ids(SMALL_EPSILON_GRID))
def test_small_epsilon_rdp_matches_dp_accounting_on_privet_orders(setting):
    """Small ε: Privet's default RDP ε is dp-accounting's on Privet's integer orders.

    Both evaluate the same exact finite sum at every integer order, so the RDP of each order
    agrees to float rounding and ε to the grid's tolerance; PLD stays below (RDP is an upper
    bound), and Opacus' orders alone give a larger ε (the optimum is above 63).
    """
    q, sigma, steps, delta = setting
    event = example_event(*setting)
    reference, reference_values = dp_accounting_rdp(q, sigma, steps, delta, PRIVET_INTEGER_ORDERS)
    ours = epsilon_for([event], delta)
    assert ours == pytest.approx(reference, rel=1e-3)
    values = RdpAccountant(PRIVET_INTEGER_ORDERS).rdp([GaussianComposition(sigma, q, steps)])
    assert values == pytest.approx(np.asarray(reference_values), rel=1e-6)
    assert dp_accounting_pld_epsilon(q, sigma, steps, delta) < ours
    assert ours < RdpAccountant(OPACUS_RDP_ORDERS).epsilon([event], delta)


@pytest.mark.parametrize("setting", SMALL_EPSILON_GRID, ids=_ids(SMALL_EPSILON_GRID))
def test_small_epsilon_pld_and_prv_match_a_finer_pld(setting):
    """Small ε: the PLD grid is sized from an RDP estimate that is not stuck near 0.1.

    PldAccountant promises 0.2 % of a 2× finer dp-accounting PLD; an interval sized from
    Opacus' orders alone (ε_RDP ≥ 0.103) misses that by 0.3 % at ε ≈ 0.01.
    """
    q, sigma, steps, delta = setting
    reference = dp_accounting_pld_epsilon(q, sigma, steps, delta)
    event = example_event(*setting)
    assert epsilon_for([event], delta, "pld") == pytest.approx(reference, rel=2e-3)
    prv = epsilon_for([event], delta, "prv")
    # Opacus' PRV bound is its estimate + eps_error, the estimate within eps_error of the truth,
    # and Privet's eps_error has an absolute floor of 1e-3 (privacy.accountants.PrvAccountant).
    assert reference * 0.995 <= prv <= reference * 1.03 + 2e-3


@pytest.mark.parametrize(("q", "sigma"), [(0.3, 0.7), (1.0, 2.0), (0.01, 100.0)])
def test_rdp_at_larger_orders_matches_dp_accounting(q, sigma):
    """One step at every order above 63, including those above ≈ 1030 where Opacus' sum is NaN."""
    orders = tuple(PRIVET_ORDERS[len(ORDERS) :])
    _, reference = dp_accounting_rdp(q, sigma, 1, 1e-5, orders)
    ours = RdpAccountant(orders).rdp([GaussianComposition(sigma, q, 1)])
    assert np.all(np.isfinite(ours))
    assert ours == pytest.approx(np.asarray(reference), rel=1e-6)
