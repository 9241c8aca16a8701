"""The inverse problem: the smallest noise multiplier that keeps a planned run within a target ε.

Calibration is separate from accounting (as in dp-accounting's `mechanism_calibration`): it only
asks an accountant for ε(σ), which decreases monotonically in σ, and bisects.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable
from numbers import Integral
from pathlib import Path

from privet.privacy.accountants import (
    DEFAULT_ACCOUNTANT,
    Accountant,
    AccountingError,
    get_accountant,
)
from privet.privacy.events import (
    ClientLevelRound,
    DistributedDiscreteGaussianRound,
    PoissonGaussianSteps,
    PrivacyEvent,
)
from privet.privacy.seal import is_sealed, seal

# Above this σ DP-SGD learns nothing useful; a target that needs more is reported as unreachable.
MAX_NOISE_MULTIPLIER = 1000.0
CACHE_ENV = "PRIVET_CALIBRATION_CACHE"
"""A private folder where calibrated noise multipliers are remembered across processes.

`privet node` sets it: each of a node's messages runs in a fresh process, and without it every
training message would calibrate σ again (a bisection of about 17 accountant evaluations, seconds
on a small machine), although the node's plan is the same every round. A remembered σ is used only
after one accountant evaluation confirms that it still meets the target, so a damaged or edited
cache can never raise a client's ε above its target (at worst it costs noise)."""
# With the node's secret (`privacy.seal`), a σ that one of its processes calibrated or checked is
# stored sealed, and a sealed entry is used without checking it again (one accountant evaluation
# is most of a small node's training message). Without the secret, or when the seal does not match
# (another node's entry, an edit, damage), the entry is checked with the accountant as before, and
# sealed if it passes.


class CalibrationError(ValueError):
    """A target ε that no noise multiplier within bounds can meet for the planned run."""


def _check_target(target_epsilon: float, delta: float, count: int, unit: str) -> None:
    if isinstance(target_epsilon, bool) or not (
        isinstance(target_epsilon, (int, float))
        and target_epsilon > 0
        and math.isfinite(target_epsilon)
    ):
        raise CalibrationError(f"target epsilon must be a positive number, got {target_epsilon}")
    if isinstance(delta, bool) or not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise CalibrationError(f"delta must be a number in (0, 1), got {delta!r}")
    if isinstance(count, bool) or not isinstance(count, Integral) or count <= 0:
        raise CalibrationError(f"the planned run has no {unit} ({count!r}); nothing to calibrate")


def _bisect(
    eps: Callable[[float], float], target: float, low: float, high: float, tolerance: float
) -> float:
    """Shrink [low, high] (eps(low) > target ≥ eps(high)) to width `tolerance`; return high."""
    while high - low > tolerance:
        mid = (low + high) / 2
        if eps(mid) > target:
            low = mid
        else:
            high = mid
    return high


def _calibrate(
    target_epsilon: float,
    delta: float,
    event_for: Callable[[float], PrivacyEvent],
    accountant: str | Accountant,
    tolerance: float,
    plan: str,
) -> float:
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise CalibrationError(f"the tolerance must be a positive number, got {tolerance!r}")
    chosen = get_accountant(accountant) if isinstance(accountant, str) else accountant
    rdp = get_accountant("rdp")

    def eps_with(which: Accountant) -> Callable[[float], float]:
        def eps(sigma: float) -> float:
            try:
                return which.epsilon([event_for(sigma)], delta)
            except AccountingError as error:
                raise CalibrationError(f"cannot calibrate with {which.name}: {error}") from None

        return eps

    eps, eps_rdp = eps_with(chosen), eps_with(rdp)
    unreachable = CalibrationError(
        f"target epsilon {target_epsilon:g} is unreachable at delta={delta:g} for {plan}, even "
        f"with noise multiplier {MAX_NOISE_MULTIPLIER:g}; "
        "raise the target epsilon or delta, or plan fewer rounds or epochs"
    )
    # RDP first: it is cheap, and its σ brackets the answer of the tighter accountants.
    if eps_rdp(MAX_NOISE_MULTIPLIER) > target_epsilon:
        if chosen.name == "rdp" or eps(MAX_NOISE_MULTIPLIER) > target_epsilon:
            raise unreachable
        return _bisect(eps, target_epsilon, 0.0, MAX_NOISE_MULTIPLIER, tolerance)
    low, high = 0.0, 1.0
    while eps_rdp(high) > target_epsilon:
        low, high = high, min(2 * high, MAX_NOISE_MULTIPLIER)
    sigma_rdp = _bisect(eps_rdp, target_epsilon, low, high, tolerance)
    if chosen.name == "rdp":
        return sigma_rdp
    high = sigma_rdp
    while eps(high) > target_epsilon:  # only if the other accountant is looser here than RDP
        low, high = high, min(2 * high, MAX_NOISE_MULTIPLIER)
        if low == MAX_NOISE_MULTIPLIER:
            raise unreachable
    low = high / 2
    while eps(low) <= target_epsilon:
        high, low = low, low / 2
        if high < tolerance:
            return high
    return _bisect(eps, target_epsilon, low, high, tolerance)


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str | Accountant = DEFAULT_ACCOUNTANT,
    tolerance: float = 1e-4,
) -> float:
    """Smallest σ (to within `tolerance`) such that `steps` DP-SGD steps stay ≤ target ε.

    The search is a bisection on ε(σ), which decreases monotonically in σ; the result is rounded
    up, so the planned run never exceeds the target by the chosen accountant.
    """
    _check_target(target_epsilon, delta, steps, "training steps")
    try:
        PoissonGaussianSteps(1.0, sample_rate, int(steps))
    except ValueError as error:
        raise CalibrationError(str(error)) from None

    def event_for(sigma: float) -> PrivacyEvent:
        return PoissonGaussianSteps(sigma, sample_rate, int(steps))

    key = {
        "mechanism": "poisson_gaussian_steps",
        "target_epsilon": float(target_epsilon),
        "delta": float(delta),
        "sample_rate": float(sample_rate),
        "steps": int(steps),
        "accountant": accountant if isinstance(accountant, str) else None,
        "tolerance": float(tolerance),
    }
    remembered = _remembered_sigma(key, event_for, target_epsilon, delta)
    if remembered is not None:
        return remembered
    sigma = _calibrate(
        target_epsilon,
        delta,
        event_for,
        accountant,
        tolerance,
        f"{steps} steps at sample rate {sample_rate:.4g}",
    )
    _remember_sigma(key, sigma)
    return sigma


def _cache_file(key: dict[str, object]) -> Path | None:
    """Where `key`'s σ is remembered (None: no cache in this process, or no named accountant)."""
    folder = os.environ.get(CACHE_ENV)
    if not folder or key.get("accountant") is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(folder) / f"sigma-{digest}.json"


def _remembered_sigma(
    key: dict[str, object],
    event_for: Callable[[float], PrivacyEvent],
    target_epsilon: float,
    delta: float,
) -> float | None:
    """The σ remembered for `key`, if one is there, is for this key and still meets the target."""
    path = _cache_file(key)
    if path is None:
        return None
    try:
        stored = json.loads(path.read_text())
        sigma = float(stored["sigma"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if stored.get("key") != key or not (0 < sigma <= MAX_NOISE_MULTIPLIER):
        return None
    if is_sealed(_sealed_payload(key, sigma), stored.get("seal")):
        return sigma  # this node's processes checked this very entry
    accountant = get_accountant(str(key["accountant"]))
    try:
        if accountant.epsilon([event_for(sigma)], delta) > target_epsilon:
            return None
    except (AccountingError, ValueError):
        return None
    if seal(_sealed_payload(key, sigma)) is not None:
        _remember_sigma(key, sigma)  # checked: sealed for the node's next processes
    return sigma


def _sealed_payload(key: dict[str, object], sigma: float) -> bytes:
    return json.dumps({"key": key, "sigma": sigma}, sort_keys=True).encode()


def _remember_sigma(key: dict[str, object], sigma: float) -> None:
    """Keep `key`'s σ for the next process (atomic; a cache that cannot be written is skipped)."""
    path = _cache_file(key)
    if path is None:
        return
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    entry: dict[str, object] = {"key": key, "sigma": sigma}
    sealed = seal(_sealed_payload(key, sigma))
    if sealed is not None:
        entry["seal"] = sealed
    try:
        temporary.write_text(json.dumps(entry))
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)


def client_noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    accountant: str | Accountant = DEFAULT_ACCOUNTANT,
    tolerance: float = 1e-4,
) -> float:
    """Smallest total (effective) client-level noise multiplier z keeping `rounds` rounds ≤ ε.

    The same inverse problem as `noise_for_target_epsilon`, one subsampled Gaussian per round.
    With adaptive clipping, split the returned z with `update_noise_for_adaptive_clipping`.
    """
    _check_target(target_epsilon, delta, rounds, "rounds")
    try:
        ClientLevelRound(1.0, sample_rate, int(rounds))
    except ValueError as error:
        raise CalibrationError(str(error)) from None
    return _calibrate(
        target_epsilon,
        delta,
        lambda z: ClientLevelRound(z, sample_rate, int(rounds)),
        accountant,
        tolerance,
        f"{rounds} rounds at client sample rate {sample_rate:.4g}",
    )


@functools.lru_cache(maxsize=64)
def distributed_noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    tolerance: float = 1e-4,
) -> float:
    """Smallest z = √(tσ²)/Δ keeping `rounds` distributed discrete Gaussian rounds ≤ ε.

    The event is `DistributedDiscreteGaussianRound.at_noise_multiplier`: rounds in which nobody
    dropped, amplified by the sampling as the Gaussian is (`privacy.distributed_rdp`), accounted
    by RDP, the only accountant that has it. A round with more than t survivors carries more
    noise; one with dropouts is charged more (joint convexity only), which the budget stop
    enforces.
    """
    _check_target(target_epsilon, delta, rounds, "rounds")

    def event_for(z: float) -> PrivacyEvent:
        return DistributedDiscreteGaussianRound.at_noise_multiplier(
            max(z, 1e-12), sample_rate, int(rounds)
        )

    try:
        event_for(1.0)
    except ValueError as error:
        raise CalibrationError(str(error)) from None
    return _calibrate(
        target_epsilon,
        delta,
        event_for,
        "rdp",
        tolerance,
        f"{rounds} rounds of distributed DP at client sample rate {sample_rate:.4g}",
    )
