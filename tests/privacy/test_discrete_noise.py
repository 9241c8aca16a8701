"""The exact discrete samplers of distributed DP (issue 16) draw exactly their distributions.

Each is checked against its exact probability mass function: a chi-square test over the values
(tails pooled), the variance and a tail probability within 5 standard errors. A sampler that is
off (a wrong scale, a double-counted zero, a float shortcut) fails these at these sample sizes:
the continuous Gaussian of σ² = 1/3, rounded, gets a chi-square p-value of 1e-156 here.
The draws use a seeded source so the test is reproducible; the samplers' default is the
operating system's randomness.
"""

from __future__ import annotations

import inspect
import math
import os
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from privet.privacy import discrete_noise
from privet.privacy.discrete_noise import (
    MAX_ARRAY_ACCEPTANCE_DENOMINATOR,
    MAX_ARRAY_VARIANCE,
    array_variance_fits,
    bernoulli,
    bernoulli_exp,
    bernoulli_exp_array,
    discrete_gaussian,
    discrete_gaussian_array,
    discrete_gaussian_pmf,
    discrete_laplace,
    discrete_laplace_array,
    noise_source,
    uniform_below,
    uniform_below_array,
)
from privet.privacy.secagg.crypto import SeededRandom


def seeded(k: int) -> SeededRandom:
    return SeededRandom(bytes([k]) * 32)


def matches_pmf(draws: np.ndarray, pmf, reach: int) -> float:
    """The chi-square p-value of ``draws`` against ``pmf`` on -reach..reach, tails pooled."""
    values = np.arange(-reach, reach + 1)
    expected = pmf(values) * len(draws)
    inside = draws[np.abs(draws) <= reach] + reach
    observed = np.bincount(inside, minlength=2 * reach + 1).astype(float)
    tail_observed = len(draws) - observed.sum()
    tail_expected = len(draws) - expected.sum()
    observed, expected = np.append(observed, tail_observed), np.append(expected, tail_expected)
    keep = expected >= 5  # chi-square needs enough expected counts per cell
    pooled_obs = np.append(observed[keep], observed[~keep].sum())
    pooled_exp = np.append(expected[keep], expected[~keep].sum())
    if pooled_exp[-1] < 5:
        pooled_obs[-2] += pooled_obs[-1]
        pooled_exp[-2] += pooled_exp[-1]
        pooled_obs, pooled_exp = pooled_obs[:-1], pooled_exp[:-1]
    return float(stats.chisquare(pooled_obs, pooled_exp).pvalue)


@pytest.mark.parametrize(("sigma2", "count"), [(Fraction(1, 3), 20000), (4, 20000), (100, 8000)])
def test_discrete_gaussian_draws_its_exact_distribution(sigma2, count):
    source = seeded(1)
    draws = np.array([discrete_gaussian(sigma2, source) for _ in range(count)])
    variance_target = float(sigma2)
    reach = int(8 * math.sqrt(variance_target)) + 4
    support = np.arange(-reach, reach + 1)
    pmf = discrete_gaussian_pmf(variance_target, support)
    exact_variance = float((pmf * support**2).sum())
    assert matches_pmf(draws, lambda v: discrete_gaussian_pmf(variance_target, v), reach) > 1e-3
    # Moments: mean 0, and the variance of the discrete Gaussian (below σ² for small σ).
    fourth = float((pmf * support**4).sum())
    assert abs(draws.mean()) < 5 * math.sqrt(exact_variance / count)
    assert abs(draws.var() - exact_variance) < 5 * math.sqrt((fourth - exact_variance**2) / count)
    # A tail: P(|X| > 2σ).
    cut = 2 * math.sqrt(variance_target)
    tail = float(pmf[np.abs(support) > cut].sum())
    seen = np.count_nonzero(np.abs(draws) > cut) / count
    assert abs(seen - tail) < 5 * math.sqrt(tail * (1 - tail) / count)


def test_discrete_laplace_draws_its_exact_distribution():
    t, count = 3, 20000
    source = seeded(2)
    draws = np.array([discrete_laplace(t, source) for _ in range(count)])
    norm = (1 - math.exp(-1 / t)) / (1 + math.exp(-1 / t))

    def pmf(values):
        return norm * np.exp(-np.abs(values) / t)

    assert matches_pmf(draws, pmf, 20) > 1e-3
    assert np.count_nonzero(draws == 0) / count == pytest.approx(
        norm, abs=5 * math.sqrt(norm / count)
    )


@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(5, 2)])
def test_bernoulli_of_exp_minus_gamma_has_that_probability(gamma):
    count = 20000
    source = seeded(3)
    rate = sum(bernoulli_exp(gamma, source) for _ in range(count)) / count
    p = math.exp(-gamma)
    if gamma == 0:
        assert rate == 1.0
    else:
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / count)


def test_uniform_integers_and_rational_coins_are_exact_and_cover_their_range():
    source = seeded(4)
    draws = [uniform_below(5, source) for _ in range(5000)]
    assert set(draws) == {0, 1, 2, 3, 4}
    assert stats.chisquare(np.bincount(draws)).pvalue > 1e-3
    assert uniform_below(1, source) == 0
    assert not any(bernoulli(0, source) for _ in range(100))
    assert all(bernoulli(1, source) for _ in range(100))


def test_noise_comes_from_the_os_unless_a_reproducible_run_seeds_it():
    for sampler in (discrete_gaussian, discrete_laplace, bernoulli_exp, bernoulli, uniform_below):
        assert inspect.signature(sampler).parameters["random_bytes"].default is os.urandom
    assert noise_source(None) is os.urandom
    a, b = noise_source(b"\x07" * 32), noise_source(b"\x07" * 32)
    first = [discrete_gaussian(9, a) for _ in range(50)]
    assert first == [discrete_gaussian(9, b) for _ in range(50)]
    assert first != [discrete_gaussian(9, noise_source(b"\x08" * 32)) for _ in range(50)]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: discrete_gaussian(0), "sigma2 must be positive"),
        (lambda: discrete_gaussian(-1), "sigma2 must be positive"),
        (lambda: discrete_laplace(0), "t must be a whole number"),
        (lambda: bernoulli_exp(Fraction(-1, 2)), "gamma must be at least 0"),
        (lambda: bernoulli(Fraction(3, 2)), r"p must lie in \[0, 1\]"),
        (lambda: uniform_below(0), "n must be at least 1"),
    ],
)
def test_impossible_parameters_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- the array sampler a client noises its update with ---------------------------------------------


@pytest.mark.parametrize(
    ("sigma2", "count"),
    [
        (1, 200_000),
        (7, 200_000),
        (2_500, 200_000),
        # Rational variances: a client's share W/n of a cohort's total variance W.
        (Fraction(9, 2), 200_000),
        (Fraction(7, 3), 200_000),
        (Fraction(1_000_003, 20), 200_000),
        # Near the limits: 2·a·b·t² ≈ 2^53 here, and just under 2^56 for σ² just above 1, where
        # 0.5% of the proposals (|y| ≥ 11) take the exact scalar test.
        (Fraction(2**26 + 1, 64), 200_000),
        (Fraction(94_906_266, 94_906_265), 200_000),
    ],
)
def test_the_array_sampler_draws_the_exact_discrete_gaussian(sigma2, count):
    draws = discrete_gaussian_array(sigma2, count, seeded(11))
    reach = int(8 * math.sqrt(sigma2)) + 4
    support = np.arange(-reach, reach + 1)
    pmf = discrete_gaussian_pmf(sigma2, support)
    exact_variance = float((pmf * support.astype(float) ** 2).sum())
    fourth = float((pmf * support.astype(float) ** 4).sum())
    assert matches_pmf(draws, lambda v: discrete_gaussian_pmf(sigma2, v), reach) > 1e-3
    assert abs(draws.mean()) < 5 * math.sqrt(exact_variance / count)
    assert abs(draws.var() - exact_variance) < 5 * math.sqrt((fourth - exact_variance**2) / count)
    for k in (2, 3):  # tails at 2σ and 3σ
        cut = k * math.sqrt(sigma2)
        tail = float(pmf[np.abs(support) > cut].sum())
        seen = np.count_nonzero(np.abs(draws) > cut) / count
        assert abs(seen - tail) < 5 * math.sqrt(tail * (1 - tail) / count)


@pytest.mark.parametrize(
    ("sigma2", "width"), [(12, 1), (Fraction(7, 3), 1), (Fraction(1_000_003, 20), 32)]
)
def test_the_array_sampler_agrees_with_the_scalar_reference(sigma2, width):
    # Two independent exact samplers of one law: a two-sample test cannot tell them apart.
    # Values are grouped in cells of ``width`` integers, about 4σ either side of 0 in all.
    source = seeded(14)
    scalar = np.array([discrete_gaussian(sigma2, source) for _ in range(6000)])
    array = discrete_gaussian_array(sigma2, 60_000, seeded(15))
    cells = int(4 * math.sqrt(sigma2)) // width + 1
    table = np.array(
        [
            np.bincount(np.clip(draws // width, -cells, cells) + cells, minlength=2 * cells + 1)
            for draws in (scalar, array)
        ]
    )
    table = table[:, table.sum(axis=0) >= 10]
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_the_array_helpers_are_exact_on_their_own():
    source = seeded(16)
    draws = uniform_below_array(np.full(60_000, 6, dtype=np.int64), source)
    assert set(np.unique(draws)) == set(range(6))
    assert stats.chisquare(np.bincount(draws)).pvalue > 1e-3
    for numerator, denominator in ((0, 1), (1, 3), (5, 2)):
        hits = bernoulli_exp_array(np.full(40_000, numerator), denominator, source)
        p = math.exp(-numerator / denominator)
        if numerator == 0:
            assert hits.all()
        else:
            assert abs(hits.mean() - p) < 5 * math.sqrt(p * (1 - p) / 40_000)
    t = 4
    laplace = discrete_laplace_array(t, 80_000, source)
    norm = (1 - math.exp(-1 / t)) / (1 + math.exp(-1 / t))
    assert matches_pmf(laplace, lambda v: norm * np.exp(-np.abs(v) / t), 30) > 1e-3


def test_the_array_sampler_uses_the_os_unless_seeded_and_refuses_bad_input():
    for sampler in (discrete_gaussian_array, discrete_laplace_array, uniform_below_array):
        assert inspect.signature(sampler).parameters["random_bytes"].default is os.urandom
    assert np.array_equal(
        discrete_gaussian_array(9, 100, seeded(17)), discrete_gaussian_array(9, 100, seeded(17))
    )
    assert not np.array_equal(discrete_gaussian_array(9, 100), discrete_gaussian_array(9, 100))
    for bad, message in (
        (0, "sigma2 must lie in"),
        (2.5, "must be an int or a Fraction"),
        (1 << 25, "sigma2 must lie in"),
    ):
        with pytest.raises(ValueError, match=message):
            discrete_gaussian_array(bad, 3)


def accepted_by_the_rule(sigma2: Fraction) -> bool:
    """The documented rule: 1 ≤ σ² ≤ 2^24 and 2·a·b·t² ≤ 2^56, for σ² = a/b and t = ⌊σ⌋ + 1."""
    a, b = sigma2.numerator, sigma2.denominator
    t = math.isqrt(a // b) + 1
    return 1 <= sigma2 <= MAX_ARRAY_VARIANCE and 2 * a * b * t * t <= 1 << 56


def test_the_array_sampler_takes_fractions_up_to_its_limit_and_says_which_beforehand():
    assert MAX_ARRAY_VARIANCE == 1 << 24 and MAX_ARRAY_ACCEPTANCE_DENOMINATOR == 1 << 56
    # Every integer variance in range fits; near 2^24 a denominator up to 11 does, 12 does not.
    for sigma2 in (1, 2, 3, 4_096**2, MAX_ARRAY_VARIANCE, np.int64(9), Fraction(9)):
        assert array_variance_fits(sigma2)
    near_top = [Fraction(MAX_ARRAY_VARIANCE * b - 1, b) for b in (11, 12)]
    assert [array_variance_fits(f) for f in near_top] == [True, False]
    # The helper follows the documented rule, across denominators and magnitudes.
    rng = np.random.default_rng(5)
    for _ in range(2000):
        b = int(2 ** rng.uniform(0, 28)) + 1
        sigma2 = Fraction(int(b * 2 ** rng.uniform(-1, 25)) + 1, b)
        assert array_variance_fits(sigma2) == accepted_by_the_rule(sigma2), sigma2
    # An int and the same value as a Fraction are one law: the same draws from the same source.
    assert np.array_equal(
        discrete_gaussian_array(9, 500, seeded(18)),
        discrete_gaussian_array(Fraction(18, 2), 500, seeded(18)),
    )
    assert discrete_gaussian_array(Fraction(7, 3), 0, seeded(18)).shape == (0,)
    support = np.arange(-10, 11)
    assert np.array_equal(
        discrete_gaussian_pmf(Fraction(9, 2), support), discrete_gaussian_pmf(4.5, support)
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Fraction(MAX_ARRAY_VARIANCE * 12 - 1, 12), r"above MAX_ARRAY_ACCEPTANCE_DENOMINATOR"),
        (Fraction(2**27 + 1, 2**27), r"above MAX_ARRAY_ACCEPTANCE_DENOMINATOR"),
        (Fraction(1_000_003, 2_000_000), r"sigma2 must lie in \[1, 16777216\]"),
        (Fraction(-9, 2), r"sigma2 must lie in"),
        (Fraction(MAX_ARRAY_VARIANCE + 1, 1), r"sigma2 must lie in"),
        (4.5, r"must be an int or a Fraction \(a float is not exact: pass a Fraction\)"),
        (np.float64(4.0), r"pass a Fraction"),
        (True, r"must be an int or a Fraction"),
        ("9/2", r"must be an int or a Fraction"),
    ],
)
def test_the_array_sampler_refuses_an_inexact_or_too_fine_variance_in_one_line(bad, message):
    assert not array_variance_fits(bad)
    with pytest.raises(ValueError, match=message) as refused:
        discrete_gaussian_array(bad, 3, seeded(19))
    assert "\n" not in str(refused.value)


def test_far_proposals_are_decided_by_the_exact_scalar_test(monkeypatch):
    # σ² just above 1 with b ≈ 2^26.5: proposals |y| ≥ 11 would overflow the int64 square, so
    # each goes to the scalar `bernoulli_exp` (and is accepted with probability below e^-43).
    sigma2 = Fraction(94_906_266, 94_906_265)
    exponents = []

    def recording(gamma, random_bytes):
        exponents.append(Fraction(gamma))
        return bernoulli_exp(gamma, random_bytes)

    monkeypatch.setattr(discrete_noise, "bernoulli_exp", recording)
    draws = discrete_gaussian_array(sigma2, 20_000, seeded(20))
    assert 20 < len(exponents) < 400  # 0.5% of about 33 000 proposals
    assert min(exponents) > 43
    assert np.abs(draws).max() < 11
