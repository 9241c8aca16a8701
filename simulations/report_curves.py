"""The privacy–utility curves of a sweep: finished runs grouped into seed-averaged lines.

A sweep varies some settings; the privacy knobs among them (`PRIVACY_KNOBS`) move a run along
a line, the seed (`SEED_KEYS`) is averaged over, and every other combination of varied values
(a "setting") is one line. This is pure computation on (ε, accuracy) points, kept apart from
reading the runs and from drawing, so that it can be tested on its own; the sweep report uses
it, and its `show_value` and `value_key` to print and group sweep values the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PRIVACY_KNOBS",
    "SEED_KEYS",
    "Curve",
    "CurvePoint",
    "SweepPoint",
    "privacy_utility_curves",
    "setting_label",
    "show_value",
    "value_key",
]


# Sweep keys that set how much privacy a run spends: they make the x axis of the
# privacy–utility curve, so they are not part of a curve's "setting".
PRIVACY_KNOBS: tuple[str, ...] = (
    "target-epsilon",
    "noise-multiplier",
    "client-target-epsilon",
    "client-noise-multiplier",
    "epsilon-budget",
)
SEED_KEYS: tuple[str, ...] = ("seed",)  # runs that differ only here are averaged


@dataclass(frozen=True)
class SweepPoint:
    """One finished run on the privacy–utility plane: its varied values, ε and accuracy."""

    name: str
    values: Mapping[str, Any]
    epsilon: float
    accuracy: float


@dataclass(frozen=True)
class CurvePoint:
    """Runs of one setting and one privacy knob, averaged over seeds (min–max kept)."""

    knobs: tuple[tuple[str, Any], ...]
    runs: tuple[str, ...]
    x: float
    x_min: float
    x_max: float
    y: float
    y_min: float
    y_max: float

    @property
    def seeds(self) -> int:
        return len(self.runs)


@dataclass(frozen=True)
class Curve:
    """One line of the privacy–utility plot: every run of one setting."""

    setting: tuple[tuple[str, Any], ...]
    label: str
    points: tuple[CurvePoint, ...]


def value_key(value: Any) -> str:
    """`value` as canonical JSON: equal values, lists and dicts included, share one key."""
    return json.dumps(value, sort_keys=True, default=str)


def show_value(value: Any) -> str:
    """A sweep value as the user wrote it: 0.5 not 0.50000, lists as lists."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def setting_label(setting: Sequence[tuple[str, Any]]) -> str:
    """`partition=iid, alpha=0.5`; "all runs" when nothing but privacy and seed varies."""
    return ", ".join(f"{key}={show_value(value)}" for key, value in setting) or "all runs"


def privacy_utility_curves(
    points: Sequence[SweepPoint], varied_keys: Sequence[str] | None = None
) -> list[Curve]:
    """Group finished runs into one curve per setting, seed-averaged, sorted by ε.

    A setting is the combination of varied values other than the privacy knobs
    (`PRIVACY_KNOBS`) and the seed; within a setting, runs with the same knob values are one
    point: mean ε and mean accuracy over them (the seeds), with their min and max for error
    bars. Points with an infinite ε or accuracy are left out.
    """
    if varied_keys is None:
        ordered: dict[str, None] = {}
        for point in points:
            ordered.update(dict.fromkeys(point.values))
        varied_keys = tuple(ordered)
    setting_keys = [k for k in varied_keys if k not in PRIVACY_KNOBS and k not in SEED_KEYS]
    knob_keys = [k for k in varied_keys if k in PRIVACY_KNOBS]
    groups: dict[str, tuple[tuple[tuple[str, Any], ...], dict[str, list[SweepPoint]]]] = {}
    knob_of: dict[str, tuple[tuple[str, Any], ...]] = {}
    for point in points:
        if not (math.isfinite(point.epsilon) and math.isfinite(point.accuracy)):
            continue
        setting = tuple((k, point.values.get(k)) for k in setting_keys)
        knobs = tuple((k, point.values.get(k)) for k in knob_keys)
        _, by_knob = groups.setdefault(value_key(setting), (setting, {}))
        knob_key = value_key(knobs)
        knob_of[knob_key] = knobs
        by_knob.setdefault(knob_key, []).append(point)
    curves = []
    for setting, by_knob in groups.values():
        curve_points = []
        for knob_key, members in by_knob.items():
            xs = [p.epsilon for p in members]
            ys = [p.accuracy for p in members]
            curve_points.append(
                CurvePoint(
                    knobs=knob_of[knob_key],
                    runs=tuple(p.name for p in members),
                    x=sum(xs) / len(xs),
                    x_min=min(xs),
                    x_max=max(xs),
                    y=sum(ys) / len(ys),
                    y_min=min(ys),
                    y_max=max(ys),
                )
            )
        curve_points.sort(key=lambda p: p.x)
        curves.append(Curve(setting, setting_label(setting), tuple(curve_points)))
    return curves
