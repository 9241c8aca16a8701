"""Accountants: compose privacy events into ε at a given δ, behind one interface.

Three accountants are offered; all treat every event as compositions of the Poisson-subsampled
Gaussian mechanism (`privacy.events.GaussianComposition`) under add-or-remove-one adjacency:

- ``"rdp"`` (the default): Rényi DP of the subsampled Gaussian (Mironov, Talwar and Zhang 2019,
  arXiv:1908.10530) on Privet's orders `DEFAULT_RDP_ORDERS`, converted to (ε, δ) with the improved
  conversion that Opacus and dp-accounting use (Balle et al. 2020, arXiv:1905.09982, Thm. 21). The
  orders are Opacus' defaults (`OPACUS_RDP_ORDERS`, 1.1 to 63, computed by Opacus' analysis
  functions) followed by larger integer orders up to 16384 (computed by Privet's vectorized form of
  the same exact finite sum), because an optimum above 63 is where ε ≲ 0.2 at δ = 1e-5 lives: with
  Opacus' orders alone ε is overstated there and no noise gets below ε ≈ 0.103 at δ = 1e-5. ε is a
  minimum over orders, so the extra orders can only lower (tighten) it, and whenever the optimal
  order is 63 or below Privet's ε is bit-identical to Opacus' `RDPAccountant`. It is the default
  because it is fast enough to recompute for every client in every round (well under a
  millisecond once the per-step RDP of a (σ, q) pair is cached), it is a valid upper bound, and its
  numbers are the ones Opacus and TF Privacy users compare against.
- ``"pld"``: Google dp-accounting's privacy-loss-distribution accountant (pessimistic estimate):
  tighter than RDP (5–30 % lower ε on the test grid), at 0.02–0.5 s per history.
- ``"prv"``: Opacus' PRV accountant (Gopi, Lee and Wutschitz 2021, arXiv:2106.02848): numerically
  composed privacy random variables; tight like PLD, and returns an upper bound within `eps_error`.

`rdp_epsilon_classic` gives the older RDP conversion ε = min_α rdp(α) − log δ / (α − 1)
(Mironov 2017, arXiv:1702.07476, Prop. 3), which published numbers such as TF Privacy's tutorials
used, so that they can be reproduced.

No events means nothing was released: ε = 0. Any noise multiplier of 0 means no privacy: ε = ∞.

Accountants are open, like events: each says which events it can account for (`supports`, after
dp-accounting's `PrivacyAccountant.supports`), and `register_accountant(name)` adds one under the
name `get_accountant` and `epsilon_for` take. An accountant given an event it does not support
refuses with a one-line `AccountingError` that names the event's kind and the registered
accountants that do support it. The three above support every event that composes into
`GaussianComposition`s.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Real
from types import ModuleType
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from privet.privacy.distributed_rdp import ORDERS as DDG_ORDERS
from privet.privacy.distributed_rdp import poisson_ddg_rdp, weak_ddg_rdp
from privet.privacy.events import (
    DiscreteGaussianSumComposition,
    GaussianComposition,
    PrivacyEvent,
    event_kind,
    event_level,
    gaussian_compositions,
    reduces_to_gaussians,
)

# The orders Opacus' RDP accountant uses by default (opacus/accountants/rdp.py, DEFAULT_ALPHAS),
# which are also TF Privacy's (compute_dp_sgd_privacy). Kept for comparisons with those libraries:
# Privet's own orders, `DEFAULT_RDP_ORDERS`, start with these.
OPACUS_RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + [float(order) for order in range(12, 64)]
)
OPACUS_MAX_RDP_ORDER = 63.0

# Integer orders above Opacus' 63 at which Privet also evaluates RDP: every integer to 256, then
# 2^(k/16) (rounded) up to 2^14. The optimal order is about 8.5/ε at δ = 1e-5 (69 for ε = 0.2, 225
# for ε = 0.05, 852 for ε = 0.01), so these reach ε ≈ 5e-4; between grid points the ε lost to
# the grid's spacing is below 0.03 %.
EXTRA_RDP_ORDERS: tuple[float, ...] = tuple(float(order) for order in range(64, 257)) + tuple(
    float(round(256 * 2 ** (k / 16))) for k in range(1, 97)
)

# Privet's RDP orders: Opacus' defaults, then `EXTRA_RDP_ORDERS`. ε is the minimum over orders of
# the converted bound, so adding orders can only lower (tighten) it; when the optimal order is 63
# or below, the ε is bit-identical to Opacus' on its own defaults.
DEFAULT_RDP_ORDERS: tuple[float, ...] = OPACUS_RDP_ORDERS + EXTRA_RDP_ORDERS

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "pld")
"""The built-in accountants' names; `accountant_names()` adds any registered since."""
DEFAULT_ACCOUNTANT = "rdp"

# Opacus' PRV accountant discretizes on a grid of 2L/mesh points (opacus/accountants/prv.py,
# PRVAccountant._get_domain); past this many points it needs gigabytes, takes minutes or returns ∞.
MAX_PRV_GRID_POINTS = 4_000_000

# dp-accounting's PLD accountant discretizes each step's privacy loss on a grid of (loss range /
# interval) points, which grows as 1/σ² (and as 1/interval for a tiny ε), building it at about
# 7 µs a point; composing then spreads the grid over the history's whole privacy loss, about
# ε_RDP / interval points, at roughly 100 bytes a point. Past these limits one ε takes minutes
# and gigabytes (σ = 0.01 on the default plan: still running after 400 s at 15 GB), so
# `PldAccountant` refuses first, as `PrvAccountant` does.
MAX_PLD_STEP_POINTS = 1_000_000
MAX_PLD_GRID_POINTS = 20_000_000
# The tail mass below which dp-accounting truncates a composed distribution (its default).
_PLD_TAIL_MASS = 1e-15


class AccountingError(ValueError):
    """An accountant cannot compute ε for these events (a numerical limit, not a privacy fact)."""


class SupportsEvents(Protocol):
    """Anything with a name that says which privacy events it can account for."""

    name: str

    def supports(self, event: PrivacyEvent) -> bool:
        """True when this accountant can compute ε for histories containing `event`."""
        ...


@runtime_checkable
class Accountant(SupportsEvents, Protocol):
    """Anything with a name that says which events it supports and turns them into ε at δ."""

    def epsilon(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        """ε at `delta` of the composition of all `events` (AccountingError if unsupported)."""
        ...


AccountantFactoryT = TypeVar("AccountantFactoryT", bound=Callable[[], Accountant])

_ACCOUNTANT_FACTORIES: dict[str, Callable[[], Accountant]] = {}


def register_accountant(name: str) -> Callable[[AccountantFactoryT], AccountantFactoryT]:
    """Decorator: register an accountant class (or factory taking no arguments) under `name`.

    `get_accountant(name)`, `epsilon_for(..., name)` and ledgers' `epsilon(name)` then use it. A
    built-in name cannot be taken; registering the same name again replaces the factory.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"an accountant name is a non-empty string, got {name!r}")

    def decorator(factory: AccountantFactoryT) -> AccountantFactoryT:
        if not callable(factory):
            raise TypeError(
                f"register_accountant({name!r}) takes a class or factory, got {factory!r}"
            )
        if name in ACCOUNTANTS and name in _ACCOUNTANT_FACTORIES:
            raise ValueError(f"the built-in accountant name {name!r} cannot be replaced")
        _ACCOUNTANT_FACTORIES[name] = factory
        return factory

    return decorator


def unregister_accountant(name: str) -> None:
    """Remove a registered accountant (not a built-in one)."""
    if name in ACCOUNTANTS:
        raise ValueError(f"the built-in accountant {name!r} cannot be unregistered")
    if _ACCOUNTANT_FACTORIES.pop(name, None) is None:
        raise ValueError(f"accountant {name!r} is not registered")


def accountant_names() -> tuple[str, ...]:
    """Every registered accountant's name: the built-in `ACCOUNTANTS` first."""
    return tuple(_ACCOUNTANT_FACTORIES)


def accountants_supporting(event: PrivacyEvent) -> list[str]:
    """The names of the registered accountants that support `event`."""
    return [name for name, factory in _ACCOUNTANT_FACTORIES.items() if factory().supports(event)]


def unsupported_event_error(accountant: str, event: PrivacyEvent) -> AccountingError:
    """The one-line refusal of an accountant given an event it does not support."""
    others = accountants_supporting(event)
    remedy = (
        f"use an accountant that does: {', '.join(others)}"
        if others
        else "no registered accountant does (add one with privet.privacy.register_accountant)"
    )
    return AccountingError(
        f"the {accountant!r} accountant does not support privacy event {event_kind(event)!r}; "
        f"{remedy}"
    )


def check_supported(
    accountant: SupportsEvents, events: Iterable[PrivacyEvent]
) -> list[PrivacyEvent]:
    """The events as a list, if `accountant` supports every one; else `unsupported_event_error`."""
    history = list(events)
    for event in history:
        if isinstance(event, PrivacyEvent) and not accountant.supports(event):
            raise unsupported_event_error(accountant.name, event)
    return history


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, Real) or not 0 < delta < 1:
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


class GaussianAccountant:
    """The base of accountants that compose Poisson-subsampled Gaussian mechanisms.

    It supports every event that composes into `GaussianComposition`s only, and refuses any other
    before computing anything.
    """

    name: str = ""

    def supports(self, event: PrivacyEvent) -> bool:
        """True when everything `event` composes into is a `GaussianComposition`."""
        return isinstance(event, PrivacyEvent) and reduces_to_gaussians(event)

    def _history(
        self, events: Iterable[PrivacyEvent], delta: float
    ) -> tuple[list[GaussianComposition], float | None]:
        """The merged compositions, and ε when it is trivially 0 (nothing) or ∞ (no noise)."""
        _check_delta(delta)
        return _merged_history(check_supported(self, events))


def _merged_history(
    events: Iterable[PrivacyEvent],
) -> tuple[list[GaussianComposition], float | None]:
    """The merged compositions, and ε when it is trivially 0 (nothing) or ∞ (no noise)."""
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


def _read_only(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False  # cached and shared: nobody may change it in place
    return values


@functools.lru_cache(maxsize=1024)
def _opacus_rdp_per_step(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    """Opacus' RDP of one step, cached: a client recomputes ε for the same (σ, q) every round.

    Opacus' `compute_rdp(steps=n)` is this vector times n, so the product is bit-identical.
    """
    values = _opacus_rdp().compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders))
    return _read_only(np.asarray(values, dtype=np.float64))


@functools.lru_cache(maxsize=4)
def _log_factorials(size: int) -> np.ndarray:
    """The table of log k! for k = 0 … size − 1, shared by all orders below `size`."""
    from scipy import special  # imported on first use, like Opacus

    return _read_only(special.gammaln(np.arange(size, dtype=np.float64) + 1))


def _log_a_integer_order(q: float, sigma: float, order: int, log_factorial: np.ndarray) -> float:
    """The logarithm of A_α at an integer order α, 0 < q < 1: the exact finite sum, vectorized.

    A_α = Σ_{i=0..α} C(α, i) q^i (1 − q)^(α−i) exp((i² − i) / 2σ²) (Mironov, Talwar and Zhang
    2019, arXiv:1908.10530, Sec. 3.3), the sum Opacus and dp-accounting evaluate in a Python loop
    (Opacus' overflows, to NaN, above α ≈ 1030). Written as 1 + Σ pmf_i (exp(c_i) − 1), whose
    terms are all ≥ 0, it is summed in log space without the cancellation of a sum close to 1.
    """
    i = np.arange(order + 1, dtype=np.float64)
    log_pmf = (
        log_factorial[order]
        - log_factorial[: order + 1]
        - log_factorial[order::-1]
        + i * math.log(q)
        + (order - i) * math.log1p(-q)
    )
    exponent = i * (i - 1) / (2 * sigma**2)
    with np.errstate(divide="ignore"):  # i = 0, 1: exp(0) − 1 = 0, a term of log 0 = −∞
        log_terms = log_pmf + exponent + np.log(-np.expm1(-exponent))
    largest = float(np.max(log_terms))  # finite: the term i = α is, for α ≥ 2
    log_sum = largest + math.log(float(np.sum(np.exp(log_terms - largest))))
    return float(np.logaddexp(0.0, log_sum))


@functools.lru_cache(maxsize=1024)
def _large_order_rdp_per_step(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one step at integer orders above 63, where Opacus' loop is slow and then overflows.

    The cases before the sum are Opacus' (`_compute_rdp`): q = 0 is free, σ = 0 is no privacy,
    and without subsampling (q = 1) the Gaussian's RDP is α / 2σ².
    """
    values = np.empty(len(orders))
    log_factorial = _log_factorials(1 << int(max(orders)).bit_length())  # > every order
    for index, order in enumerate(orders):
        if q == 0:
            values[index] = 0.0
        elif sigma == 0:
            values[index] = math.inf
        elif q == 1:
            values[index] = order / (2 * sigma**2)
        else:
            values[index] = _log_a_integer_order(q, sigma, int(order), log_factorial) / (order - 1)
    return _read_only(values)


@functools.lru_cache(maxsize=64)
def _split_orders(
    orders: tuple[float, ...],
) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Which orders Privet's finite sum takes (integers above 63), and the two groups in order."""
    large = np.array(
        [order > OPACUS_MAX_RDP_ORDER and float(order).is_integer() for order in orders], dtype=bool
    )
    opacus = tuple(order for order, big in zip(orders, large, strict=True) if not big)
    privet = tuple(order for order, big in zip(orders, large, strict=True) if big)
    return _read_only(large), opacus, privet


def _rdp_per_step(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one step at each order: Opacus' analysis up to 63, Privet's finite sum above it."""
    large, opacus, privet = _split_orders(orders)
    if not privet:
        return _opacus_rdp_per_step(q, sigma, opacus)
    if not opacus:
        return _large_order_rdp_per_step(q, sigma, privet)
    values = np.empty(len(orders))
    values[~large] = _opacus_rdp_per_step(q, sigma, opacus)
    values[large] = _large_order_rdp_per_step(q, sigma, privet)
    return values


def _composed_rdp(history: Sequence[GaussianComposition], orders: tuple[float, ...]) -> np.ndarray:
    """RDP of the whole history at each order (RDP adds up under composition)."""
    total = np.zeros(len(orders))
    for sigma, q, count in history:
        total = total + _rdp_per_step(q, sigma, orders) * count
    return total


def _rdp_to_epsilon(orders: Sequence[float], rdp: np.ndarray, delta: float) -> float:
    """Opacus' `get_privacy_spent`: Balle et al. 2020's conversion, minimized over the orders."""
    with warnings.catch_warnings():
        # Opacus warns when the best order is at the edge of the range; the bound stays valid.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = _opacus_rdp().get_privacy_spent(orders=np.asarray(orders), rdp=rdp, delta=delta)
    return float(eps)


@dataclass(frozen=True)
class _OrderLayout:
    """An order set split at 63, with what `RdpAccountant` needs to skip the larger orders."""

    orders: tuple[float, ...]
    low: tuple[float, ...]  # orders ≤ 63, in the given order
    high: np.ndarray  # orders above 63
    high_inverse: np.ndarray  # 1 / (α − 1) at those
    high_constant: np.ndarray  # Balle et al.'s conversion there, less RDP and −log δ / (α − 1)
    top_index: int  # the largest order ≤ 63: its index in `low`, and its value
    top: float
    below_index: int | None  # the next smaller one (None: 1, where (α − 1)·RDP is 0)
    below: float


@functools.lru_cache(maxsize=64)
def _order_layout(orders: tuple[float, ...]) -> _OrderLayout:
    if not orders or any(not (order > 1 and math.isfinite(order)) for order in orders):
        raise ValueError(f"RDP orders must be finite numbers above 1, got {list(orders)!r}")
    clean = tuple(float(order) for order in orders)
    low = tuple(order for order in clean if order <= OPACUS_MAX_RDP_ORDER)
    high = _read_only(np.asarray([order for order in clean if order > OPACUS_MAX_RDP_ORDER]))
    inverse = _read_only(1 / (high - 1))
    constant = _read_only(np.log(1 - 1 / high) - np.log(high) * inverse)
    top = max(low, default=math.nan)
    smaller = [order for order in low if order < top]
    below = max(smaller, default=1.0)
    return _OrderLayout(
        orders=clean,
        low=low,
        high=high,
        high_inverse=inverse,
        high_constant=constant,
        top_index=low.index(top) if low else -1,
        top=top,
        below_index=low.index(below) if smaller else None,
        below=below,
    )


class RdpAccountant(GaussianAccountant):
    """Rényi-DP accountant on `DEFAULT_RDP_ORDERS` (Opacus' orders, then larger integer orders).

    Orders up to 63 go through Opacus' analysis functions (`opacus.accountants.analysis.rdp`),
    larger integer orders through `_log_a_integer_order`, and the conversion to (ε, δ) is always
    Opacus' `get_privacy_spent`. Pass `OPACUS_RDP_ORDERS` to get exactly Opacus' `RDPAccountant`.

    The larger orders are evaluated only when they could lower ε: `_high_orders_lower_bound`
    bounds their ε from below using the orders ≤ 63 alone, and when that bound is not below the
    ε of the orders ≤ 63, that ε is the ε of all orders (the same number, without the cost).
    """

    name = "rdp"

    def __init__(self, orders: Sequence[float] = DEFAULT_RDP_ORDERS) -> None:
        layout = _order_layout(tuple(orders))
        self.orders: tuple[float, ...] = layout.orders
        self._layout = layout

    def rdp(self, history: Sequence[GaussianComposition]) -> np.ndarray:
        """Rényi divergence at each order of the composition (RDP adds up under composition)."""
        return _composed_rdp(history, self.orders)

    def _high_orders_lower_bound(self, low_rdp: np.ndarray, delta: float) -> float:
        """A lower bound on the ε of every order above 63, from the RDP at the two largest below.

        (α − 1)·RDP(α) is the logarithm of ∫ p^α q^(1−α), a convex function of α (Hölder's
        inequality; van Erven and Harremoës 2014), and sums of convex functions stay convex under
        composition. So past the largest order b ≤ 63 it lies above the chord through the next
        order a < b and b, which bounds RDP at every larger order; adding Balle et al.'s
        conversion term bounds ε there.
        """
        layout = self._layout
        k_top = (layout.top - 1) * low_rdp[layout.top_index]
        k_below = (
            0.0 if layout.below_index is None else (layout.below - 1) * low_rdp[layout.below_index]
        )
        slope = (k_top - k_below) / (layout.top - layout.below)
        bound = (k_top + (layout.high - layout.top) * slope - math.log(delta)) * layout.high_inverse
        return float(np.min(bound + layout.high_constant))

    def _epsilon(self, history: Sequence[GaussianComposition], delta: float) -> float:
        low = self._layout.low
        if low and len(self._layout.high):
            low_rdp = _composed_rdp(history, low)
            eps = _rdp_to_epsilon(low, low_rdp, delta)
            if self._high_orders_lower_bound(low_rdp, delta) >= eps:
                return eps  # no order above 63 can do better: skip computing them
        return _rdp_to_epsilon(self.orders, self.rdp(history), delta)

    def supports(self, event: PrivacyEvent) -> bool:
        """Poisson-subsampled Gaussians, and the distributed discrete Gaussian (its RDP adds up)."""
        return isinstance(event, PrivacyEvent) and all(
            isinstance(item, (GaussianComposition, DiscreteGaussianSumComposition))
            for item in event.compositions()
        )

    def epsilon(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        """ε by Opacus' `get_privacy_spent` (Balle et al. 2020's conversion) on these orders.

        A history with distributed discrete Gaussian rounds is accounted at the integer orders of
        `privacy.distributed_rdp.ORDERS`, where that mechanism's bound holds; RDP adds up across
        mechanisms, so Gaussian events in the same history join it there.
        """
        history_events = check_supported(self, events)
        _check_delta(delta)
        discrete = [
            item
            for event in history_events
            for item in event.compositions()
            if isinstance(item, DiscreteGaussianSumComposition)
        ]
        if discrete:
            return _epsilon_with_discrete(history_events, discrete, delta)
        history, trivial = _merged_history(history_events)
        if trivial is not None:
            return trivial
        return self._epsilon(history, delta)

    def epsilon_classic(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        """ε = min_α rdp(α) − log δ / (α − 1) (Mironov 2017, arXiv:1702.07476, Prop. 3).

        Looser than `epsilon`; it is the conversion behind older published figures (TF Privacy's
        MNIST tutorial: ε = 3.01), offered so those can be reproduced and compared.
        """
        history, trivial = self._history(events, delta)
        if trivial is not None:
            return trivial
        orders = np.asarray(self.orders)
        eps = self.rdp(history) - math.log(delta) / (orders - 1)
        return float(np.nanmin(eps))


def _epsilon_with_discrete(
    events: Sequence[PrivacyEvent],
    discrete: Sequence[DiscreteGaussianSumComposition],
    delta: float,
) -> float:
    """ε of a history holding distributed discrete Gaussian rounds, at their integer orders."""
    if len({event_level(event) for event in events}) > 1:
        raise ValueError(
            "the events mix example-level and client-level releases, whose ε protect different "
            "units; account them in separate ledgers"
        )
    orders = tuple(float(order) for order in DDG_ORDERS)
    history, trivial = _merged_history([e for e in events if reduces_to_gaussians(e)])
    if trivial == math.inf:
        return math.inf
    rdp = _composed_rdp(history, orders) if history else np.zeros(len(orders))
    for item in discrete:
        if item.count:
            rdp = rdp + item.count * _discrete_round_rdp(item)
    return _rdp_to_epsilon(orders, rdp, delta)


def _discrete_round_rdp(item: DiscreteGaussianSumComposition) -> np.ndarray:
    """One round's ε(α) at `DDG_ORDERS`: amplified by sampling when nobody dropped, else weakly."""
    if item.amplified:
        total = item.summands * item.local_variance
        return poisson_ddg_rdp(
            item.l2_sensitivity, total, item.summands, item.dimension, item.sample_rate
        )
    cohort = max(item.cohort, item.summands)
    return weak_ddg_rdp(*item[:5], cohort)


# Integer orders only (fractional orders need Opacus' slow series): 2 … 63, then 2^(k/4)·64 up to
# 2^14, so that small ε are not overstated. The ε is within a few percent of the full order set,
# which is all the grid sizing needs.
_ESTIMATE_ORDERS: tuple[float, ...] = tuple(float(order) for order in range(2, 64)) + tuple(
    float(round(64 * 2 ** (k / 4))) for k in range(0, 33)
)
_ESTIMATOR = RdpAccountant(_ESTIMATE_ORDERS)


def _rdp_estimate(history: Sequence[GaussianComposition], delta: float) -> float:
    """A cheap estimate of ε_RDP (integer orders only), to size the PLD and PRV grids."""
    return _ESTIMATOR._epsilon(history, delta)


@functools.lru_cache(maxsize=1024)
def _pld_step_width(sigma: float, q: float) -> float:
    """The privacy-loss range dp-accounting discretizes for one step, both adjacencies summed.

    dp-accounting truncates the Gaussian's tails (mass 1e-50 by default) and discretizes the
    privacy loss between the two truncation points; this is that range, computed without
    building the distribution.
    """
    from dp_accounting.pld import privacy_loss_mechanism as mechanism

    width = 0.0
    for adjacency in (mechanism.AdjacencyType.REMOVE, mechanism.AdjacencyType.ADD):
        loss = mechanism.GaussianPrivacyLoss(
            sigma, sensitivity=1.0, sampling_prob=q, adjacency_type=adjacency
        )
        tail = loss.privacy_loss_tail()
        upper = loss.privacy_loss(tail.lower_x_truncation)
        lower = loss.privacy_loss(tail.upper_x_truncation)
        width += abs(upper - lower)
    return width


class PldAccountant(GaussianAccountant):
    """Google dp-accounting's PLD accountant (`dp_accounting.pld.PLDAccountant`), pessimistic.

    `value_discretization_interval` sets the grid of privacy-loss values. Pessimistic rounding makes
    the result an upper bound whose excess grows with the interval; an interval of 1e-3 is accurate
    to < 0.1 % for ε of a few units but overestimates small ε (≈ 0.1) by tens of percent, so by
    default it is chosen per history as 2e-4 · ε_RDP, clipped to [1e-6, 1e-3]: within 0.2 % of
    dp-accounting at a 2× finer interval over the grid in tests/privacy/test_accountant_grid.py.
    ε_RDP here is an integer-order estimate that includes orders up to 2^14, so a small ε is not
    overstated and its interval shrinks with it (to the 1e-6 floor at ε ≈ 0.005).
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

    def grid_points(
        self, history: Sequence[GaussianComposition], delta: float
    ) -> tuple[float, float]:
        """Estimated grid sizes: all steps' distributions built, and the composed distribution.

        The first is exact (the loss range dp-accounting truncates each step's distribution to,
        over the interval, for both adjacencies); the second is the RDP estimate of the
        composed privacy loss at the truncated tail mass, over the interval (within a few times
        of dp-accounting's own size on the test grid, above it for the large ε that matter).
        """
        interval = self.interval_for(history, delta)
        step = sum(_pld_step_width(sigma, q) for sigma, q, _ in history) / interval
        composed = _rdp_estimate(history, _PLD_TAIL_MASS) / interval
        return step, max(step, composed)

    def epsilon(self, events: Iterable[PrivacyEvent], delta: float) -> float:
        """ε from the composed privacy loss distribution (dp-accounting, pessimistic estimate).

        A history whose grids would exceed `MAX_PLD_STEP_POINTS` or `MAX_PLD_GRID_POINTS` (a
        noise multiplier of a few hundredths, or ε in the thousands) raises AccountingError.
        """
        history, trivial = self._history(events, delta)
        if trivial is not None:
            return trivial
        step, composed = self.grid_points(history, delta)
        if step > MAX_PLD_STEP_POINTS or composed > MAX_PLD_GRID_POINTS:
            sigmas = ", ".join(sorted({f"{sigma:g}" for sigma, _, _ in history}))
            raise AccountingError(
                f"the PLD accountant would need {max(step, composed):.3g} grid points for this "
                f"history (noise multiplier {sigmas}; at most {MAX_PLD_STEP_POINTS:.0e} per step "
                f"and {MAX_PLD_GRID_POINTS:.0e} composed): its noise is too small or its ε far "
                "too large for it; use the rdp accountant"
            )
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


class PrvAccountant(GaussianAccountant):
    """Opacus' PRV accountant (`opacus.accountants.PRVAccountant`), its upper bound on ε.

    Opacus returns its estimate plus `eps_error`, an absolute error. By default `eps_error` is
    1 % of ε_RDP, clipped to [1e-3, 0.05], so the result is within ≈ 1–2 % above the PLD value
    for ε ≳ 0.1 (measured in tests/privacy/test_accountant_grid.py) at a fraction of a second
    for typical plans (Opacus' own default is 0.01 absolute, i.e. 10 % of an ε of 0.1). Below
    ε ≈ 0.1 the 1e-3 floor dominates (≈ +2 % above PLD at ε = 0.05, +12 % at ε = 0.009): still
    an upper bound, but the PLD accountant is the tight choice for small targets. Plans so
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
        history, trivial = self._history(events, delta)
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


register_accountant("rdp")(RdpAccountant)
register_accountant("prv")(PrvAccountant)
register_accountant("pld")(PldAccountant)


def get_accountant(name: str) -> Accountant:
    """A fresh accountant by name: one of `accountant_names()` (built-in `ACCOUNTANTS` first)."""
    factory = _ACCOUNTANT_FACTORIES.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(
            f"unknown accountant {name!r}; choose one of {', '.join(_ACCOUNTANT_FACTORIES)}"
        )
    return factory()


def epsilon_for(
    events: Iterable[PrivacyEvent],
    delta: float,
    accountant: str | Accountant = DEFAULT_ACCOUNTANT,
) -> float:
    """ε at `delta` of the composition of all `events`, by the named accountant (default RDP).

    An accountant that does not support one of the events refuses it (`AccountingError`).
    """
    chosen = get_accountant(accountant) if isinstance(accountant, str) else accountant
    if not isinstance(chosen, GaussianAccountant):  # those check for themselves
        events = check_supported(chosen, events)
    return chosen.epsilon(events, delta)


def rdp_epsilon_classic(
    events: Iterable[PrivacyEvent],
    delta: float,
    orders: Sequence[float] = DEFAULT_RDP_ORDERS,
) -> float:
    """RDP ε with the classic conversion (Mironov 2017, Prop. 3), for published comparisons."""
    return RdpAccountant(orders).epsilon_classic(events, delta)
