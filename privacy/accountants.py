"""Accountants: compose privacy events into ε at a given δ, behind one interface.

Three accountants are offered; all treat every event as compositions of the Poisson-subsampled
Gaussian mechanism (`privacy.events.GaussianComposition`) under add-or-remove-one adjacency:

- ``"rdp"`` (the default): Rényi DP of the subsampled Gaussian (Mironov, Talwar and Zhang 2019,
  arXiv:1908.10530), computed by Opacus' analysis functions on Opacus' default orders and converted
  to (ε, δ) with the improved conversion that Opacus and dp-accounting use (Balle et al. 2020,
  arXiv:1905.09982, Thm. 21). It is the default because it is fast enough to recompute for every
  client in every round (milliseconds once the per-step RDP of a (σ, q) pair is cached), it is a
  valid upper bound, and its numbers are the ones Opacus and TF Privacy users compare against.
- ``"pld"``: Google dp-accounting's privacy-loss-distribution accountant (pessimistic estimate):
  tighter than RDP (5–30 % lower ε on the test grid), at 0.02–0.5 s per history.
- ``"prv"``: Opacus' PRV accountant (Gopi, Lee and Wutschitz 2021, arXiv:2106.02848): numerically
  composed privacy random variables; tight like PLD, and returns an upper bound within `eps_error`.

`rdp_epsilon_classic` gives the older RDP conversion ε = min_α rdp(α) − log δ / (α − 1)
(Mironov 2017, arXiv:1702.07476, Prop. 3), which published numbers such as TF Privacy's tutorials
used, so that they can be reproduced.

No events means nothing was released: ε = 0. Any noise multiplier of 0 means no privacy: ε = ∞.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from numbers import Real
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np

from privacy.events import GaussianComposition, PrivacyEvent, gaussian_compositions

# The orders Opacus' RDP accountant uses by default (opacus/accountants/rdp.py, DEFAULT_ALPHAS),
# which are also TF Privacy's (compute_dp_sgd_privacy), so the numbers Privet prints agree with
# what an Opacus or TF Privacy user computes for the same run.
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
)

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "pld")
DEFAULT_ACCOUNTANT = "rdp"

# Opacus' PRV accountant discretizes on a grid of 2L/mesh points (opacus/accountants/prv.py,
# PRVAccountant._get_domain); past this many points it needs gigabytes, takes minutes or returns ∞.
MAX_PRV_GRID_POINTS = 4_000_000


class AccountingError(ValueError):
    """An accountant cannot compute ε for these events (a numerical limit, not a privacy fact)."""


@runtime_checkable
class Accountant(Protocol):
    """Anything with a name that turns a history of events into ε at δ."""

    name: str

    def epsilon(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        """ε at `delta` of the composition of all `events`."""
        ...


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, Real) or not 0 < delta < 1:
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


def _history(
    events: Iterable[PrivacyEvent], delta: float
) -> tuple[list[GaussianComposition], float | None]:
    """The merged compositions, and ε when it is trivially 0 (nothing) or ∞ (no noise)."""
    _check_delta(delta)
    history = gaussian_compositions(events)
    if not history:
        return history, 0.0
    if any(item.noise_multiplier == 0 for item in history):
        return history, math.inf
    return history, None


def _opacus_rdp() -> ModuleType:
    # Imported on first use: importing Opacus imports torch (seconds), and `import privacy` should
    # stay light for processes that only read or write ledgers.
    from opacus.accountants.analysis import rdp

    return rdp


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(q: float, sigma: float, orders: tuple[float, ...]) -> tuple[float, ...]:
    """Opacus' RDP of one step, cached: a client recomputes ε for the same (σ, q) every round.

    Opacus' `compute_rdp(steps=n)` is this vector times n, so the product is bit-identical.
    """
    return tuple(
        float(value)
        for value in _opacus_rdp().compute_rdp(
            q=q, noise_multiplier=sigma, steps=1, orders=list(orders)
        )
    )


class RdpAccountant:
    """Rényi-DP accountant on Opacus' analysis functions (`opacus.accountants.analysis.rdp`)."""

    name = "rdp"

    def __init__(self, orders: Sequence[float] = DEFAULT_RDP_ORDERS) -> None:
        if not orders or any(not (order > 1 and math.isfinite(order)) for order in orders):
            raise ValueError(f"RDP orders must be finite numbers above 1, got {list(orders)!r}")
        self.orders: tuple[float, ...] = tuple(float(order) for order in orders)

    def rdp(self, history: Sequence[GaussianComposition]) -> np.ndarray:
        """Rényi divergence at each order of the composition (RDP adds up under composition)."""
        total = np.zeros(len(self.orders))
        for sigma, q, count in history:
            total = total + np.asarray(_rdp_per_step(q, sigma, self.orders)) * count
        return total

    def epsilon(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        """ε by Opacus' `get_privacy_spent` (Balle et al. 2020's conversion), as Opacus reports."""
        history, trivial = _history(events, delta)
        if trivial is not None:
            return trivial
        with warnings.catch_warnings():
            # Opacus warns when the best order is at the edge of the range; the bound stays valid.
            warnings.simplefilter("ignore", UserWarning)
            eps, _ = _opacus_rdp().get_privacy_spent(
                orders=list(self.orders), rdp=self.rdp(history), delta=delta
            )
        return float(eps)

    def epsilon_classic(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        """ε = min_α rdp(α) − log δ / (α − 1) (Mironov 2017, arXiv:1702.07476, Prop. 3).

        Looser than `epsilon`; it is the conversion behind older published figures (TF Privacy's
        MNIST tutorial: ε = 3.01), offered so those can be reproduced and compared.
        """
        history, trivial = _history(events, delta)
        if trivial is not None:
            return trivial
        orders = np.asarray(self.orders)
        eps = self.rdp(history) - math.log(delta) / (orders - 1)
        return float(np.nanmin(eps))


# Integer orders only: their RDP is a finite sum (fractional orders need a slow series), and it
# gives an ε within a few percent of the full order set, which is all the grid sizing needs.
_ESTIMATE_ORDERS: tuple[float, ...] = tuple(float(order) for order in range(2, 65))


def _rdp_estimate(history: Sequence[GaussianComposition], delta: float) -> float:
    """A cheap estimate of ε_RDP (integer orders only), to size the PLD and PRV grids."""
    total = sum(
        np.asarray(_rdp_per_step(q, sigma, _ESTIMATE_ORDERS)) * count for sigma, q, count in history
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = _opacus_rdp().get_privacy_spent(
            orders=list(_ESTIMATE_ORDERS), rdp=total, delta=delta
        )
    return float(eps)


class PldAccountant:
    """Google dp-accounting's PLD accountant (`dp_accounting.pld.PLDAccountant`), pessimistic.

    `value_discretization_interval` sets the grid of privacy-loss values. Pessimistic rounding makes
    the result an upper bound whose excess grows with the interval; an interval of 1e-3 is accurate
    to < 0.1 % for ε of a few units but overestimates small ε (≈ 0.1) by tens of percent, so by
    default it is chosen per history as 2e-4 · ε_RDP, clipped to [1e-6, 1e-3]: within 0.2 % of
    dp-accounting at a 2× finer interval over the grid in tests/privacy/test_accountant_grid.py.
    """

    name = "pld"

    def __init__(self, value_discretization_interval: float | None = None) -> None:
        if value_discretization_interval is not None and not (
            0 < value_discretization_interval < 1
        ):
            raise ValueError(
                "the PLD value discretization interval must be in (0, 1), got "
                f"{value_discretization_interval!r}"
            )
        self.value_discretization_interval = value_discretization_interval

    def interval_for(self, history: Sequence[GaussianComposition], delta: float) -> float:
        """The discretization interval used for `history` (fixed, or sized from ε_RDP)."""
        if self.value_discretization_interval is not None:
            return self.value_discretization_interval
        return min(1e-3, max(1e-6, 2e-4 * _rdp_estimate(history, delta)))

    def epsilon(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        """ε from the composed privacy loss distribution (dp-accounting, pessimistic estimate)."""
        history, trivial = _history(events, delta)
        if trivial is not None:
            return trivial
        import dp_accounting

        accountant = dp_accounting.pld.PLDAccountant(
            value_discretization_interval=self.interval_for(history, delta)
        )
        for sigma, q, count in history:
            accountant.compose(
                dp_accounting.SelfComposedDpEvent(
                    dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
                    count,
                )
            )
        return float(accountant.get_epsilon(delta))


class PrvAccountant:
    """Opacus' PRV accountant (`opacus.accountants.PRVAccountant`), its upper bound on ε.

    Opacus returns its estimate plus `eps_error`, an absolute error. By default `eps_error` is
    1 % of ε_RDP, clipped to [1e-3, 0.05], so the result is within ≈ 1–2 % above the PLD value
    for ε ≳ 0.1 (measured in tests/privacy/test_accountant_grid.py) at a fraction of a second
    for typical plans (Opacus' own default is 0.01 absolute, i.e. 10 % of an ε of 0.1). Plans so
    extreme that the grid would exceed `MAX_PRV_GRID_POINTS` (ε in the hundreds) raise
    AccountingError instead of exhausting memory.
    """

    name = "prv"

    def __init__(self, eps_error: float | None = None) -> None:
        if eps_error is not None and not 0 < eps_error < 1:
            raise ValueError(f"the PRV eps_error must be in (0, 1), got {eps_error!r}")
        self.eps_error = eps_error

    def epsilon(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        """ε as Opacus' PRVAccountant.get_epsilon reports it (an upper bound)."""
        history, trivial = _history(events, delta)
        if trivial is not None:
            return trivial
        from opacus.accountants import PRVAccountant

        rdp_eps = _rdp_estimate(history, delta)
        eps_error = self.eps_error or min(0.05, max(1e-3, 0.01 * rdp_eps))
        delta_error = delta / 1000  # Opacus' default
        counts = [count for _, _, count in history]
        # The grid Opacus will build (opacus/accountants/prv.py, PRVAccountant._get_domain): half
        # width L = max(ε_RDP of the whole history at δ_err/4, of one step at δ_err/(8N)) + 3
        # (compute_safe_domain_size, after Gopi et al. 2021, Remark 5.6), here estimated on integer
        # orders, and mesh eps_error / sqrt(N·log(12/δ_err)/2).
        half_width = 3 + max(
            [_rdp_estimate(history, delta_error / 4)]
            + [
                _rdp_estimate([GaussianComposition(sigma, q, 1)], delta_error / (8 * sum(counts)))
                for sigma, q, _ in history
            ]
        )
        mesh = eps_error / math.sqrt(sum(counts) * math.log(12 / delta_error) / 2)
        if 2 * half_width / mesh > MAX_PRV_GRID_POINTS:
            raise AccountingError(
                f"the PRV accountant would need {2 * half_width / mesh:.3g} grid points for "
                "this history, whose ε is far too large for it; use the rdp or pld accountant"
            )
        # Opacus takes log(1 − q), which is −∞ (harmlessly) for q = 1.
        with warnings.catch_warnings(), np.errstate(divide="ignore"):
            warnings.simplefilter("ignore", UserWarning)
            accountant = PRVAccountant()
            accountant.history = [(sigma, q, count) for sigma, q, count in history]
            try:
                eps = float(
                    accountant.get_epsilon(delta, eps_error=eps_error, delta_error=delta_error)
                )
            except (RuntimeError, ValueError) as error:
                raise AccountingError(
                    f"Opacus' PRV accountant failed on this history ({error}); "
                    "use the rdp or pld accountant"
                ) from None
        if not math.isfinite(eps):
            raise AccountingError(
                f"Opacus' PRV accountant returned ε = {eps} for a history with noise; "
                "use the rdp or pld accountant"
            )
        return eps


def get_accountant(name: str) -> Accountant:
    """A fresh accountant by name: one of `ACCOUNTANTS`."""
    if name == "rdp":
        return RdpAccountant()
    if name == "prv":
        return PrvAccountant()
    if name == "pld":
        return PldAccountant()
    raise ValueError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")


def epsilon_for(
    events: Iterable[PrivacyEvent],
    delta: float,
    accountant: str | Accountant = DEFAULT_ACCOUNTANT,
) -> float:
    """ε at `delta` of the composition of all `events`, by the named accountant (default RDP)."""
    chosen = get_accountant(accountant) if isinstance(accountant, str) else accountant
    return chosen.epsilon(events, delta)


def rdp_epsilon_classic(
    events: Iterable[PrivacyEvent],
    delta: float,
    orders: Sequence[float] = DEFAULT_RDP_ORDERS,
) -> float:
    """RDP ε with the classic conversion (Mironov 2017, Prop. 3), for published comparisons."""
    return RdpAccountant(orders).epsilon_classic(events, delta)
