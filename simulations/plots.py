"""The report's figures: matplotlib figures rendered to PNG bytes, for embedding in HTML.

Every function here takes plain numbers (lists, mappings) and returns the bytes of one PNG, so
the report (`simulations.run_report`, `simulations.sweep_report`) decides what to plot and this
module only how. Figures are built as `matplotlib.figure.Figure` objects on the Agg canvas,
never through pyplot: no global backend, no global state, nothing left open, safe in a process
that draws other things.

Sizes are modest (6 × 3.5 in at 100 dpi, about 30–60 kB a PNG) because a sweep report embeds
half a dozen figures per run. Values that are not finite (an ε of infinity, a missing number)
are not drawn; the report says so in its text where it matters.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "DPI",
    "MAX_CLIENT_LINES",
    "Line",
    "RunLine",
    "UtilityPanel",
    "accuracy_of_runs",
    "accuracy_per_round",
    "clipping",
    "epsilon_per_round",
    "noise_multipliers",
    "participation",
    "privacy_utility",
]

DPI = 100
PANEL_WIDTH = 6.0  # inches for a one-panel figure
TWO_PANEL_WIDTH = 9.0
HEIGHT = 3.5
MAX_CLIENT_LINES = 20  # above this many clients, ε per round is drawn as a band, not one line each
MAX_GROUPED_BAR_ROUNDS = 30  # above this many rounds, participation is drawn as lines
LINE_STYLES = ("-", "--", "-.", ":")


@dataclass(frozen=True)
class Line:
    """One line of a privacy–utility panel: points (x, y), optionally with min–max error bars."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    y_low: Sequence[float] | None = None
    y_high: Sequence[float] | None = None
    x_low: Sequence[float] | None = None
    x_high: Sequence[float] | None = None


@dataclass(frozen=True)
class UtilityPanel:
    """One panel of the privacy–utility figure: its lines and what its x axis is."""

    title: str
    xlabel: str
    lines: Sequence[Line]


@dataclass(frozen=True)
class RunLine:
    """One run's test accuracy per round, for the sweep's all-runs figure."""

    name: str
    group: int  # index of the run's setting: runs of one setting share a colour
    group_label: str
    rounds: Sequence[int]
    accuracy: Sequence[float]


def _figure(panels: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure with `panels` side-by-side axes on its own Agg canvas (no pyplot)."""
    width = PANEL_WIDTH if panels == 1 else TWO_PANEL_WIDTH if panels == 2 else 4.0 * panels
    figure = Figure(figsize=(width, HEIGHT), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, panels, index + 1) for index in range(panels)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return figure, axes


def _png(figure: Figure) -> bytes:
    """The figure as PNG bytes (without the creation-software stamp, so output is stable)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _finite(values: Sequence[float | None]) -> list[float]:
    """`values` with None and non-finite numbers as NaN (matplotlib leaves a gap for NaN)."""
    return [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]


def _integer_rounds(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")


def _colour(index: int) -> str:
    return f"C{index % 10}"


def _style(index: int) -> str:
    """A line style that tells apart settings beyond the 10 colours of the cycle."""
    return LINE_STYLES[(index // 10) % len(LINE_STYLES)]


def accuracy_per_round(
    rounds: Sequence[int],
    accuracy: Sequence[float],
    local_accuracy: Sequence[float | None] | None = None,
    initial_accuracy: float | None = None,
) -> bytes:
    """Test accuracy of the global model after each round (round 0: the initial model).

    `local_accuracy` (the clients' example-weighted accuracy on their held-out data) is drawn
    dashed when any round has it.
    """
    figure, (ax,) = _figure()
    xs, ys = list(rounds), _finite(accuracy)
    if initial_accuracy is not None and math.isfinite(initial_accuracy):
        xs, ys = [0, *xs], [initial_accuracy, *ys]
    marker = "o" if len(xs) <= 40 else None
    ax.plot(xs, ys, marker=marker, markersize=4, color="C0", label="test accuracy (server)")
    if local_accuracy is not None and any(v is not None for v in local_accuracy):
        ax.plot(
            list(rounds),
            _finite(local_accuracy),
            marker=marker,
            markersize=3,
            linestyle="--",
            color="C1",
            label="local accuracy (clients' held-out data)",
        )
    _integer_rounds(ax)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Accuracy per round")
    ax.legend(fontsize="small", loc="best")
    return _png(figure)


def epsilon_per_round(
    rounds: Sequence[int],
    by_client: Mapping[str, Sequence[float]],
    client_level: Sequence[float | None] | None = None,
) -> bytes:
    """Each client's cumulative example-level ε after each round, and the client-level ε.

    Up to `MAX_CLIENT_LINES` clients get one line each; more get a band (min to max over
    clients), the median and the maximum, which is the federation's ε. A second panel shows the
    client-level ε when `client_level` has any value.
    """
    has_client_level = client_level is not None and any(v is not None for v in client_level)
    figure, axes = _figure(2 if has_client_level else 1)
    ax = axes[0]
    xs = list(rounds)
    marker = "o" if len(xs) <= 40 else None
    series = {client: _finite(values) for client, values in by_client.items()}
    if len(series) <= MAX_CLIENT_LINES:
        for index, (client, values) in enumerate(series.items()):
            ax.plot(
                xs,
                values,
                marker=marker,
                markersize=3,
                color=_colour(index),
                linestyle=_style(index),
                label=f"client {client}",
            )
        if len(series) > 6:  # beside the axes, where it hides no line
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif series:
            ax.legend(fontsize="x-small", loc="best")
    else:
        columns = list(zip(*series.values(), strict=True))
        low = [_nan_stat(column, min) for column in columns]
        high = [_nan_stat(column, max) for column in columns]
        median = [_nan_median(column) for column in columns]
        ax.fill_between(xs, low, high, color="C0", alpha=0.25, label="min–max over clients")
        ax.plot(xs, median, color="C0", linestyle="--", label="median client")
        ax.plot(xs, high, color="C3", linewidth=2, label="max (the federation's ε)")
        ax.legend(fontsize="small", loc="upper left", title=f"{len(series)} clients")
    _integer_rounds(ax)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("cumulative ε")
    ax.set_title("Example-level ε per client")
    if has_client_level:
        assert client_level is not None
        right = axes[1]
        right.plot(xs, _finite(client_level), marker=marker, markersize=4, color="C4")
        _integer_rounds(right)
        right.set_ylim(bottom=0)
        right.set_ylabel("cumulative ε")
        right.set_title("Client-level ε (whole client)")
    return _png(figure)


def _nan_stat(values: Sequence[float], pick: Callable[[list[float]], float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return pick(finite) if finite else math.nan


def _nan_median(values: Sequence[float]) -> float:
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return math.nan
    middle = len(finite) // 2
    return finite[middle] if len(finite) % 2 else (finite[middle - 1] + finite[middle]) / 2


def privacy_utility(panels: Sequence[UtilityPanel]) -> bytes:
    """Accuracy against ε: one panel per privacy level, one line per setting, error bars min–max."""
    figure, axes = _figure(len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        for index, line in enumerate(panel.lines):
            x, y = _finite(line.x), _finite(line.y)
            yerr = xerr = None
            if line.y_low is not None and line.y_high is not None:
                yerr = [
                    [max(0.0, m - lo) for m, lo in zip(y, _finite(line.y_low), strict=True)],
                    [max(0.0, hi - m) for m, hi in zip(y, _finite(line.y_high), strict=True)],
                ]
            if line.x_low is not None and line.x_high is not None:
                xerr = [
                    [max(0.0, m - lo) for m, lo in zip(x, _finite(line.x_low), strict=True)],
                    [max(0.0, hi - m) for m, hi in zip(x, _finite(line.x_high), strict=True)],
                ]
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                xerr=xerr,
                marker="o",
                markersize=4,
                capsize=3,
                color=_colour(index),
                linestyle=_style(index),
                label=line.label,
            )
        ax.set_xlim(left=0)
        low, high = ax.get_ylim()  # zoom on the points: differences between settings matter
        ax.set_ylim(max(0.0, low), min(1.02, high))
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel("test accuracy")
        ax.set_title(panel.title)
        if 1 < len(panel.lines) <= 12:
            ax.legend(fontsize="x-small", loc="best")
        elif len(panel.lines) == 1 and panel.lines[0].label:
            ax.legend(fontsize="small", loc="best")
    return _png(figure)


def clipping(
    rounds: Sequence[int],
    noised_within_fraction: Sequence[float | None] | None = None,
    clip_norm: Sequence[float | None] | None = None,
    quantization_clipped: Sequence[float | None] | None = None,
) -> bytes:
    """One panel for each clipping statistic the run recorded (None: not recorded, no panel).

    The within-clip fraction of client-level DP is itself noised (that is what makes it
    releasable), so it can fall outside [0, 1]; the dotted lines mark 0 and 1.
    """
    panels = [
        (values, name)
        for values, name in (
            (noised_within_fraction, "within"),
            (clip_norm, "norm"),
            (quantization_clipped, "quantization"),
        )
        if values is not None
    ]
    if not panels:
        raise ValueError("clipping() needs at least one recorded statistic")
    figure, axes = _figure(len(panels))
    xs = list(rounds)
    marker = "o" if len(xs) <= 40 else None
    for ax, (values, name) in zip(axes, panels, strict=True):
        if name == "within":
            ax.plot(xs, _finite(values), marker=marker, markersize=4, color="C2")
            for level in (0.0, 1.0):
                ax.axhline(level, color="grey", linestyle=":", linewidth=1)
            ax.set_ylabel("fraction (noised)")
            ax.set_title("Updates within the clip norm")
        elif name == "norm":
            ax.plot(xs, _finite(values), marker=marker, markersize=4, color="C1")
            ax.set_ylim(bottom=0)
            ax.set_ylabel("clip norm S")
            ax.set_title("Client update clip norm")
        else:
            counts = [0.0 if math.isnan(v) else v for v in _finite(values)]
            ax.bar(xs, counts, color="C3")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(0, max(1.0, *counts) * 1.1)  # all zeros: still a 0-based axis
            ax.set_ylabel("coordinates")
            ax.set_title("Clipped in quantization")
        _integer_rounds(ax)
    return _png(figure)


def noise_multipliers(client_ids: Sequence[str], sigmas: Sequence[float]) -> bytes:
    """Each client's DP-SGD noise multiplier σ: bars by client, or a histogram for many clients."""
    figure, (ax,) = _figure()
    values = _finite(sigmas)
    if len(values) <= MAX_CLIENT_LINES:
        ax.bar([str(c) for c in client_ids], [0.0 if math.isnan(v) else v for v in values])
        ax.set_xlabel("client")
        ax.set_ylabel("noise multiplier σ")
        ax.set_ylim(bottom=0)
    else:
        finite = [v for v in values if not math.isnan(v)]
        low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
        if high - low < 1e-9 * max(1.0, abs(high)):  # one value: a histogram needs a width
            low, high = low - 0.05 * max(abs(low), 1e-3), high + 0.05 * max(abs(high), 1e-3)
        ax.hist(finite, bins=min(30, max(5, len(finite) // 10)), range=(low, high), color="C0")
        ax.set_xlabel("noise multiplier σ")
        ax.set_ylabel("clients")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Example-level noise multiplier σ per client")
    return _png(figure)


def participation(rounds: Sequence[int], counts: Mapping[str, Sequence[int]]) -> bytes:
    """Clients per round in each outcome (sampled, trained, declined, failed, ...).

    The outcomes overlap (every declined client was also sampled), so they are drawn side by
    side, not stacked: grouped bars for up to `MAX_GROUPED_BAR_ROUNDS` rounds, lines beyond.
    """
    figure, (ax,) = _figure()
    xs = list(rounds)
    names = list(counts)
    if len(xs) <= MAX_GROUPED_BAR_ROUNDS:
        width = 0.8 / max(1, len(names))
        for index, name in enumerate(names):
            offset = (index - (len(names) - 1) / 2) * width
            ax.bar(
                [x + offset for x in xs],
                list(counts[name]),
                width=width,
                color=_colour(index),
                label=name,
            )
    else:
        for index, name in enumerate(names):
            ax.plot(xs, list(counts[name]), color=_colour(index), label=name)
    _integer_rounds(ax)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("clients")
    ax.set_title("Participation per round")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(figure)


def accuracy_of_runs(runs: Sequence[RunLine]) -> bytes:
    """Test accuracy per round of every run, one line per run, one colour per setting."""
    figure, (ax,) = _figure()
    labelled: set[int] = set()
    for run in runs:
        first = run.group not in labelled
        labelled.add(run.group)
        ax.plot(
            list(run.rounds),
            _finite(run.accuracy),
            color=_colour(run.group),
            linestyle=_style(run.group),
            alpha=0.8,
            linewidth=1.2,
            label=run.group_label if first else None,
        )
    _integer_rounds(ax)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy per round, every finished run")
    if 0 < len(labelled) <= 12:
        ax.legend(fontsize="x-small", loc="best")
    return _png(figure)
