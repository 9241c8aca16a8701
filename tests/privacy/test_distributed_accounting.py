"""ε of distributed DP against the test's own implementation of the papers' bounds.

The test re-derives everything from the papers, written apart from `privacy.distributed_rdp`: the
distributed discrete Gaussian's Rényi bound (Kairouz, Liu, Steinke, ICML 2021, Prop. 14 / Eq. 17),
Zhu and Wang's general bound for Poisson sampling (ICML 2019), in mpmath's 40-digit arithmetic
instead of floats and scipy, and the RDP → (ε, δ) conversion of Balle et al. (2020) by hand over
every integer order from 2 to 128 and Privet's larger ones.
"""

from __future__ import annotations

import math

import dp_accounting
import mpmath
import pytest

from privet.privacy import DistributedDiscreteGaussianRound, PrivacyLedger
from privet.privacy.accountants import get_accountant
from privet.privacy.calibration import distributed_noise_for_target_epsilon

mpmath.mp.dps = 40


def own_base_rdp(alpha, sensitivity, variance, summands, dimension):
    """Kairouz et al.'s Prop. 14 / Eq. 17 bound on the order-α divergence of one round."""
    tau = 10 * math.fsum(
        math.exp(-2 * math.pi**2 * variance * k / (k + 1)) for k in range(1, summands)
    )
    scale = sensitivity / math.sqrt(summands * variance)
    return min(
        alpha * scale**2 / 2 + tau * dimension,
        alpha / 2 * (scale + math.sqrt(dimension) * tau) ** 2,
    )


def own_sampled_rdp(alpha, q, base):
    """Zhu and Wang's general bound for Poisson sampling at rate q, in 40-digit arithmetic."""
    q = mpmath.mpf(q)
    total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
    total += mpmath.binomial(alpha, 2) * q**2 * (1 - q) ** (alpha - 2) * mpmath.exp(base[2])
    for ell in range(3, alpha + 1):
        total += (
            3
            * mpmath.binomial(alpha, ell)
            * q**ell
            * (1 - q) ** (alpha - ell)
            * mpmath.exp((ell - 1) * base[ell])
        )
    return min(float(mpmath.log(total) / (alpha - 1)), base[alpha])


ALPHAS = list(range(2, 129)) + [160, 192, 256, 384, 512]
"""Every integer order up to 128 (more than Privet's), then Privet's larger ones."""


def own_epsilon(rounds_of_events, delta):
    """min over α of Balle et al.'s conversion of the summed RDP."""
    curves = []
    for event, count in rounds_of_events:
        base = [0.0] + [
            own_base_rdp(
                a, event.l2_sensitivity, event.local_variance, event.summands, event.dimension
            )
            for a in range(1, max(ALPHAS) + 1)
        ]
        if event.sample_rate >= 1:
            curve = {alpha: base[alpha] for alpha in ALPHAS}
        else:
            curve = {alpha: own_sampled_rdp(alpha, event.sample_rate, base) for alpha in ALPHAS}
        curves.append((curve, count))
    best = math.inf
    for alpha in ALPHAS:
        rdp = sum(count * curve[alpha] for curve, count in curves)
        eps = rdp + math.log1p(-1 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        best = min(best, eps)
    return best


@pytest.mark.parametrize(
    ("z", "q", "rounds"),
    [(1.2, 0.2, 50), (2.0, 0.2, 100), (0.9, 0.05, 200), (3.0, 1.0, 10)],
)
def test_epsilon_equals_the_papers_bounds_computed_independently(z, q, rounds):
    summands, variance = 14, 90_000.0
    sensitivity = math.sqrt(summands * variance) / z
    event = DistributedDiscreteGaussianRound(sensitivity, variance, summands, 32768, q, rounds)
    ours = get_accountant("rdp").epsilon([event], 1e-5)
    theirs = own_epsilon([(event.with_count(1), rounds)], 1e-5)
    assert ours == pytest.approx(theirs, rel=0.01)
    assert ours >= theirs * (1 - 1e-9)  # a subset of orders can only be more conservative


def test_small_shares_pay_the_discrete_correction_tau():
    # σ² = 0.3 per client: τ is no longer negligible, and ε grows with the dimension.
    small = [DistributedDiscreteGaussianRound(1.0, 0.3, 5, d, 1.0, 1) for d in (1, 100)]
    eps = [get_accountant("rdp").epsilon([e], 1e-5) for e in small]
    assert eps[1] > eps[0]
    for event, ours in zip(small, eps, strict=True):
        assert ours == pytest.approx(own_epsilon([(event, 1)], 1e-5), rel=0.01)


def test_without_sampling_and_with_large_shares_it_is_the_gaussian_of_dp_accounting():
    z, rounds = 1.5, 30
    event = DistributedDiscreteGaussianRound(1000.0, 1e6 * z**2 / 10, 10, 4096, 1.0, rounds)
    accountant = dp_accounting.rdp.RdpAccountant(orders=[float(a) for a in range(2, 513)])
    accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
    expected = accountant.get_epsilon(1e-5)
    assert get_accountant("rdp").epsilon([event], 1e-5) == pytest.approx(expected, rel=0.01)


def test_a_ledger_of_rounds_with_different_survivors_composes_them_all():
    rounds = [
        DistributedDiscreteGaussianRound(500.0, 40_000.0, n, 8192, 0.2) for n in (14, 20, 17, 14)
    ]
    ledger = PrivacyLedger(owner="server", level="client", delta=1e-5)
    for index, event in enumerate(rounds, start=1):
        ledger.record(index, [event])
    merged = [(rounds[0], 2), (rounds[1], 1), (rounds[2], 1)]
    assert ledger.epsilon("rdp") == pytest.approx(own_epsilon(merged, 1e-5), rel=0.01)
    # More survivors carried more noise: charging the threshold alone would cost more.
    threshold_only = PrivacyLedger(owner="server", level="client", delta=1e-5)
    for index in range(1, 5):
        threshold_only.record(index, [rounds[0]])
    assert ledger.epsilon("rdp") < threshold_only.epsilon("rdp")


def test_calibration_reaches_the_target_and_no_less_noise_would():
    z = distributed_noise_for_target_epsilon(8.0, 1e-5, 0.2, 100)
    for factor, below in ((1.0, True), (0.99, False)):
        zz = z * factor
        event = DistributedDiscreteGaussianRound(1000.0 / zz, 1e6, 1, 1, 0.2, 100)
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
    # Distributed DP needs more noise than the server's Gaussian for the same ε (sampling bound).
    assert (
        main(["budget", *plan[1:2], "client", *plan[3:], "--rounds", "40", "--target-epsilon", "8"])
        == 0
    )
    central = float(capsys.readouterr().out.strip().splitlines()[-1].split()[1])
    assert z > central
    assert main([*plan, "--rounds", "40", "--noise-multiplier", "2", "--accountant", "pld"]) == 2
    err = capsys.readouterr().err.strip()
    assert "use --accountant rdp" in err and len(err.splitlines()) == 1
