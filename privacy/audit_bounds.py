"""Empirical privacy lower bounds from canary scores: the statistics of `privet audit`.

An audit inserts canaries, each included at random, and scores each one after training (a
higher score: "more likely included"). Nothing here knows where the scores came from; these
functions turn them into a lower bound on the ε of the mechanism that produced them, at a stated
confidence, so a bound above the accounted ε means the accounting or the mechanism is wrong.

- `one_run_audit`: Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run"
  (NeurIPS 2023). m canaries, each included independently with probability ½; the auditor
  guesses "in" for the k highest scores and "out" for the k lowest and abstains on the rest.
  Under (ε, δ)-DP the number of correct guesses W among r = 2k satisfies (their Theorem 3.2 with
  the δ term of their Proposition 5.2)

      P[W ≥ v] ≤ β + 2mδ · max_{1≤i≤v} (P[v > B ≥ v − i]) / i,   β = P[B ≥ v],

  with B ~ Binomial(r, e^ε / (1 + e^ε)). The lower bound is the largest ε whose p-value is at
  most 1 − confidence. Several guess counts are tried, each at a Bonferroni share of the
  significance, so choosing the best one after seeing the scores keeps the stated confidence.
- `clopper_pearson_audit`: Jagielski, Ullman and Oprea (NeurIPS 2020) for several runs with
  one canary each: a threshold fixed before the runs, Clopper–Pearson upper bounds on the false
  positive and false negative rates, and ε ≥ log((1 − δ − FNR) / FPR).
- `gaussian_estimate`: Andrew et al. (ICLR 2024): the ε of the Gaussian pair fitted to the
  scores of included canaries against the known null distribution. An estimate, not a bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

GUESS_FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4, 1.0)
"""Fractions of the canaries guessed (half "in" from the top, half "out" from the bottom)."""

EPSILON_CEILING = 100.0
"""The largest ε a bound is searched up to (a larger one means no noise at all)."""


class AuditStatisticsError(ValueError):
    """Scores that cannot give a bound (too few canaries, mismatched lengths, bad confidence)."""


def one_run_p_value(
    canaries: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """The probability of at least `correct` right guesses among `guesses` under (ε, δ)-DP.

    Steinke, Nasr and Jagielski's bound (module docstring); `canaries` is m, the number of
    canaries each included with probability ½ (abstentions count in m, not in `guesses`).
    """
    if not 0 <= correct <= guesses <= canaries:
        raise AuditStatisticsError(
            f"need 0 ≤ correct ≤ guesses ≤ canaries, got {correct}, {guesses}, {canaries}"
        )
    accuracy = float(special.expit(epsilon))  # e^ε / (1 + e^ε): ε-DP randomized response
    beta = float(stats.binom.sf(correct - 1, guesses, accuracy))
    if delta == 0 or correct == 0:
        return min(beta, 1.0)
    steps = np.arange(1, correct + 1)
    # P[v > B ≥ v − i] for i = 1..v
    window = stats.binom.sf(correct - steps - 1, guesses, accuracy) - beta
    alpha = float(np.max(window / steps))
    return min(beta + 2 * canaries * delta * alpha, 1.0)


def epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, significance: float, delta: float
) -> float:
    """The largest ε that `correct` right guesses reject at `significance` (0: none rejected)."""
    if one_run_p_value(canaries, guesses, correct, 0.0, delta) > significance:
        return 0.0
    if one_run_p_value(canaries, guesses, correct, EPSILON_CEILING, delta) <= significance:
        return EPSILON_CEILING

    def margin(epsilon: float) -> float:
        return significance - one_run_p_value(canaries, guesses, correct, epsilon, delta)

    return float(optimize.brentq(margin, 0.0, EPSILON_CEILING, xtol=1e-6))


@dataclass(frozen=True)
class OneRunBound:
    """What one run's canaries prove: ε ≥ `epsilon_lower_bound` with probability `confidence`."""

    epsilon_lower_bound: float
    confidence: float
    delta: float
    canaries: int
    included: int
    guesses: int
    correct: int

    def to_dict(self) -> dict[str, float | int]:
        """The audit.json fields of the bound."""
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "confidence": self.confidence,
            "delta": self.delta,
            "canaries": self.canaries,
            "canaries_included": self.included,
            "guesses": self.guesses,
            "correct_guesses": self.correct,
        }


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise AuditStatisticsError(f"confidence must be between 0 and 1, got {confidence:g}")


def one_run_audit(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    confidence: float = 0.95,
    delta: float = 0.0,
    fractions: Sequence[float] = GUESS_FRACTIONS,
    rng: np.random.Generator | None = None,
) -> OneRunBound:
    """The one-run lower bound from each canary's score and whether it was really included.

    Ties are broken at random (`rng`), so equal scores never favour either side. The bound
    reported is the best over `fractions`, each tested at (1 − confidence) / len(fractions).
    """
    _check_confidence(confidence)
    values = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(included, dtype=bool)
    if values.shape != truth.shape or values.ndim != 1:
        raise AuditStatisticsError(
            f"{values.size} scores for {truth.size} canaries: give one score per canary"
        )
    canaries = int(values.size)
    if canaries < 2:
        raise AuditStatisticsError(f"an audit needs at least 2 canaries, got {canaries}")
    if not np.all(np.isfinite(values)):
        raise AuditStatisticsError("a canary score is not finite")
    generator = rng if rng is not None else np.random.default_rng()
    tie_break = generator.permutation(canaries)
    order = tie_break[np.argsort(-values[tie_break], kind="stable")]
    significance = (1.0 - confidence) / len(fractions)
    best = OneRunBound(0.0, confidence, delta, canaries, int(truth.sum()), 0, 0)
    for fraction in fractions:
        half = max(1, int(fraction * canaries / 2))
        guessed_in, guessed_out = order[:half], order[canaries - half :]
        correct = int(truth[guessed_in].sum() + (~truth[guessed_out]).sum())
        bound = epsilon_lower_bound(canaries, 2 * half, correct, significance, delta)
        if bound > best.epsilon_lower_bound or best.guesses == 0:
            best = OneRunBound(
                bound, confidence, delta, canaries, int(truth.sum()), 2 * half, correct
            )
    return best


def clopper_pearson_upper(successes: int, trials: int, significance: float) -> float:
    """The one-sided Clopper–Pearson upper confidence bound on a binomial proportion."""
    if trials == 0 or successes >= trials:
        return 1.0
    return float(stats.beta.ppf(1.0 - significance, successes + 1, trials - successes))


@dataclass(frozen=True)
class ClopperPearsonBound:
    """Several runs, one canary each: ε ≥ `epsilon_lower_bound` with `confidence`."""

    epsilon_lower_bound: float
    confidence: float
    runs: int
    threshold: float
    false_positive_rate_upper: float
    false_negative_rate_upper: float

    def to_dict(self) -> dict[str, float | int]:
        """The audit.json fields of the bound."""
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "confidence": self.confidence,
            "runs": self.runs,
            "threshold": self.threshold,
            "false_positive_rate_upper": self.false_positive_rate_upper,
            "false_negative_rate_upper": self.false_negative_rate_upper,
        }


def clopper_pearson_audit(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    threshold: float,
    confidence: float = 0.95,
    delta: float = 0.0,
) -> ClopperPearsonBound:
    """Jagielski et al.'s bound over independent runs: guess "in" when a score exceeds `threshold`.

    `threshold` must be fixed before the scores are seen. The two error rates are bounded at
    (1 − confidence) / 2 each, and ε ≥ max of log((1 − δ − FNR) / FPR) and its mirror.
    """
    _check_confidence(confidence)
    values = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(included, dtype=bool)
    if values.shape != truth.shape:
        raise AuditStatisticsError(f"{values.size} scores for {truth.size} runs")
    guessed_in = values > threshold
    significance = (1.0 - confidence) / 2
    false_positive = clopper_pearson_upper(
        int((guessed_in & ~truth).sum()), int((~truth).sum()), significance
    )
    false_negative = clopper_pearson_upper(
        int((~guessed_in & truth).sum()), int(truth.sum()), significance
    )
    candidates = [0.0]
    for numerator_error, denominator_error in (
        (false_negative, false_positive),
        (false_positive, false_negative),
    ):
        numerator = 1.0 - delta - numerator_error
        if numerator > 0 and denominator_error > 0:
            candidates.append(math.log(numerator / denominator_error))
    return ClopperPearsonBound(
        max(candidates), confidence, int(values.size), threshold, false_positive, false_negative
    )


def gaussian_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of the Gaussian mechanism with sensitivity/σ = `mu` (Balle and Wang, ICML 2018)."""
    if mu <= 0:
        return 0.0
    return float(
        stats.norm.cdf(-epsilon / mu + mu / 2)
        - math.exp(epsilon) * stats.norm.cdf(-epsilon / mu - mu / 2)
    )


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest ε with δ(ε) ≤ `delta` for the Gaussian mechanism of ratio `mu`."""
    if mu <= 0 or gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    upper = 1.0
    while gaussian_delta(mu, upper) > delta:
        upper *= 2
        if upper > 1e4:
            return math.inf
    return float(optimize.brentq(lambda e: gaussian_delta(mu, e) - delta, 0.0, upper, xtol=1e-9))


def gaussian_estimate(
    included_scores: Sequence[float] | np.ndarray, null_mean: float, null_std: float, delta: float
) -> float:
    """Andrew et al.'s one-shot ε estimate: the fitted shift of included canaries over the null.

    The scores of included canaries are modelled as Gaussian; their mean shift from the null,
    in units of their standard deviation, is a Gaussian mechanism's ratio μ, and its ε at δ is
    returned. An estimate of what an optimal attacker could reach, not a proven bound.
    """
    values = np.asarray(included_scores, dtype=np.float64)
    if values.size < 2 or null_std <= 0:
        return 0.0
    spread = max(float(values.std(ddof=1)), null_std)
    mu = max(0.0, (float(values.mean()) - null_mean) / spread)
    return gaussian_epsilon(mu, delta)
