"""ε of distributed DP against independent computations.

Three kinds of check, written apart from `privacy.distributed_rdp`:

- the test's own implementation of the bounds in mpmath's 40-digit arithmetic (the sampled
  Gaussian's binomial series plus the discrete correction of Kairouz, Liu, Steinke, ICML 2021, for
  rounds in which nobody dropped; joint convexity for the others), and the RDP → (ε, δ)
  conversion of Balle et al. (2020) by hand over every integer order up to 128 and Privet's larger
  ones;
- Google's dp-accounting, whose RDP accountant computes the Poisson-sampled Gaussian by its own
  code: with large shares the amplified bound is that mechanism's;
- exact Rényi divergences, by summation over the integers, of small one-dimensional rounds whose
  shares are so small that the discrete correction matters, for the pairs the proof in
  `privacy.distributed_rdp` reasons about: the bound must lie above both directions.
"""

from __future__ import annotations

import math

import dp_accounting
import mpmath
import numpy as np
import pytest
from scipy.special import logsumexp

from privet.privacy import DistributedDiscreteGaussianRound, PrivacyLedger
from privet.privacy.accountants import get_accountant
from privet.privacy.calibration import distributed_noise_for_target_epsilon
from privet.privacy.distributed_rdp import ORDERS, poisson_ddg_rdp, weak_ddg_rdp

mpmath.mp.dps = 40


def own_tau(variance, summands):
    """Kairouz et al.'s max divergence of a sum of `summands` N_Z(0, variance) from one."""
    return 10 * math.fsum(
        math.exp(-2 * math.pi**2 * variance * k / (k + 1)) for k in range(1, summands)
    )


def own_amplified_rdp(alpha, event):
    """Σ_k C(α,k)(1−q)^(α−k) q^k e^(k(k−1)/(2z²)), z² = W/Δ², plus (2α−1)·d·τ/(α−1)."""
    q = mpmath.mpf(event.sample_rate)
    total = event.summands * event.local_variance
    z2 = mpmath.mpf(total) / mpmath.mpf(event.l2_sensitivity) ** 2
    tau = own_tau(total / (event.cohort + 1), event.cohort + 1)
    correction = (2 * alpha - 1) * event.dimension * tau / (alpha - 1)
    if q >= 1:
        return float(alpha / (2 * z2)) + correction
    series = mpmath.fsum(
        mpmath.binomial(alpha, k)
        * (1 - q) ** (alpha - k)
        * q**k
        * mpmath.exp(k * (k - 1) / (2 * z2))
        for k in range(alpha + 1)
    )
    return float(mpmath.log(series) / (alpha - 1)) + correction


def own_weak_rdp(alpha, event):
    """log(1 − q + q·e^((α−1)ε(α)))/(α−1) with ε the unsampled bound, capped by ε itself.

    ε is Kairouz et al.'s bound at the survivors' noise, with τ of the cohort one larger (the
    client's own share added, each share W/(n+1)), the larger τ of the two.
    """
    tau = own_tau(event.local_variance * event.cohort / (event.cohort + 1), event.summands + 1)
    scale = event.l2_sensitivity / math.sqrt(event.summands * event.local_variance)
    base = min(
        alpha * scale**2 / 2 + tau * event.dimension,
        alpha / 2 * (scale + math.sqrt(event.dimension) * tau) ** 2,
    )
    q = mpmath.mpf(event.sample_rate)
    if q >= 1:
        return base
    value = mpmath.log(1 - q + q * mpmath.exp((alpha - 1) * base)) / (alpha - 1)
    return min(float(value), base)


ALPHAS = list(range(2, 129)) + [160, 192, 256, 384, 512]
"""Every integer order up to 128 (more than Privet's), then Privet's larger ones."""


def own_epsilon(rounds_of_events, delta):
    """min over α of Balle et al.'s conversion of the summed RDP."""
    best = math.inf
    for alpha in ALPHAS:
        rdp = 0.0
        for event, count in rounds_of_events:
            larger_share = event.local_variance * event.cohort / (event.cohort + 1)
            amplified = event.summands == event.cohort >= 3 and larger_share >= 4
            own = own_amplified_rdp if amplified else own_weak_rdp
            rdp += count * own(alpha, event)
        eps = rdp + math.log1p(-1 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        best = min(best, eps)
    return best


@pytest.mark.parametrize(
    ("z", "q", "rounds"),
    [(1.2, 0.2, 50), (2.0, 0.2, 100), (0.9, 0.05, 200), (3.0, 1.0, 10)],
)
def test_epsilon_of_rounds_without_dropouts_equals_the_bound_computed_independently(z, q, rounds):
    cohort, share = 14, 90_000.0
    sensitivity = math.sqrt(cohort * share) / z
    event = DistributedDiscreteGaussianRound(
        sensitivity, share, cohort, 32768, q, rounds, cohort=cohort
    )
    assert event.amplified
    ours = get_accountant("rdp").epsilon([event], 1e-5)
    theirs = own_epsilon([(event.with_count(1), rounds)], 1e-5)
    assert ours == pytest.approx(theirs, rel=0.01)
    assert ours >= theirs * (1 - 1e-9)  # a subset of orders can only be more conservative


@pytest.mark.parametrize(("z", "q", "rounds"), [(1.5375, 0.2, 100), (0.9, 0.05, 300)])
def test_with_large_shares_a_round_without_dropouts_costs_the_sampled_gaussian_of_dp_accounting(
    z, q, rounds
):
    cohort = 20
    event = DistributedDiscreteGaussianRound(
        1000.0, 1e6 * z**2 / cohort, cohort, 8192, q, rounds, cohort=cohort
    )
    accountant = dp_accounting.rdp.RdpAccountant(orders=[float(a) for a in ORDERS])
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    expected = accountant.get_epsilon(1e-5)
    assert get_accountant("rdp").epsilon([event], 1e-5) == pytest.approx(expected, rel=0.01)


def _dg_pmf(variance, support):
    weights = np.exp(-(support.astype(float) ** 2) / (2 * variance))
    return weights / weights.sum()


def _sum_of_shares(shares, variance, support):
    """The exact pmf of a sum of `shares` N_Z(0, variance), on `support` (centred, wide)."""
    one = _dg_pmf(variance, support)
    total = one
    for _ in range(shares - 1):
        total = np.convolve(total, one)
        middle = len(total) // 2
        half = len(support) // 2
        total = total[middle - half : middle + half + 1]
    return total / total.sum()


def _divergence(p, q, alpha):
    """D_α(p‖q) in log space; points where either pmf underflowed add nothing measurable."""
    mask = (p > 0) & (q > 0)
    terms = alpha * np.log(p[mask]) + (1 - alpha) * np.log(q[mask])
    return float(logsumexp(terms)) / (alpha - 1)


@pytest.mark.parametrize(("total", "q"), [(3.0, 0.3), (6.0, 0.1), (2.0, 0.6)])
def test_the_amplified_bound_lies_above_the_exact_divergences_of_small_discrete_rounds(total, q):
    # One dimension, shares of variance W/n so small that the discrete correction τ is large.
    # Given the other clients, the round without the client sums the others' shares (R); with
    # it, a cohort one larger (μ0), shifted by the client's integer update (μ1, norm Δ = 1).
    support = np.arange(-200, 201)
    cohort = 3
    for others, with_client in ((cohort - 1, cohort), (cohort, cohort + 1)):
        without = _sum_of_shares(others, total / others, support)
        noise = _sum_of_shares(with_client, total / with_client, support)
        shifted = np.roll(noise, 1)
        p = (1 - q) * without + q * shifted
        qq = (1 - q) * without + q * noise
        event = DistributedDiscreteGaussianRound(
            1.0, total / cohort, cohort, 1, q, 1, cohort=cohort
        )
        bound = poisson_ddg_rdp(1.0, total, cohort, 1, q)
        for index, alpha in enumerate(ORDERS[:12]):
            assert _divergence(p, qq, alpha) <= bound[index] + 1e-12
            assert _divergence(qq, p, alpha) <= bound[index] + 1e-12
            assert bound[index] == pytest.approx(own_amplified_rdp(alpha, event), rel=1e-9)


def test_a_round_whose_release_depends_on_who_was_sampled_needs_the_joint_convexity_charge():
    # Had the client not been sampled the round would not have run (too few clients): the
    # output is "nothing" against the shifted sum, and the amplified bound is exceeded.
    support = np.arange(-200, 201)
    total, q, shares = 4.0, 0.2, 2
    noise = _sum_of_shares(shares, total / shares, support)
    nothing = np.zeros(len(support) + 1)
    nothing[-1] = 1.0
    p = (1 - q) * nothing + q * np.append(np.roll(noise, 1), 0.0)
    qq = (1 - q) * nothing + q * np.append(noise, 0.0)
    event = DistributedDiscreteGaussianRound(1.0, total / shares, shares, 1, q, 1, cohort=shares)
    assert not event.amplified  # a cohort of 2: without the client it would not have run
    amplified = poisson_ddg_rdp(1.0, total, shares, 1, q)
    weak = weak_ddg_rdp(1.0, total / shares, shares, 1, q, shares)
    exceeded = 0
    for index, alpha in enumerate(ORDERS[:12]):
        exact = max(_divergence(p, qq, alpha), _divergence(qq, p, alpha))
        assert exact <= weak[index] + 1e-12
        assert weak[index] == pytest.approx(own_weak_rdp(alpha, event), rel=1e-9)
        exceeded += exact > amplified[index]
    assert exceeded >= 6


def test_rounds_with_dropouts_or_not_released_are_charged_more_and_as_computed_independently():
    share, cohort = 40_000.0, 20
    full = DistributedDiscreteGaussianRound(500.0, share, cohort, 8192, 0.2, cohort=cohort)
    dropped = DistributedDiscreteGaussianRound(500.0, share, cohort - 1, 8192, 0.2, cohort=cohort)
    skipped = DistributedDiscreteGaussianRound.not_released(full.noise_multiplier, 0.2)
    assert full.amplified and not dropped.amplified and not skipped.amplified
    eps = {e: get_accountant("rdp").epsilon([e.with_count(20)], 1e-5) for e in (full, dropped)}
    assert eps[dropped] > 2 * eps[full]  # fewer shares, and no amplification
    ledger = PrivacyLedger(owner="server", level="client", delta=1e-5)
    for index, event in enumerate([full, dropped, full, skipped], start=1):
        ledger.record(index, [event])
    merged = [(full, 2), (dropped, 1), (skipped, 1)]
    assert ledger.epsilon("rdp") == pytest.approx(own_epsilon(merged, 1e-5), rel=0.01)
    assert skipped.noise_multiplier == pytest.approx(full.noise_multiplier)


def test_a_round_is_amplified_only_if_a_cohort_one_larger_would_have_run():
    # Shares of 4.5 units over 8 clients: with one more client they would be 4.0, still taken.
    assert DistributedDiscreteGaussianRound(10.0, 4.5, 8, 16, 0.5, cohort=8).amplified
    # Shares of 4.2 over 8: one more client would make them 3.73, which a round refuses, so
    # whether the round ran would have depended on who was sampled.
    assert not DistributedDiscreteGaussianRound(10.0, 4.2, 8, 16, 0.5, cohort=8).amplified
    assert not DistributedDiscreteGaussianRound(10.0, 100.0, 2, 16, 0.5, cohort=2).amplified


def test_an_event_refuses_more_survivors_than_its_cohort_and_round_trips_its_cohort():
    with pytest.raises(ValueError, match="out of a cohort of 3"):
        DistributedDiscreteGaussianRound(10.0, 100.0, 4, 16, 0.5, cohort=3)
    event = DistributedDiscreteGaussianRound(10.0, 100.0, 3, 16, 0.5, cohort=5)
    assert type(event).from_dict(event.to_dict()) == event
    assert event.to_dict()["cohort"] == 5
    assert DistributedDiscreteGaussianRound(10.0, 100.0, 4, 16, 0.5).cohort == 4


def test_small_shares_pay_the_discrete_correction_tau():
    # σ² = 0.3 per client: τ is no longer negligible, and ε grows with the dimension.
    small = [DistributedDiscreteGaussianRound(1.0, 0.3, 5, d, 1.0, 1) for d in (1, 100)]
    eps = [get_accountant("rdp").epsilon([e], 1e-5) for e in small]
    assert eps[1] > eps[0]
    for event, ours in zip(small, eps, strict=True):
        assert ours == pytest.approx(own_epsilon([(event, 1)], 1e-5), rel=0.01)


def test_calibration_reaches_the_target_and_no_less_noise_would():
    z = distributed_noise_for_target_epsilon(8.0, 1e-5, 0.2, 100)
    for factor, below in ((1.0, True), (0.99, False)):
        event = DistributedDiscreteGaussianRound.at_noise_multiplier(z * factor, 0.2, 100)
        assert (get_accountant("rdp").epsilon([event], 1e-5) <= 8.0) is below


def test_only_the_rdp_accountant_has_the_bound_and_the_others_refuse_it_by_name():
    event = DistributedDiscreteGaussianRound(100.0, 1e4, 5, 64, 0.5, 3)
    for name in ("pld", "prv"):
        accountant = get_accountant(name)
        assert not accountant.supports(event)
        with pytest.raises(ValueError, match="distributed_discrete_gaussian_round"):
            accountant.epsilon([event], 1e-5)


def test_privet_budget_calibrates_distributed_dp_and_its_epsilon_is_the_papers(capsys):
    from privet.cli import main

    plan = ["budget", "--level", "distributed", "--clients", "100", "--clients-per-round", "20"]
    assert main([*plan, "--rounds", "40", "--target-epsilon", "8"]) == 0
    out = capsys.readouterr().out
    z = float(out.strip().splitlines()[-1].split()[1])
    event = DistributedDiscreteGaussianRound.at_noise_multiplier(z, 0.2)
    assert own_epsilon([(event, 40)], 1e-5) == pytest.approx(8.0, rel=0.01)
    assert own_epsilon([(event, 40)], 1e-5) <= 8.0 * (1 + 1e-9)
    # Integer orders and RDP: distributed DP needs a little more noise than the server's
    # Gaussian accounted by PLD, but within 10%.
    assert (
        main(["budget", *plan[1:2], "client", *plan[3:], "--rounds", "40", "--target-epsilon", "8"])
        == 0
    )
    central = float(capsys.readouterr().out.strip().splitlines()[-1].split()[1])
    assert central < z < 1.1 * central
    assert main([*plan, "--rounds", "40", "--noise-multiplier", "2", "--accountant", "pld"]) == 2
    err = capsys.readouterr().err.strip()
    assert "use --accountant rdp" in err and len(err.splitlines()) == 1
