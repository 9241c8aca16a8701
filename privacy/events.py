"""Privacy events: immutable records of what a mechanism released, separate from how ε is computed.

In the style of Google's `dp-accounting` (`dp_accounting.dp_event`), an event only *describes* a
release; the accountants in `privacy.accountants` compose events into ε. Every event is a
`PrivacyEvent`: it names its level (which unit it protects: one example or one client), says what
it composes into for the accountants (`compositions`), and writes itself to and reads itself from
JSON (`to_dict` / `from_dict`). Event types are open: `register_event(kind)` adds one under the
`kind` that ledger files name it by, and `event_from_dict` reads any registered kind back.

Two kinds are built in:

- `PoissonGaussianSteps` (``"poisson_gaussian_steps"``): example-level DP-SGD on one client
  (Opacus): `steps` steps, each Poisson-sampling examples at rate q and adding Gaussian noise σ·C
  to the sum of clipped per-example gradients.
- `ClientLevelRound` (``"client_level_round"``): client-level DP-FedAvg on the server (McMahan et
  al., ICLR 2018, "Learning Differentially Private Recurrent Language Models"): clients
  Poisson-sampled at rate q, each update clipped to S, Gaussian noise z·S on the sum; optionally
  with adaptive clipping (Andrew et al., NeurIPS 2021, "Differentially Private Learning with
  Adaptive Clipping"), which also releases a noised count of the clients whose update norm was
  within S.

Both reduce to compositions of the Poisson-subsampled Gaussian mechanism, `GaussianComposition`
(σ, q, count), which is what Privet's built-in accountants consume. A new mechanism either reduces
to those too, or to a composition type of its own that an accountant it registers supports.
Events of the two levels protect different units (one example vs one client) and must never be
composed together.

Adding an event (no edit to Privet)::

    @register_event("gaussian_release")
    @dataclass(frozen=True)
    class GaussianRelease(PrivacyEvent):
        sensitivity: float
        noise_std: float
        releases: int = 1
        level: ClassVar[Level] = "example"

        @property
        def count(self) -> int:
            return self.releases

        def with_count(self, count: int) -> GaussianRelease:
            return GaussianRelease(self.sensitivity, self.noise_std, count)

        def compositions(self) -> tuple[GaussianComposition, ...]:
            return (GaussianComposition(self.noise_std / self.sensitivity, 1.0, self.releases),)

A frozen dataclass gets `to_dict` / `from_dict` from its fields; other classes override both.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from types import MappingProxyType
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, Self, TypeVar

Level = Literal["example", "client"]
LEVELS: tuple[Level, ...] = ("example", "client")


class GaussianComposition(NamedTuple):
    """`count` self-compositions of the Poisson-subsampled Gaussian mechanism (σ, q)."""

    noise_multiplier: float
    sample_rate: float
    count: int  # type: ignore[assignment]  # the field hides tuple.count, which nothing calls


class Composition(Protocol):
    """One mechanism self-composed `count` times: what events reduce to for the accountants.

    `GaussianComposition` is the one Privet's accountants consume; an accountant that supports
    another mechanism (discrete Gaussian, Skellam, Laplace) defines its own composition type.
    """

    @property
    def count(self) -> int:
        """How many times the mechanism ran."""
        ...


def _check_noise(name: str, value: object) -> float:
    """A noise multiplier: a finite real number ≥ 0 (0 means no noise: ε = ∞)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return number


def _check_sensitivity(name: str, value: object) -> float:
    """A query's L2 sensitivity: a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return number


def _check_rate(name: str, value: object) -> float:
    """A Poisson sampling rate in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return number


def _check_count(name: str, value: object) -> int:
    """A repetition count: a non-negative integer (numpy integers accepted, floats are not)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


# -- the base type and its registry ---------------------------------------------------------------


class PrivacyEvent(abc.ABC):
    """What one mechanism released, described fully enough to account for it (never how).

    A subclass sets `level` ("example" or "client": the unit its ε protects), implements `count`,
    `with_count` and `compositions`, and is registered with `register_event(kind)`, which sets
    `kind`, the name its ledger entries carry. Events are immutable and compare by value, so
    that `compose` can merge repeats.
    """

    kind: ClassVar[str] = ""
    """The registered name of this event type ("type" in its JSON); set by `register_event`."""
    level: ClassVar[Level]

    @property
    @abc.abstractmethod
    def count(self) -> int:
        """How many times the mechanism ran (steps, rounds, releases)."""

    @abc.abstractmethod
    def with_count(self, count: int) -> Self:
        """The same mechanism repeated `count` times."""

    @abc.abstractmethod
    def compositions(self) -> tuple[Composition, ...]:
        """What the event composes into for the accountants (e.g. `GaussianComposition`s)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping with a "type" tag, the registered kind (inverse: `from_dict`).

        The default writes a dataclass event's fields in declaration order; other events override.
        """
        kind = registered_kind(self)
        if not dataclasses.is_dataclass(self):
            raise NotImplementedError(f"{type(self).__name__} must implement to_dict()")
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        return {"type": kind, **values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The event `to_dict` wrote; one-line ValueError naming a missing or unexpected field.

        The default reads a dataclass event's init fields by keyword; other events override.
        """
        if not dataclasses.is_dataclass(cls):
            raise NotImplementedError(f"{cls.__name__} must implement from_dict()")
        if data.get("type") != cls.kind:
            raise ValueError(f"expected a {cls.kind!r} event, got type {data.get('type')!r}")
        names = [item.name for item in dataclasses.fields(cls) if item.init]
        check_event_fields(data, names)
        return cls(**{name: data[name] for name in names})


EventT = TypeVar("EventT", bound=PrivacyEvent)
EventClassT = TypeVar("EventClassT", bound=type[PrivacyEvent])

_EVENT_TYPES: dict[str, type[PrivacyEvent]] = {}
_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]*\Z")


def check_event_fields(data: Mapping[str, Any], names: Iterable[str]) -> None:
    """Refuse a serialised event whose fields (besides "type") are not exactly `names`."""
    expected = set(names) | {"type"}
    missing = sorted(expected - set(data))
    if missing:
        raise ValueError(f"lacks field(s) {', '.join(missing)}")
    extra = sorted(str(key) for key in set(data) - expected)
    if extra:
        raise ValueError(f"has unexpected field(s) {', '.join(extra)}")


def register_event(kind: str) -> Callable[[EventClassT], EventClassT]:
    """Class decorator: register a `PrivacyEvent` subclass under `kind`, its name in ledger JSON.

    `kind` is lower-case letters, digits and underscores. A kind already taken by another class is
    refused (a ledger entry must mean one thing); registering the same class again (a reloaded
    module) replaces it.
    """
    if not isinstance(kind, str) or not _KIND_PATTERN.match(kind):
        raise ValueError(
            "a privacy event kind is lower-case letters, digits and underscores starting with a "
            f"letter, got {kind!r}"
        )

    def decorator(cls: EventClassT) -> EventClassT:
        if not (isinstance(cls, type) and issubclass(cls, PrivacyEvent)):
            raise TypeError(f"register_event({kind!r}) takes a PrivacyEvent subclass, got {cls!r}")
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
            raise TypeError(f"privacy event {cls.__name__} does not implement {missing}")
        level = getattr(cls, "level", None)
        if level not in LEVELS:
            raise ValueError(
                f"privacy event {cls.__name__} must set level to 'example' or 'client', "
                f"got {level!r}"
            )
        existing = _EVENT_TYPES.get(kind)
        if existing is not None and _qualified_name(existing) != _qualified_name(cls):
            raise ValueError(
                f"privacy event kind {kind!r} is already registered to "
                f"{_qualified_name(existing)}; choose another kind"
            )
        if cls.__dict__.get("kind") not in ("", None, kind) and cls.kind in _EVENT_TYPES:
            raise ValueError(
                f"privacy event {cls.__name__} is already registered as {cls.kind!r}; one class "
                "has one kind"
            )
        cls.kind = kind
        _EVENT_TYPES[kind] = cls
        return cls

    return decorator


def unregister_event(kind: str) -> None:
    """Remove a registered event kind (not a built-in one); ledgers naming it can't be read."""
    if kind in _BUILT_IN_KINDS:
        raise ValueError(f"the built-in privacy event kind {kind!r} cannot be unregistered")
    if _EVENT_TYPES.pop(kind, None) is None:
        raise ValueError(f"privacy event kind {kind!r} is not registered")


def registered_events() -> Mapping[str, type[PrivacyEvent]]:
    """Every registered event type by kind (a read-only snapshot), built-in kinds first."""
    return MappingProxyType(dict(_EVENT_TYPES))


def event_type(kind: object) -> type[PrivacyEvent]:
    """The event class registered as `kind`; a one-line ValueError naming an unknown kind."""
    cls = _EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(
            f"unknown privacy event type {kind!r}; registered types are "
            f"{', '.join(_EVENT_TYPES)} (import the module that registers it with "
            "privet.privacy.register_event, or use the Privet version that wrote it)"
        )
    return cls


def registered_kind(event: object) -> str:
    """The kind `event` is registered under; a one-line TypeError if its type is not registered.

    A subclass of a registered event is not registered itself: written under its parent's kind,
    it would be read back as the parent.
    """
    if not isinstance(event, PrivacyEvent):
        raise TypeError(f"expected a privacy event (a PrivacyEvent), got {event!r}")
    cls = type(event)
    if not cls.kind or _EVENT_TYPES.get(cls.kind) is not cls:
        raise TypeError(
            f"privacy event type {cls.__name__} is not registered; decorate it with "
            "privet.privacy.register_event(kind) so that ledgers can store and read it"
        )
    return cls.kind


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def event_kind(event: PrivacyEvent) -> str:
    """The event's kind for messages: its registered kind, else its class name."""
    return type(event).kind or type(event).__name__


# -- the built-in events --------------------------------------------------------------------------

POISSON_GAUSSIAN_STEPS = "poisson_gaussian_steps"
CLIENT_LEVEL_ROUND = "client_level_round"
_BUILT_IN_KINDS = (POISSON_GAUSSIAN_STEPS, CLIENT_LEVEL_ROUND)


@register_event(POISSON_GAUSSIAN_STEPS)
@dataclass(frozen=True)
class PoissonGaussianSteps(PrivacyEvent):
    """`steps` DP-SGD steps, each sampling at rate `sample_rate` and adding N(0, (σ·C)²) noise.

    Example level: neighbouring data sets differ by adding or removing one example.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    level: ClassVar[Level] = "example"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", _check_noise("noise multiplier", self.noise_multiplier)
        )
        object.__setattr__(self, "sample_rate", _check_rate("sample rate", self.sample_rate))
        object.__setattr__(self, "steps", _check_count("step count", self.steps))

    @property
    def count(self) -> int:
        """How many times the mechanism ran (the step count)."""
        return self.steps

    def with_count(self, count: int) -> PoissonGaussianSteps:
        """The same mechanism repeated `count` times."""
        return PoissonGaussianSteps(self.noise_multiplier, self.sample_rate, count)

    def gaussian_compositions(self) -> tuple[GaussianComposition, ...]:
        """The event as Poisson-subsampled Gaussian compositions: here exactly one."""
        return (GaussianComposition(self.noise_multiplier, self.sample_rate, self.steps),)

    def compositions(self) -> tuple[GaussianComposition, ...]:
        """What the accountants compose: `gaussian_compositions`."""
        return self.gaussian_compositions()

    def to_list(self) -> list[float]:
        """Plain numbers for Flower records: [σ, q, steps]."""
        return [float(self.noise_multiplier), float(self.sample_rate), float(self.steps)]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> PoissonGaussianSteps:
        """Inverse of `to_list`; rejects anything that is not exactly three numbers."""
        if len(values) != 3:
            raise ValueError(f"an event is [sigma, q, steps], got {list(values)!r}")
        sigma, q, steps = values
        if isinstance(steps, bool) or not isinstance(steps, Real) or float(steps) != int(steps):
            raise ValueError(f"step count must be an integer, got {steps!r}")
        return cls(float(sigma), float(q), int(steps))


@register_event(CLIENT_LEVEL_ROUND)
@dataclass(frozen=True)
class ClientLevelRound(PrivacyEvent):
    """`rounds` rounds of DP-FedAvg at the client level (McMahan et al., ICLR 2018).

    Each round, clients are Poisson-sampled at rate `sample_rate`, every sampled client's update is
    clipped to L2 norm S and Gaussian noise of std `noise_multiplier`·S is added to the sum.

    With adaptive clipping (Andrew et al., NeurIPS 2021), each round also releases a noised count
    of the sampled clients whose update norm was ≤ S. The event records that query as the
    mechanism ran it: `count_noise_std` (σ_b, in counts) and `count_sensitivity` (the most one
    client's presence can move the released count). Privet releases the centred count Σ(b_i − ½)
    plus half the *expected* count, whose sensitivity is ½ (`CENTRED_COUNT_SENSITIVITY`); ledgers
    written before that fix released the raw count Σ b_i (sensitivity 1) and are re-charged as
    such when read (`privacy.ledger`). The count's noise multiplier is their ratio. Both are None
    when no count is released.

    Client level: neighbouring data sets differ by adding or removing one whole client.
    """

    noise_multiplier: float
    sample_rate: float
    rounds: int = 1
    count_noise_std: float | None = field(default=None, kw_only=True)
    count_sensitivity: float | None = field(default=None, kw_only=True)

    level: ClassVar[Level] = "client"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", _check_noise("noise multiplier", self.noise_multiplier)
        )
        object.__setattr__(self, "sample_rate", _check_rate("sample rate", self.sample_rate))
        object.__setattr__(self, "rounds", _check_count("round count", self.rounds))
        if (self.count_noise_std is None) != (self.count_sensitivity is None):
            raise ValueError(
                "a released count needs both its noise std and its sensitivity, got "
                f"count_noise_std={self.count_noise_std!r}, "
                f"count_sensitivity={self.count_sensitivity!r}"
            )
        if self.count_noise_std is not None:
            object.__setattr__(
                self, "count_noise_std", _check_noise("count noise std", self.count_noise_std)
            )
            object.__setattr__(
                self,
                "count_sensitivity",
                _check_sensitivity("count sensitivity", self.count_sensitivity),
            )

    @property
    def count(self) -> int:
        """How many times the mechanism ran (the round count)."""
        return self.rounds

    @property
    def count_noise_multiplier(self) -> float | None:
        """The count query's noise-to-sensitivity ratio σ_b / Δ_b (None: no count released)."""
        if self.count_noise_std is None or self.count_sensitivity is None:
            return None
        return self.count_noise_std / self.count_sensitivity

    def with_count(self, count: int) -> ClientLevelRound:
        """The same round repeated `count` times."""
        return ClientLevelRound(
            self.noise_multiplier,
            self.sample_rate,
            count,
            count_noise_std=self.count_noise_std,
            count_sensitivity=self.count_sensitivity,
        )

    def effective_noise_multiplier(self) -> float:
        """The single Gaussian the round is equivalent to: z_eff = (z⁻² + (σ_b/Δ_b)⁻²)^(−1/2).

        Two Gaussian queries on the same sampled clients, with L2 sensitivities 1 (update sum,
        in units of S) and Δ_b (count), are one query of a vector whose noise is scaled per
        coordinate; rescaling each coordinate by its noise gives one Gaussian mechanism whose
        squared sensitivity is the sum of the squared per-query ratios (Andrew et al. 2021, Sec. 3;
        also Mironov et al. 2019, arXiv:1812.06210, Sec. 3, as used by dp-accounting).
        """
        count_multiplier = self.count_noise_multiplier
        if count_multiplier is None:
            return self.noise_multiplier
        if self.noise_multiplier == 0 or count_multiplier == 0:
            return 0.0
        return float((self.noise_multiplier ** (-2) + count_multiplier ** (-2)) ** (-0.5))

    def gaussian_compositions(self) -> tuple[GaussianComposition, ...]:
        """The event as Poisson-subsampled Gaussian compositions: one, at z_eff."""
        sigma = self.effective_noise_multiplier()
        return (GaussianComposition(sigma, self.sample_rate, self.rounds),)

    def compositions(self) -> tuple[GaussianComposition, ...]:
        """What the accountants compose: `gaussian_compositions`."""
        return self.gaussian_compositions()


PLANNING_VARIANCE = 1e6
"""The summed noise variance (grid units²) of the rounds `at_noise_multiplier` describes."""
PLANNING_COHORT = 100
"""The cohort of those rounds (all survive); its shares are 10⁴ units², so τ is negligible."""


class DiscreteGaussianSumComposition(NamedTuple):
    """`count` rounds of the Poisson-sampled distributed discrete Gaussian (`distributed_rdp`).

    Fields as in `DistributedDiscreteGaussianRound`, plus `amplified`: whether the round's
    noise was the same whoever was sampled (nobody dropped), so that the sampling amplifies
    (`distributed_rdp.poisson_ddg_rdp`); else only joint convexity holds (`weak_ddg_rdp`). The RDP
    accountant supports it.
    """

    l2_sensitivity: float
    local_variance: float
    summands: int
    dimension: int
    sample_rate: float
    count: int  # type: ignore[assignment]  # the field hides tuple.count, which nothing calls
    amplified: bool
    cohort: int


MIN_AMPLIFIED_COHORT = 3
"""The smallest cohort whose round is amplified by sampling: without one of its clients a cohort
of 2 would be a single client, which secure aggregation refuses, so whether the round ran at
all would depend on who was sampled."""
MIN_SHARE_VARIANCE = 4
"""The smallest noise share (grid units²) a distributed-DP round takes
(`privacy.distributed_dp` refuses smaller ones). A round is amplified only if a cohort one
larger would still have had shares this large: else it would not have run."""


@register_event("distributed_discrete_gaussian_round")
@dataclass(frozen=True)
class DistributedDiscreteGaussianRound(PrivacyEvent):
    """`rounds` rounds of distributed DP: clients noise their own integer updates (issue 16).

    Clients are Poisson-sampled at `sample_rate`; the `cohort` sampled clients were each asked
    for a discrete Gaussian share of variance `local_variance` (the run's total W over the
    cohort, so that the cohort's shares sum to W whatever its size); each of the `summands`
    survivors whose vectors were summed rounded its update to an integer vector of L2 norm ≤
    `l2_sensitivity` (grid units, a bound checked on the values) and added `dimension` shares
    before masking (Kairouz, Liu, Steinke, ICML 2021). Only the sum was unmasked. The event
    records the survivors the sum really had, so the charge is for the noise it carried.

    When every one of at least `MIN_AMPLIFIED_COHORT` sampled clients survived, the round's noise
    did not depend on who was sampled and the sampling amplifies as the Gaussian's does
    (`distributed_rdp.poisson_ddg_rdp`). A round with dropouts, or one that was not released
    (`not_released`), is charged by joint convexity only (`weak_ddg_rdp`).

    Client level: neighbouring data sets differ in one client's update (it is replaced by zeros);
    the amplification holds for whoever does not know who took part (`server.distributed_release`
    gives the server's own ε).
    """

    l2_sensitivity: float
    local_variance: float
    summands: int
    dimension: int
    sample_rate: float
    rounds: int = 1
    cohort: int = 0
    """The clients sampled, whose shares were sized together; 0 means "as many as summands"."""

    level: ClassVar[Level] = "client"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "l2_sensitivity", _check_sensitivity("L2 sensitivity", self.l2_sensitivity)
        )
        object.__setattr__(
            self, "local_variance", _check_sensitivity("local variance", self.local_variance)
        )
        for name in ("summands", "dimension"):
            value = _check_count(name, getattr(self, name))
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "sample_rate", _check_rate("sample rate", self.sample_rate))
        object.__setattr__(self, "rounds", _check_count("round count", self.rounds))
        cohort = _check_count("cohort", self.cohort) or self.summands
        if cohort < self.summands:
            raise ValueError(
                f"a round cannot sum {self.summands} clients' shares out of a cohort of {cohort}"
            )
        object.__setattr__(self, "cohort", cohort)

    @property
    def count(self) -> int:
        """How many times the mechanism ran (the round count)."""
        return self.rounds

    @property
    def amplified(self) -> bool:
        """Whether sampling amplifies this round (nobody dropped, and it would have run anyway).

        Every one of at least `MIN_AMPLIFIED_COHORT` sampled clients survived, and a cohort one
        larger would have run too: its shares, W/(n+1), still at least `MIN_SHARE_VARIANCE`.
        """
        larger_share = self.local_variance * self.cohort / (self.cohort + 1)
        return (
            self.summands == self.cohort >= MIN_AMPLIFIED_COHORT
            and larger_share >= MIN_SHARE_VARIANCE
        )

    @classmethod
    def not_released(
        cls, noise_multiplier: float, sample_rate: float, rounds: int = 1
    ) -> DistributedDiscreteGaussianRound:
        """A round that was sampled but not unmasked (too few clients, too few survivors).

        Had the client been sampled, the round might have been released with at least the planned
        noise z, and whether it was depends on who was sampled: charged by joint convexity at z.
        """
        z = _check_sensitivity("noise multiplier", noise_multiplier)
        sensitivity = math.sqrt(PLANNING_VARIANCE) / z
        return cls(sensitivity, PLANNING_VARIANCE, 1, 1, sample_rate, rounds, cohort=2)

    @property
    def noise_multiplier(self) -> float:
        """√(nσ²)/Δ: the summed noise over the sensitivity."""
        return math.sqrt(self.summands * self.local_variance) / self.l2_sensitivity

    def with_count(self, count: int) -> DistributedDiscreteGaussianRound:
        """The same round repeated `count` times."""
        return dataclasses.replace(self, rounds=count)

    @classmethod
    def at_noise_multiplier(
        cls, noise_multiplier: float, sample_rate: float, rounds: int = 1
    ) -> DistributedDiscreteGaussianRound:
        """Rounds whose shares sum to exactly z times the sensitivity: what plans account.

        The summed variance is `PLANNING_VARIANCE` grid units² over `PLANNING_COHORT` clients who
        all survive, so large that Kairouz et al.'s discrete correction τ vanishes, as it does in
        real rounds (whose shares have a variance of at least a few units;
        `privacy.distributed_dp.plan_spec`).
        """
        z = _check_sensitivity("noise multiplier", noise_multiplier)
        cohort = PLANNING_COHORT
        sensitivity = math.sqrt(PLANNING_VARIANCE) / z
        share = PLANNING_VARIANCE / cohort
        return cls(sensitivity, share, cohort, 1, sample_rate, rounds, cohort=cohort)

    def compositions(self) -> tuple[DiscreteGaussianSumComposition, ...]:
        """One `DiscreteGaussianSumComposition` (what the RDP accountant composes)."""
        return (
            DiscreteGaussianSumComposition(
                self.l2_sensitivity,
                self.local_variance,
                self.summands,
                self.dimension,
                self.sample_rate,
                self.rounds,
                self.amplified,
                self.cohort,
            ),
        )


CENTRED_COUNT_SENSITIVITY = 0.5
"""L2 sensitivity of the centred count Σ_i (b_i − ½), b_i ∈ {0, 1}: adding or removing one client
moves it by exactly ½ (Andrew et al., NeurIPS 2021, Sec. 3; TF Privacy's quantile estimator).
The raw count Σ_i b_i moves by 1."""


def update_noise_for_adaptive_clipping(
    total_noise_multiplier: float,
    count_noise_std: float,
    count_sensitivity: float = CENTRED_COUNT_SENSITIVITY,
) -> float:
    """The noise multiplier z_Δ for the update sum so that update sum plus count cost z in total.

    z_Δ = (z⁻² − (σ_b/Δ_b)⁻²)^(−1/2) (Andrew et al., NeurIPS 2021, Sec. 3): the inverse of
    `ClientLevelRound.effective_noise_multiplier`. `count_noise_std` is σ_b, in counts;
    `count_sensitivity` Δ_b is that of the count the mechanism releases (½ when centred).
    """
    z = _check_noise("total noise multiplier", total_noise_multiplier)
    sigma_b = _check_noise("count noise std", count_noise_std)
    sensitivity = _check_sensitivity("count sensitivity", count_sensitivity)
    if z == 0 or sigma_b == 0:
        raise ValueError(
            f"adaptive clipping needs a positive total noise multiplier and count noise std, "
            f"got {z:g} and {sigma_b:g}"
        )
    count_multiplier = sigma_b / sensitivity
    if count_multiplier <= z:
        raise ValueError(
            f"the count query's noise multiplier σ_b/Δ_b = {count_multiplier:g} is not above the "
            f"total noise multiplier {z:g}, so the count alone would use the whole budget; "
            f"use a count noise std above {z * sensitivity:g}"
        )
    return float((z ** (-2) - count_multiplier ** (-2)) ** (-0.5))


# -- dispatch through the registry ----------------------------------------------------------------


def event_from_dict(data: Mapping[str, Any]) -> PrivacyEvent:
    """An event of any registered kind from its `to_dict` mapping; one-line ValueError if bad."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a privacy event must be a JSON object, got {data!r}")
    kind = data.get("type")
    cls = event_type(kind)
    try:
        return cls.from_dict(data)
    except (ValueError, TypeError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"privacy event {kind!r}: {message}") from None


def event_level(event: object) -> Level:
    """The event's level, example or client; a TypeError names anything that is not an event."""
    if not isinstance(event, PrivacyEvent):
        raise TypeError(
            f"expected a privacy event (a PrivacyEvent such as "
            f"{', '.join(cls.__name__ for cls in _EVENT_TYPES.values())}), got {event!r}"
        )
    return event.level


def compose(events: Iterable[EventT]) -> list[EventT]:
    """Merge consecutive events with the same parameters so a long history stays short.

    Events that ran zero times are dropped; the order of distinct events is kept.
    """
    merged: list[EventT] = []
    for event in events:
        event_level(event)
        if event.count == 0:
            continue
        last = merged[-1] if merged else None
        if last is not None and last.with_count(event.count) == event:
            merged[-1] = last.with_count(last.count + event.count)
        else:
            merged.append(event)
    return merged


def reduces_to_gaussians(event: PrivacyEvent) -> bool:
    """True when everything the event composes into is a `GaussianComposition`."""
    return all(isinstance(item, GaussianComposition) for item in event.compositions())


def gaussian_compositions(events: Iterable[PrivacyEvent]) -> list[GaussianComposition]:
    """All events as Poisson-subsampled Gaussian compositions, equal (σ, q) pairs merged.

    Composition is commutative, so equal mechanisms anywhere in the history are summed. A history
    that mixes example-level and client-level events is refused: their ε protect different
    units. So is an event that composes into another mechanism (a ValueError naming its kind).
    """
    counts: dict[tuple[float, float], int] = {}
    levels: set[Level] = set()
    for event in events:
        levels.add(event_level(event))
        for item in event.compositions():
            if not isinstance(item, GaussianComposition):
                raise ValueError(
                    f"privacy event {event_kind(event)!r} composes into "
                    f"{type(item).__name__}, not Poisson-subsampled Gaussians; account it with "
                    "an accountant that supports it"
                )
            sigma, q, count = item
            if count:
                counts[(sigma, q)] = counts.get((sigma, q), 0) + count
    if len(levels) > 1:
        raise ValueError(
            "the events mix example-level and client-level releases, whose ε protect different "
            "units; account them in separate ledgers"
        )
    return [GaussianComposition(sigma, q, count) for (sigma, q), count in counts.items()]
