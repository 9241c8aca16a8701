"""The audit's statistics against known distributions and independent computations."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from scipy import stats

from privet.privacy.audit_bounds import (
    AuditStatisticsError,
    clopper_pearson_audit,
    clopper_pearson_upper,
    epsilon_lower_bound,
    gaussian_epsilon,
    gaussian_estimate,
    one_run_audit,
    one_run_p_value,
)


def _binomial_tail(successes: int, trials: int, p: float) -> float:
    """P[Binomial(trials, p) ≥ successes], summed term by term."""
    return sum(
        math.comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(successes, trials + 1)
    )


def test_pure_dp_p_value_is_the_randomized_response_binomial_tail():
    for guesses, correct, epsilon in [(20, 17, 1.0), (50, 30, 0.3), (10, 10, 2.0)]:
        p = math.exp(epsilon) / (1 + math.exp(epsilon))
        expected = _binomial_tail(correct, guesses, p)
        assert one_run_p_value(100, guesses, correct, epsilon, 0.0) == pytest.approx(expected)


def test_delta_adds_the_theorem_term_computed_by_hand():
    m, r, v, eps, delta = 1000, 40, 35, 1.5, 1e-4
    p = math.exp(eps) / (1 + math.exp(eps))
    beta = _binomial_tail(v, r, p)
    alpha = max((_binomial_tail(v - i, r, p) - beta) / i for i in range(1, v + 1))
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(beta + 2 * m * delta * alpha)


def test_the_bound_is_where_the_p_value_meets_the_significance():
    bound = epsilon_lower_bound(500, 100, 90, 0.05, 0.0)
    assert one_run_p_value(500, 100, 90, bound, 0.0) == pytest.approx(0.05, abs=1e-4)
    assert epsilon_lower_bound(500, 100, 50, 0.05, 0.0) == 0.0  # a coin flip proves nothing


def test_randomized_response_bounds_approach_its_epsilon_as_canaries_grow():
    """ε-DP randomized response is the worst case of the theorem: the bound should reach ε."""
    epsilon, bounds = 1.0, []
    for canaries in (1_000, 10_000, 100_000):
        rng = np.random.default_rng(canaries)
        included = rng.random(canaries) < 0.5
        truthful = rng.random(canaries) < math.exp(epsilon) / (1 + math.exp(epsilon))
        answer = np.where(truthful, included, ~included).astype(float)
        bound = one_run_audit(answer, included, delta=0.0, fractions=(1.0,), rng=rng)
        bounds.append(bound.epsilon_lower_bound)
    assert all(b <= epsilon for b in bounds), bounds
    assert bounds[0] < bounds[-1] and bounds[-1] > 0.95 * epsilon, bounds


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0])
def test_a_bare_gaussian_mechanism_is_never_over_claimed_and_bounds_grow_with_canaries(mu):
    delta = 1e-5
    true_epsilon = gaussian_epsilon(mu, delta)
    by_size = {}
    for canaries in (1_000, 10_000):
        found = []
        for seed in range(5):
            rng = np.random.default_rng([seed, canaries])
            included = rng.random(canaries) < 0.5
            scores = included * mu + rng.standard_normal(canaries)
            found.append(one_run_audit(scores, included, delta=delta, rng=rng).epsilon_lower_bound)
        assert max(found) <= true_epsilon, (found, true_epsilon)
        by_size[canaries] = float(np.mean(found))
    assert by_size[10_000] > by_size[1_000] > 0.1 * true_epsilon, by_size


def test_gaussian_epsilon_matches_dp_accounting():
    for sigma in (0.5, 1.0, 3.0):
        ours = gaussian_epsilon(1 / sigma, 1e-5)
        theirs = dp_accounting.get_epsilon_gaussian(sigma, 1e-5)
        assert ours == pytest.approx(theirs, rel=1e-3)


def test_clopper_pearson_upper_is_the_exact_binomial_quantile():
    for k, n in [(0, 10), (3, 20), (40, 50)]:
        upper = clopper_pearson_upper(k, n, 0.025)
        assert stats.binom.cdf(k, n, upper) == pytest.approx(0.025, rel=1e-6)
    assert clopper_pearson_upper(5, 5, 0.05) == 1.0


def test_clopper_pearson_audit_of_many_runs_stays_below_the_truth():
    mu, delta = 2.0, 1e-5
    rng = np.random.default_rng(3)
    included = rng.random(2000) < 0.5
    scores = included * mu + rng.standard_normal(2000)
    bound = clopper_pearson_audit(scores, included, threshold=mu / 2, delta=delta)
    assert 0.5 < bound.epsilon_lower_bound <= gaussian_epsilon(mu, delta)


def test_gaussian_estimate_recovers_the_shift_it_was_given():
    rng = np.random.default_rng(4)
    scores = 1.0 + rng.standard_normal(20_000)
    estimate = gaussian_estimate(scores, 0.0, 1.0, 1e-5)
    assert estimate == pytest.approx(gaussian_epsilon(1.0, 1e-5), rel=0.05)


@pytest.mark.parametrize(
    ("scores", "included", "confidence", "message"),
    [
        ([1.0, 2.0], [True], 0.95, "2 scores for 1 canaries"),
        ([1.0], [True], 0.95, "at least 2 canaries"),
        ([1.0, 2.0], [True, False], 1.5, "confidence must be between 0 and 1"),
        ([1.0, float("nan")], [True, False], 0.95, "not finite"),
    ],
)
def test_scores_that_cannot_give_a_bound_are_refused_in_one_line(
    scores, included, confidence, message
):
    with pytest.raises(AuditStatisticsError, match=message):
        one_run_audit(scores, included, confidence=confidence)
