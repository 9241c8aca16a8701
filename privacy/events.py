"""Privacy events: immutable records of what a mechanism released, separate from how ε is computed.

In the style of Google's `dp-accounting` (`dp_accounting.dp_event`), an event only *describes* a
release; the accountants in `privacy.accountants` compose events into ε. Two kinds exist in Privet:

- `PoissonGaussianSteps`: example-level DP-SGD on one client (Opacus): `steps` steps, each
  Poisson-sampling examples at rate q and adding Gaussian noise σ·C to the sum of clipped
  per-example gradients.
- `ClientLevelRound`: client-level DP-FedAvg on the server (McMahan et al., ICLR 2018, "Learning
  Differentially Private Recurrent Language Models"): clients Poisson-sampled at rate q, each update
  clipped to S, Gaussian noise z·S on the sum; optionally with adaptive clipping (Andrew et al.,
  NeurIPS 2021, "Differentially Private Learning with Adaptive Clipping"), which also releases a
  noised count of the clients whose update norm was within S.

Both reduce to compositions of the Poisson-subsampled Gaussian mechanism, `GaussianComposition`
(σ, q, count), which is all the accountants need. Events of the two levels protect different
units (one example vs one client) and must never be composed together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

Level = Literal["example", "client"]
LEVELS: tuple[Level, ...] = ("example", "client")


class GaussianComposition(NamedTuple):
    """`count` self-compositions of the Poisson-subsampled Gaussian mechanism (σ, q)."""

    noise_multiplier: float
    sample_rate: float
    count: int


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


@dataclass(frozen=True)
class PoissonGaussianSteps:
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping with a "type" tag (inverse: `event_from_dict`)."""
        return {
            "type": POISSON_GAUSSIAN_STEPS,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }


@dataclass(frozen=True)
class ClientLevelRound:
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping with a "type" tag (inverse: `event_from_dict`)."""
        return {
            "type": CLIENT_LEVEL_ROUND,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "rounds": self.rounds,
            "count_noise_std": self.count_noise_std,
            "count_sensitivity": self.count_sensitivity,
        }


PrivacyEvent = PoissonGaussianSteps | ClientLevelRound
EventT = TypeVar("EventT", PoissonGaussianSteps, ClientLevelRound)

POISSON_GAUSSIAN_STEPS = "poisson_gaussian_steps"
CLIENT_LEVEL_ROUND = "client_level_round"
_EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    POISSON_GAUSSIAN_STEPS: ("noise_multiplier", "sample_rate", "steps"),
    CLIENT_LEVEL_ROUND: (
        "noise_multiplier",
        "sample_rate",
        "rounds",
        "count_noise_std",
        "count_sensitivity",
    ),
}


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


def event_from_dict(data: Mapping[str, Any]) -> PrivacyEvent:
    """An event from `to_dict`'s mapping; one-line ValueError on anything malformed."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a privacy event must be a JSON object, got {data!r}")
    kind = data.get("type")
    if kind not in _EVENT_FIELDS:
        raise ValueError(
            f"unknown privacy event type {kind!r}; expected one of {', '.join(_EVENT_FIELDS)}"
        )
    expected = set(_EVENT_FIELDS[kind]) | {"type"}
    missing = sorted(expected - set(data))
    if missing:
        raise ValueError(f"privacy event {kind!r} lacks field(s) {', '.join(missing)}")
    extra = sorted(str(key) for key in set(data) - expected)
    if extra:
        raise ValueError(f"privacy event {kind!r} has unexpected field(s) {', '.join(extra)}")
    try:
        if kind == POISSON_GAUSSIAN_STEPS:
            return PoissonGaussianSteps(
                data["noise_multiplier"], data["sample_rate"], data["steps"]
            )
        return ClientLevelRound(
            data["noise_multiplier"],
            data["sample_rate"],
            data["rounds"],
            count_noise_std=data["count_noise_std"],
            count_sensitivity=data["count_sensitivity"],
        )
    except ValueError as error:
        raise ValueError(f"privacy event {kind!r}: {error}") from None


def event_level(event: object) -> Level:
    """The event's level, example or client; a TypeError names anything that is not an event."""
    if isinstance(event, PoissonGaussianSteps):
        return "example"
    if isinstance(event, ClientLevelRound):
        return "client"
    raise TypeError(
        f"expected a privacy event (PoissonGaussianSteps or ClientLevelRound), got {event!r}"
    )


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


def gaussian_compositions(events: Iterable[PrivacyEvent]) -> list[GaussianComposition]:
    """All events as Poisson-subsampled Gaussian compositions, equal (σ, q) pairs merged.

    Composition is commutative, so equal mechanisms anywhere in the history are summed. A history
    that mixes example-level and client-level events is refused: their ε protect different units.
    """
    counts: dict[tuple[float, float], int] = {}
    levels: set[Level] = set()
    for event in events:
        levels.add(event_level(event))
        for sigma, q, count in event.gaussian_compositions():
            if count:
                counts[(sigma, q)] = counts.get((sigma, q), 0) + count
    if len(levels) > 1:
        raise ValueError(
            "the events mix example-level and client-level releases, whose ε protect different "
            "units; account them in separate ledgers"
        )
    return [GaussianComposition(sigma, q, count) for (sigma, q), count in counts.items()]
