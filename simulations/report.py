"""`privet report`: one self-contained HTML file for a run or a sweep of runs.

The report is read from what a run wrote (results.json; for a sweep, sweep.json and each run's
folder) and from nothing else: it never recomputes a privacy number, it states the ones the run
recorded, with the parameters they came from, so that anyone can check them (the test suite
does, against Opacus' and Google's analysis code). Plots are PNGs embedded as base64 data URIs;
there is no JavaScript, no style sheet or font to fetch, no link outside the file, so it can be
mailed, archived or opened offline.

The file is assembled in memory and written atomically: a bad input raises `ReportError` (one
line naming the file, the problem and what to do) and leaves any earlier report untouched.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privet.privacy import atomic_write_text
from privet.server.run_output import (
    CHECKPOINT_FILE,
    ERROR_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    SWEEP_FILE,
    SWEEP_FORMAT,
    SWEEP_RUNS_DIR,
    SWEEP_VERSION,
    ClientData,
    ClientLevelData,
    JsonFields,
    ResultsError,
    RoundData,
    read_json,
    read_results,
)
from privet.simulations import plots

__all__ = [
    "PRIVACY_KNOBS",
    "REPORT_FILE",
    "SEED_KEYS",
    "ClientData",
    "ClientLevelData",
    "Curve",
    "CurvePoint",
    "ReportError",
    "RoundData",
    "RunData",
    "SweepData",
    "SweepPoint",
    "SweepRun",
    "build_report",
    "format_epsilon",
    "load_run",
    "load_sweep",
    "privacy_utility_curves",
    "write_report",
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

CLIENT_SENTENCES_MAX = 5  # up to this many clients: one sentence each; beyond: a table
CLIENT_TABLE_OPEN_MAX = 20  # the client table starts unfolded up to this many clients
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

ACCOUNTANT_NAMES = {
    "rdp": "RDP accountant (Rényi DP: Opacus' analysis, orders up to 16384)",
    "prv": "PRV accountant (Opacus)",
    "pld": "PLD accountant (Google dp-accounting)",
}


class ReportError(ValueError):
    """A run or sweep folder the report cannot be made from; the message is one line."""


# -- reading results.json (through server.run_output, its one reader) ----------------------


def _read_json(path: Path) -> Any:
    """The parsed JSON of `path`, or a ReportError naming the file and what to do."""
    return read_json(path, ReportError)


def _fields(path: Path, data: Any, where: str = "") -> JsonFields:
    """Typed access to one JSON object of `path`; a wrong value is a ReportError."""
    return JsonFields(path, data, where, ReportError)


@dataclass(frozen=True)
class RunData:
    """What the report needs of one run folder, validated when it is read."""

    path: Path
    finished: bool
    stop_reason: str | None
    engine: str | None
    version: str | None
    wall_time_s: float | None
    config: dict[str, Any]
    accountant: str
    delta: float
    noise_source: str | None
    initial_accuracy: float | None
    rounds: tuple[RoundData, ...]
    clients: tuple[ClientData, ...]
    declined: tuple[tuple[int, int], ...]
    client_level: ClientLevelData | None
    secure_aggregation: dict[str, Any] | None
    resumed_after: tuple[int, ...]

    @property
    def epsilon_max(self) -> float:
        """The federation's example-level ε: the largest client's (never a mean); 0 if none."""
        return max((client.epsilon for client in self.clients), default=0.0)

    @property
    def planned_rounds(self) -> int | None:
        value = self.config.get("rounds")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def final_accuracy(self) -> float | None:
        return self.rounds[-1].accuracy if self.rounds else None


def _count_query(cl: ClientLevelData) -> str:
    """The count query's noise and sensitivity, when results.json records them."""
    if cl.count_stddev is None or cl.count_sensitivity is None:
        return ""
    return (
        f" (std σ_b = {_num(cl.count_stddev)} at sensitivity {_num(cl.count_sensitivity)}, "
        f"multiplier {_num(cl.count_stddev / cl.count_sensitivity)})"
    )


def load_run(directory: str | Path) -> RunData:
    """Read and check DIR/results.json (of a finished or an interrupted run)."""
    try:
        results = read_results(directory).validate()
    except ResultsError as error:
        raise ReportError(str(error)) from None
    privacy = results.privacy
    return RunData(
        path=Path(directory),
        finished=results.finished,
        stop_reason=results.stop_reason,
        engine=results.engine,
        version=results.privet_version,
        wall_time_s=results.wall_time_s,
        config=dict(results.config),
        accountant=privacy.accountant,
        delta=privacy.delta,
        noise_source=privacy.noise_source,
        initial_accuracy=results.initial_accuracy,
        rounds=results.rounds,
        clients=tuple(sorted(results.clients, key=lambda c: c.id)),
        declined=results.declined,
        client_level=results.client_level,
        secure_aggregation=results.secure_aggregation,
        resumed_after=results.resumed_after,
    )


# -- reading a sweep -----------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: varied values, status, why it is not done, results if readable.

    The status is done, interrupted, failed, pending or unreadable (results.json is bad).
    """

    name: str
    values: dict[str, Any]
    status: str
    reason: str | None
    run: RunData | None


@dataclass(frozen=True)
class SweepData:
    """sweep.json with every run's status and results."""

    path: Path
    engine: str | None
    base: dict[str, Any]
    runs: tuple[SweepRun, ...]
    varied_keys: tuple[str, ...]


def _sweep_run(directory: Path, name: str, values: dict[str, Any]) -> SweepRun:
    """A sweep run's status from its folder, by the rules `privet sweep` uses.

    Finished results → done; error.txt → failed (its first line is the reason); a checkpoint →
    interrupted; nothing → pending. A results.json that cannot be read makes the run
    "unreadable" (with the reason) rather than failing the whole report.
    """
    folder = directory / SWEEP_RUNS_DIR / name
    run: RunData | None = None
    if (folder / RESULTS_FILE).exists():
        try:
            run = load_run(folder)
        except ReportError as error:  # one bad run does not hide the other runs' results
            return SweepRun(name, values, "unreadable", str(error), None)
        if run.finished:
            return SweepRun(name, values, "done", None, run)
    if (folder / ERROR_FILE).exists():
        try:
            lines = (folder / ERROR_FILE).read_text(encoding="utf-8", errors="replace")
            reason = next((line.strip() for line in lines.splitlines() if line.strip()), "")
        except OSError as error:
            reason = f"cannot read {folder / ERROR_FILE}: {error.strerror or error}"
        return SweepRun(name, values, "failed", reason[:300] or "no reason recorded", run)
    if (folder / CHECKPOINT_FILE).exists():
        done = f"{len(run.rounds)} of {run.planned_rounds} rounds" if run else "no round"
        return SweepRun(name, values, "interrupted", f"{done} recorded", run)
    return SweepRun(name, values, "pending", None, None)


def load_sweep(directory: str | Path) -> SweepData:
    """Read DIR/sweep.json and the status and results of each of its runs."""
    directory = Path(directory)
    path = directory / SWEEP_FILE
    top = _fields(path, _read_json(path))
    what = "not a Privet sweep file; pass a sweep's output folder"
    if top.data.get("format") != SWEEP_FORMAT:
        raise ReportError(f"{path}: format is {top.data.get('format')!r:.40}; {what}")
    version = top.data.get("version")
    if version != SWEEP_VERSION:
        raise ReportError(
            f"{path}: sweep version {version!r:.20} is not {SWEEP_VERSION}; use the Privet "
            "version that wrote it"
        )
    base = top.child("base")
    runs: list[SweepRun] = []
    varied: dict[str, None] = {}  # ordered set
    seen: set[str] = set()
    for index, item in enumerate(top.items("runs", required=True)):
        entry = _fields(path, item, f"runs[{index}].")
        name = entry.optional_text("name")
        if name is None or not SAFE_NAME.match(name) or name in seen:
            problem = "missing" if name is None else f"{name!r:.40}"
            raise ReportError(
                f"{path}: runs[{index}].name is {problem}; each run needs a unique folder name "
                "(letters, digits, . _ -) — rerun `privet sweep`"
            )
        seen.add(name)
        values = entry.child("values")
        flat = {} if values is None else dict(values.data)
        varied.update(dict.fromkeys(flat))
        runs.append(_sweep_run(directory, name, flat))
    return SweepData(
        path=directory,
        engine=top.optional_text("engine"),
        base={} if base is None else dict(base.data),
        runs=tuple(runs),
        varied_keys=tuple(varied),
    )


# -- the privacy–utility curves of a sweep -------------------------------------------------


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


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _show(value: Any) -> str:
    """A sweep value as the user wrote it: 0.5 not 0.50000, lists as lists."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def setting_label(setting: Sequence[tuple[str, Any]]) -> str:
    """`partition=iid, alpha=0.5`; "all runs" when nothing but privacy and seed varies."""
    return ", ".join(f"{key}={_show(value)}" for key, value in setting) or "all runs"


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
        _, by_knob = groups.setdefault(_hashable(setting), (setting, {}))
        knob_key = _hashable(knobs)
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


# -- HTML pieces ---------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def format_epsilon(value: float) -> str:
    """ε as every part of the report prints it: three decimals, ∞ for an unbounded loss."""
    return "∞" if math.isinf(value) else f"{value:.3f}"


def _eps(value: float, ident: str) -> str:
    """A printed ε, tagged with what it is (`data-eps`) so tests can check every single one."""
    return f'<span class="eps" data-eps="{_e(ident)}">{format_epsilon(value)}</span>'


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    return "∞" if math.isinf(value) else f"{value:.{digits}g}"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _figure(png: bytes, alt: str, caption: str) -> str:
    return f"<figure>{_img(png, alt)}<figcaption>{caption}</figcaption></figure>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """An HTML table from escaped cells; columns in `numeric` are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ids(ids: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #1d2125; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem;
     margin-top: 2rem; }
h3 { font-size: 1.08rem; margin-top: 1.4rem; }
h4 { font-size: 1rem; margin-top: 1.2rem; }
.sub { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .55rem; text-align: left;
         vertical-align: top; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { white-space: nowrap; }
table.kv th { width: 15rem; font-weight: 600; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e8ec; }
figcaption { color: #57606a; font-size: .88rem; max-width: 56rem; }
.statement { background: #f6fbf7; border-left: 4px solid #2e7d4f; padding: .4rem 1rem;
             margin: .8rem 0; }
.warning { background: #fff8e6; border-left: 4px solid #c78a00; padding: .4rem 1rem; }
details { margin: .5rem 0; }
details.run { border: 1px solid #d0d7de; border-radius: 6px; padding: .3rem .8rem; }
details.run > summary { font-weight: 600; cursor: pointer; }
.status-done { color: #2e7d4f; } .status-failed, .status-unreadable { color: #b42318; }
.status-interrupted { color: #c78a00; } .status-pending { color: #57606a; }
code { background: #f3f5f7; padding: 0 .25rem; border-radius: 3px; }
"""


def _page(title: str, subtitle: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{_e(title)}</h1>\n<p class="sub">{subtitle}</p>\n{body}\n</body>\n</html>\n'
    )


# -- one run -------------------------------------------------------------------------------


class _RunSections:
    """The HTML sections of one run's report; `prefix` keeps ε tags unique inside a sweep."""

    def __init__(self, run: RunData, prefix: str = "", level: int = 2) -> None:
        self.run = run
        self.prefix = prefix
        self.h = level

    def heading(self, text: str, depth: int = 0) -> str:
        level = min(6, self.h + depth)
        return f"<h{level}>{text}</h{level}>"

    def eps(self, value: float, ident: str) -> str:
        return _eps(value, f"{self.prefix}{ident}")

    # Summary ------------------------------------------------------------------------------

    def summary(self) -> str:
        run, config = self.run, self.run.config
        rows: list[tuple[str, str]] = []
        rows.append(
            ("Data set", _e(f"{config.get('dataset', '—')}, partition {_partition(config)}"))
        )
        rows.append(("Model", _e(config.get("model", "—"))))
        per_round = config.get("clients_per_round")
        clients = config.get("clients", "—")
        rows.append(("Clients", _e(clients)))
        rows.append(
            (
                "Clients per round",
                _e(_per_round(per_round, config.get("client_sampling"), clients)),
            )
        )
        planned = run.planned_rounds
        last = run.rounds[-1].round if run.rounds else 0
        rows.append(("Rounds completed / planned", _e(f"{last} / {planned or '—'}")))
        rows.append(
            (
                "Local training",
                _e(
                    f"{config.get('local_epochs', '—')} epochs per round, batch "
                    f"{config.get('batch_size', '—')}, learning rate {config.get('lr', '—')}"
                ),
            )
        )
        rows.append(("Engine", _e(run.engine or "—")))
        if run.finished:
            state = "yes" + (f" — stopped early: {run.stop_reason}" if run.stop_reason else "")
        else:
            state = "no — the run did not finish; this report shows the rounds it recorded"
        rows.append(("Finished", _e(state)))
        if run.resumed_after:
            rows.append(("Resumed after rounds", _e(", ".join(map(str, run.resumed_after)))))
        if run.rounds:
            best = max(run.rounds, key=lambda r: r.accuracy)
            rows.append(("Final test accuracy", _e(f"{run.rounds[-1].accuracy:.4f}")))
            rows.append(("Best test accuracy", _e(f"{best.accuracy:.4f} (round {best.round})")))
        if run.initial_accuracy is not None:
            rows.append(("Initial test accuracy", _e(f"{run.initial_accuracy:.4f}")))
        rows.append(
            (
                "Example-level privacy",
                f"max ε = {self.eps(run.epsilon_max, 'example:max')} at δ = "
                f"{_e(f'{run.delta:g}')} over all clients ({_e(_accountant(run.accountant))})",
            )
        )
        cl = run.client_level
        rows.append(
            (
                "Client-level privacy",
                "off"
                if cl is None
                else f"ε = {self.eps(cl.epsilon, 'client-level')} at δ = {_e(f'{cl.delta:g}')}"
                f" (whole client, {cl.rounds} noised releases)",
            )
        )
        rows.append(("Secure aggregation", "on" if run.secure_aggregation is not None else "off"))
        rows.append(("Wall time", _e(_duration(run.wall_time_s))))
        rows.append(("Privet version", _e(run.version or "—")))
        rows.append(("Noise source", _e(run.noise_source or "—")))
        body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        return f'{self.heading("Summary")}<table class="kv">{body}</table>'

    # Plots --------------------------------------------------------------------------------

    def figures(self) -> str:
        run = self.run
        parts = [self.heading("Plots")]
        if not run.rounds:
            parts.append("<p>No round finished: there is nothing to plot.</p>")
            return "".join(parts)
        rounds = [r.round for r in run.rounds]
        parts.append(self.heading("Accuracy per round", 1))
        parts.append(
            _figure(
                plots.accuracy_per_round(
                    rounds,
                    [r.accuracy for r in run.rounds],
                    [r.local_accuracy for r in run.rounds],
                    run.initial_accuracy,
                ),
                "test accuracy per round",
                "Accuracy of the global model on the server's held-out test set after each "
                "round (round 0: the initial model). Local accuracy is the clients' own "
                "held-out data, example-weighted, released without noise.",
            )
        )
        parts.append(self.heading("ε per round", 1))
        parts.append(self._epsilon_figure(rounds))
        parts.append(self.heading("Privacy–utility", 1))
        parts.append(self._utility_figure())
        parts.append(self.heading("Clipping", 1))
        parts.append(self._clipping(rounds))
        parts.append(self.heading("Noise σ", 1))
        parts.append(self._noise())
        parts.append(self.heading("Participation, dropouts and declines", 1))
        parts.append(self._participation(rounds))
        return "".join(parts)

    def _epsilon_figure(self, rounds: list[int]) -> str:
        run = self.run
        ids: dict[str, None] = {str(c.id): None for c in run.clients}
        for record in run.rounds:
            ids.update(dict.fromkeys(record.epsilon_by_client))
        ordered = sorted(ids, key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))
        by_client = {
            client: [r.epsilon_by_client.get(client, 0.0) for r in run.rounds] for client in ordered
        }
        client_level = _carried(run)
        population = run.config.get("clients")
        untrained = (
            population - len(by_client)
            if isinstance(population, int) and population > len(by_client)
            else 0
        )
        many = len(by_client) > plots.MAX_CLIENT_LINES
        caption = (
            f"Cumulative example-level ε of each client after each round, at δ = "
            f"{run.delta:g} ({_accountant(run.accountant)}); a client that has not trained yet "
            "is at 0. "
            + (
                f"With {len(by_client)} clients the band spans the smallest to the largest "
                "client; the red line, the largest, is the federation's ε. "
                if many
                else "Clients with equal ε share one line (the last drawn shows). "
            )
            + (
                f"{untrained} of {population} clients never trained and are not drawn (ε = 0). "
                if untrained
                else ""
            )
            + (
                "Right: the client-level ε (adding or removing a whole client); it grows only "
                "in rounds in which the server released a noised sum."
                if any(v is not None for v in client_level)
                else ""
            )
        )
        png = plots.epsilon_per_round(rounds, by_client, client_level)
        return _figure(png, "epsilon per round per client", _e(caption))

    def _utility_figure(self) -> str:
        run = self.run
        panels = []
        xs = [0.0] + [r.epsilon_max for r in run.rounds]
        ys = [run.initial_accuracy] + [r.accuracy for r in run.rounds]
        keep = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        panels.append(
            plots.UtilityPanel(
                title="Accuracy vs example-level ε",
                xlabel=f"max ε over clients (δ = {run.delta:g})",
                lines=[plots.Line("", [x for x, _ in keep], [y for _, y in keep])],
            )
        )
        if run.client_level is not None:
            carried = _carried(run)
            points = [(0.0, run.initial_accuracy)] + [
                (eps, r.accuracy) for eps, r in zip(carried, run.rounds, strict=True)
            ]
            keep = [(x, y) for x, y in points if y is not None and x is not None]
            panels.append(
                plots.UtilityPanel(
                    title="Accuracy vs client-level ε",
                    xlabel=f"client-level ε (δ = {run.client_level.delta:g})",
                    lines=[plots.Line("", [x for x, _ in keep], [y for _, y in keep])],
                )
            )
        return _figure(
            plots.privacy_utility(panels),
            "accuracy versus epsilon",
            "Test accuracy after round r against the privacy spent by the end of round r "
            "(the first point is the initial model, before any release). A run has one point "
            "per round; a sweep report draws one line per setting.",
        )

    def _clipping(self, rounds: list[int]) -> str:
        run = self.run
        within = [r.noised_within_fraction for r in run.rounds]
        norms = [r.clip_norm for r in run.rounds]
        secure = [r.secure_aggregation or {} for r in run.rounds]
        quantized = [
            _optional_float(s.get("quantization_clipped")) if s.get("status") == "ok" else None
            for s in secure
        ]
        has_within = any(v is not None for v in within)
        adaptive = run.client_level is not None and run.client_level.adaptive_clipping
        has_norms = any(v is not None for v in norms) and (
            adaptive or len({v for v in norms if v is not None}) > 1
        )
        recorded = [v for v in quantized if v is not None]
        has_quantized = run.secure_aggregation is not None and any(v > 0 for v in recorded)
        why = (
            "Privet does not release the per-example clipping fraction of DP-SGD: it depends "
            "on the client's data and would itself need noise to be released."
        )
        facts = []
        if run.secure_aggregation is not None and recorded and not has_quantized:
            facts.append(
                "Secure aggregation clipped no coordinate to its quantization range in any "
                "round (such coordinates are counted, never silent)."
            )
        fixed = {v for v in norms if v is not None}
        if run.client_level is not None and not has_norms and len(fixed) == 1:
            facts.append(f"Client updates were clipped to a fixed L2 norm S = {_num(fixed.pop())}.")
        if not (has_within or has_norms or has_quantized):
            if facts:
                return (
                    f"<p>{_e(' '.join(facts))} No clipping statistic changes over this run, so "
                    f"there is no clipping plot. {_e(why)}</p>"
                )
            return (
                f"<p>No clipping statistic was recorded in this run, so there is no clipping "
                f"plot. {_e(why)} Client-level DP (with its noised fraction of updates within "
                "the clip norm, and adaptive clipping) and secure aggregation (coordinates "
                "clipped in quantization) record theirs.</p>"
            )
        notes = []
        if has_within:
            notes.append(
                "the fraction of client updates within the clip norm S, released with noise "
                "(so it can leave [0, 1])"
            )
        if has_norms:
            notes.append(
                "the clip norm S of client updates"
                + (" (adaptive clipping tracks a quantile of the update norms)" if adaptive else "")
            )
        if has_quantized:
            notes.append(
                "the coordinates clipped to the quantization range in secure aggregation "
                "(counted, never silent)"
            )
        png = plots.clipping(
            rounds,
            within if has_within else None,
            norms if has_norms else None,
            quantized if has_quantized else None,
        )
        caption = f"Per round: {'; '.join(notes)}. {' '.join(facts)} {why}"
        return _figure(png, "clipping statistics per round", _e(caption.replace("  ", " ")))

    def _noise(self) -> str:
        run = self.run
        parts = []
        clip = run.config.get("max_grad_norm")
        if run.clients:
            png = plots.noise_multipliers(
                [str(c.id) for c in run.clients], [c.noise_multiplier for c in run.clients]
            )
            target = run.config.get("target_epsilon")
            how = (
                f"calibrated by each client for its own data-set size to reach ε ≤ {target:g} "
                "by the end of the planned run"
                if isinstance(target, int | float) and run.config.get("noise_multiplier") is None
                else "as configured"
            )
            parts.append(
                _figure(
                    png,
                    "noise multiplier per client",
                    _e(
                        f"Each client's DP-SGD noise multiplier σ ({how}); the noise added to "
                        f"each step's clipped gradient sum has standard deviation σ·C with "
                        f"per-example clip norm C = {_num(_optional_float(clip))}."
                    ),
                )
            )
        else:
            parts.append("<p>No client has trained, so no noise multiplier was recorded.</p>")
        cl = run.client_level
        if cl is not None:
            text = (
                f"Client level: the server adds Gaussian noise of standard deviation z·S to the "
                f"sum of clipped client updates, z = {_num(cl.noise_multiplier)}"
            )
            if cl.adaptive_clipping and cl.update_noise_multiplier is not None:
                text += (
                    f" in total: z_Δ = {_num(cl.update_noise_multiplier)} on the update sum, "
                    "the rest on the noised count adaptive clipping uses" + _count_query(cl)
                )
            if cl.clip_norm_final is not None:
                text += f"; final clip norm S = {_num(cl.clip_norm_final)}"
            parts.append(f"<p>{_e(text)}.</p>")
        return "".join(parts)

    def _participation(self, rounds: list[int]) -> str:
        run = self.run
        dropped = [len((r.secure_aggregation or {}).get("dropped") or []) for r in run.rounds]
        series: dict[str, list[int]] = {
            "sampled": [r.sampled for r in run.rounds],
            "trained (aggregated)": [r.clients_trained for r in run.rounds],
        }
        optional = {
            "declined (budget)": [r.declined for r in run.rounds],
            "failed (dropped out)": [r.failed for r in run.rounds],
            "rejected (update)": [r.rejected for r in run.rounds],
            "dropped in secure aggregation": dropped,
        }
        quiet = [name.split(" (")[0] for name, values in optional.items() if not any(values)]
        series.update({name: values for name, values in optional.items() if any(values)})
        png = plots.participation(rounds, series)
        caption = (
            "Clients per round: sampled by the server; trained and aggregated into the model; "
            "declined (their ε budget would have been exceeded); failed or timed out; "
            "rejected by the server's checks; dropped during secure aggregation. "
        )
        if quiet:
            caption += f"None {_or_list(quiet)} in any round."
        parts = [_figure(png, "participation per round", _e(caption))]
        if run.declined:
            budget = run.config.get("epsilon_budget")
            by_round: dict[int, list[int]] = {}
            for client, at in run.declined:
                by_round.setdefault(at, []).append(client)
            text = "; ".join(
                f"from round {at}: client{'s' if len(c) > 1 else ''} {_ids(sorted(c))}"
                for at, c in sorted(by_round.items())
            )
            parts.append(
                f"<p>Declines (example-level budget ε ≤ {_e(_num(_optional_float(budget)))}, "
                f"enforced before training): {_e(text)}.</p>"
            )
        return "".join(parts)

    # Privacy statement --------------------------------------------------------------------

    def statement(self) -> str:
        run = self.run
        parts = [self.heading("Privacy statement")]
        if not run.finished:
            parts.append(
                '<p class="warning">This run did not finish: the statement covers the '
                f"{len(run.rounds)} rounds results.json recorded. The ledgers "
                "(<code>ledgers/</code>) are written before each release and may hold one that "
                "results.json lacks; check them with "
                f"<code>privet budget --verify {_e(run.path)}</code>.</p>"
            )
        parts.append(self.heading("Each example of each client (example-level DP)", 1))
        parts.append(self._example_level())
        parts.append(self.heading("Each client as a whole (client-level DP)", 1))
        parts.append(self._client_level())
        parts.append(self.heading("What the server saw (secure aggregation)", 1))
        parts.append(self._secure_aggregation())
        parts.append(self.heading("What is not covered", 1))
        parts.append(self._not_covered())
        return "".join(parts)

    def _client_sentence(self, client: ClientData) -> str:
        if client.steps == 0:
            return (
                f"Client {client.id} never trained and released nothing: ε = "
                f"{self.eps(client.epsilon, f'example:client:{client.id}')}."
            )
        rounds = client.rounds_participated
        over = (
            f"over all {rounds} round{'s' if rounds != 1 else ''} it took part in"
            if rounds is not None
            else "over every round it took part in"
        )
        return (
            f"Each example of client {client.id} is protected at (ε, δ) = "
            f"({self.eps(client.epsilon, f'example:client:{client.id}')}, "
            f"{_e(f'{client.delta:g}')}) against anyone who saw what client {client.id} sent "
            f"— the server included — {over} (σ = {_num(client.noise_multiplier)}, sampling "
            f"rate q = {_num(client.sample_rate)}, {client.steps} steps, "
            f"{_e(_accountant(self.run.accountant))})."
        )

    def _example_level(self) -> str:
        run = self.run
        clients = run.clients
        population = run.config.get("clients")
        if not clients:
            return (
                '<div class="statement"><p>No client has trained yet: nothing was released, '
                f"and the federation's ε is {self.eps(0.0, 'example:max')}.</p></div>"
            )
        top = max(clients, key=lambda c: c.epsilon)
        parts = ['<div class="statement">']
        if len(clients) <= CLIENT_SENTENCES_MAX:
            parts.append("<ul>")
            parts.extend(f"<li>{self._client_sentence(c)}</li>" for c in clients)
            parts.append("</ul>")
        else:
            parts.append(
                f"<p>Each example of client <i>k</i> is protected at (ε<sub>k</sub>, δ) against "
                "anyone who saw what client <i>k</i> sent — the server included — over all the "
                f"rounds it took part in; the table below gives ε<sub>k</sub> for all "
                f"{len(clients)} clients. The largest:</p><p>{self._client_sentence(top)}</p>"
            )
        parts.append(
            f"<p>The noise is added on the client, before anything leaves it. Client data sets "
            f"are disjoint, so an example is protected at its own client's ε; the federation's "
            f"figure is the largest, <b>ε = {self.eps(run.epsilon_max, 'example:max')}</b> "
            f"(client {top.id}). ε is cumulative over the whole run and never averaged across "
            "clients.</p>"
        )
        if isinstance(population, int) and population > len(clients):
            missing = population - len(clients)
            parts.append(
                f"<p>{missing} of {population} clients never trained and released nothing.</p>"
            )
        parts.append("</div>")
        if len(clients) > CLIENT_SENTENCES_MAX:
            rows = [
                [
                    _e(c.id),
                    _e(c.num_examples if c.num_examples is not None else "—"),
                    self.eps(c.epsilon, f"example:client:{c.id}"),
                    _e(f"{c.delta:g}"),
                    _e(_num(c.noise_multiplier)),
                    _e(_num(c.sample_rate)),
                    _e(c.steps),
                    _e(c.rounds_participated if c.rounds_participated is not None else "—"),
                ]
                for c in clients
            ]
            table = _table(
                ["client", "examples", "ε", "δ", "σ", "q", "steps", "rounds"],
                rows,
                numeric={0, 1, 2, 3, 4, 5, 6, 7},
            )
            opened = " open" if len(clients) <= CLIENT_TABLE_OPEN_MAX else ""
            parts.append(
                f"<details{opened}><summary>ε of all {len(clients)} clients (δ = "
                f"{_e(f'{run.delta:g}')}, {_e(_accountant(run.accountant))})</summary>"
                f"{table}</details>"
            )
        return "".join(parts)

    def _client_level(self) -> str:
        run = self.run
        cl = run.client_level
        if cl is None:
            return (
                "<p>Client-level DP was off: there is no guarantee for a client's participation "
                "or its data set as a whole, only for its examples one at a time (above).</p>"
            )
        noise = f"noise multiplier z = {_num(cl.noise_multiplier)}"
        if cl.adaptive_clipping and cl.update_noise_multiplier is not None:
            noise += (
                f", shared between the update sum (z_Δ = {_num(cl.update_noise_multiplier)}) "
                "and the noised count adaptive clipping uses" + _count_query(cl)
            )
        secure = (
            " Secure aggregation does not change this: the server unmasks the sum, then adds "
            "the noise."
            if run.secure_aggregation is not None
            else ""
        )
        return (
            '<div class="statement"><p>With respect to adding or removing a whole client — all '
            "of its examples at once — the sequence of models the server released is "
            f"(ε, δ) = ({self.eps(cl.epsilon, 'client-level')}, {_e(f'{cl.delta:g}')})-DP over "
            f"the {cl.rounds} round{'s' if cl.rounds != 1 else ''} in which it released a "
            f"noised sum ({_e(noise)}; each client sampled with probability "
            f"q = {_e(_num(cl.sample_rate))} per round; {_e(_accountant(run.accountant))}).</p>"
            "<p>The noise is added by the server: this is the trusted-server model, in which "
            f"the server sees the sum of the clipped updates before the noise.{secure}</p></div>"
        )

    def _secure_aggregation(self) -> str:
        run = self.run
        if run.secure_aggregation is None:
            return (
                "<p>Secure aggregation was off: the server saw each client's update on its own "
                "(each protected by that client's example-level DP above).</p>"
            )
        rounds = [(r.round, r.secure_aggregation or {}) for r in run.rounds]
        ok = [(n, s) for n, s in rounds if s.get("status") == "ok"]
        failed = [(n, s) for n, s in rounds if s.get("status") == "failed"]
        parts = ['<div class="statement">']
        if ok:
            thresholds = [
                int(s["threshold"]) for _, s in ok if isinstance(s.get("threshold"), int | float)
            ]
            smallest = min(len(s.get("survivors") or []) for _, s in ok)
            t = min(thresholds) if thresholds else None
            sums = f"sums of at least t = {t} clients'" if t is not None else "sums of clients'"
            parts.append(
                f"<p>The server saw only {sums} quantized updates, never a single client's "
                "update (against an "
                "honest-but-curious server and up to t − 1 colluding clients); the smallest sum "
                f"it unmasked covered {smallest} clients. Secure aggregation succeeded in "
                f"{len(ok)} of {len(rounds)} rounds.</p>"
            )
        else:
            parts.append(
                "<p>No round was aggregated securely: the server unmasked no sum and the model "
                "never changed through secure aggregation.</p>"
            )
        if failed:
            reasons = sorted({str(s.get("reason") or "no reason recorded") for _, s in failed})
            parts.append(
                f"<p>Round{'s' if len(failed) > 1 else ''} {_e(_ids([n for n, _ in failed]))} "
                "failed and {} skipped: the model stayed as it was ({}). The example-level ε of "
                "clients that trained in a skipped round is still charged.</p>".format(
                    "were" if len(failed) > 1 else "was", _e("; ".join(reasons))
                )
            )
        dropped = [(n, len(s.get("dropped") or [])) for n, s in ok if s.get("dropped")]
        if dropped:
            text = ", ".join(f"round {n}: {k}" for n, k in dropped[:12])
            if len(dropped) > 12:
                text += f" and {len(dropped) - 12} more rounds"
            parts.append(
                f"<p>Clients dropped out during the protocol ({_e(text)}); their masks were "
                "removed with the other clients' shares and the sum covered those that "
                "remained.</p>"
            )
        clipped = sum(int(s.get("quantization_clipped") or 0) for _, s in ok)
        if clipped:
            parts.append(
                f"<p>{clipped} coordinates were clipped to the quantization range over the run "
                "(see the clipping plot).</p>"
            )
        parts.append(
            "<p>Not covered: a server that lies about who dropped out (no active-adversary "
            "consistency check), and a malicious client's own update, which the server cannot "
            "check under masking.</p></div>"
        )
        return "".join(parts)

    def _not_covered(self) -> str:
        run = self.run
        items = [
            "The number of examples each client holds is sent to the server in the clear "
            "(FedAvg weights by it).",
            "The accuracy and loss each client reports from local evaluation (on a held-out "
            "part of its data that is never trained on) are released without noise.",
        ]
        if run.config.get("reproducible"):
            seed = run.config.get("seed")
            items.append(
                f"The noise came from generators seeded from seed = {seed}: a reproducible "
                "simulation. Every ε above then holds only against someone who does not know "
                "the seed — whoever knows it can recompute and subtract the noise. The real "
                "guarantee needs --no-reproducible (the default of every deployment), which "
                "draws the noise from the operating system's randomness."
            )
        elif run.noise_source:
            items.append(f"Noise source: {run.noise_source}.")
        if run.secure_aggregation is not None or any(r.failed for r in run.rounds):
            items.append(
                "The accountant treats dropouts and skipped rounds as independent of the data."
            )
        body = "".join(f"<li>{_e(item)}</li>" for item in items)
        return f"<ul>{body}</ul>"

    def body(self) -> str:
        return self.summary() + self.statement() + self.figures()


def _carried(run: RunData) -> list[float | None]:
    """Client-level ε after each round: a round without a release (skipped) keeps the last ε.

    None everywhere when the run had no client-level DP; 0 before the first release.
    """
    if run.client_level is None:
        return [None] * len(run.rounds)
    values: list[float | None] = []
    last = 0.0
    for record in run.rounds:
        if record.epsilon_client_level is not None:
            last = record.epsilon_client_level
        values.append(last)
    return values


def _per_round(per_round: Any, sampling: Any, clients: Any) -> str:
    if not per_round:
        return f"all ({clients})"
    if sampling == "fixed":
        return f"{per_round} (fixed-size sample each round)"
    return f"{per_round} expected (Poisson sampling)"


def _partition(config: Mapping[str, Any]) -> str:
    partition = config.get("partition", "—")
    if partition == "dirichlet":
        return f"dirichlet (α = {config.get('alpha')})"
    if partition == "column":
        return f"by column {config.get('partition_column')}"
    return str(partition)


def _accountant(name: str) -> str:
    return ACCOUNTANT_NAMES.get(name, f"{name} accountant")


def _optional_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _or_list(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + f" or {words[-1]}"


def run_report_html(run: RunData, title: str) -> str:
    """The complete HTML page of one run."""
    state = "finished" if run.finished else "did not finish"
    subtitle = _e(f"Run {run.path} — {state}; Privet {run.version or '?'}")
    return _page(title, subtitle, _RunSections(run).body())


# -- a sweep -------------------------------------------------------------------------------


def _anchor(name: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _status(run: SweepRun) -> str:
    text = run.status + (f": {run.reason}" if run.reason else "")
    return f'<span class="status-{_e(run.status)}">{_e(text)}</span>'


class _SweepSections:
    """The HTML sections of a sweep's report."""

    def __init__(self, sweep: SweepData) -> None:
        self.sweep = sweep
        self.done = [r for r in sweep.runs if r.status == "done" and r.run is not None]
        setting_keys = [
            k for k in sweep.varied_keys if k not in PRIVACY_KNOBS and k not in SEED_KEYS
        ]
        self.setting_keys = setting_keys
        self.groups: dict[str, int] = {}
        for run in sweep.runs:
            self.groups.setdefault(_hashable(self._setting(run)), len(self.groups))

    def _setting(self, run: SweepRun) -> tuple[tuple[str, Any], ...]:
        return tuple((k, run.values.get(k)) for k in self.setting_keys)

    def overview(self) -> str:
        sweep = self.sweep
        counts: dict[str, int] = {}
        for run in sweep.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        order = ("done", "interrupted", "failed", "unreadable", "pending")
        tally = ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
        parts = [
            "<h2>Sweep</h2>",
            f"<p>{len(sweep.runs)} runs ({_e(tally or 'none')})"
            + (f", engine {_e(sweep.engine)}" if sweep.engine else "")
            + ". Runs that are not done are listed with their status and left out of the "
            "plots.</p>",
        ]
        if sweep.varied_keys:
            varied = {}
            for key in sweep.varied_keys:
                seen: dict[str, Any] = {}
                for run in sweep.runs:
                    seen.setdefault(_hashable(run.values.get(key)), run.values.get(key))
                varied[key] = ", ".join(_show(v) for v in seen.values())
            rows = [[_e(k), _e(v)] for k, v in varied.items()]
            parts.append("<h3>Varied</h3>" + _table(["setting", "values"], rows, set()))
        if sweep.base:
            rows = [[_e(k), _e(_show(v))] for k, v in sweep.base.items()]
            parts.append(
                "<details><summary>Settings shared by every run</summary>"
                + _table(["setting", "value"], rows, set())
                + "</details>"
            )
        return "".join(parts)

    def runs_table(self) -> str:
        sweep = self.sweep
        has_client_level = any(
            r.run is not None and r.run.client_level is not None for r in sweep.runs
        )
        headers = ["run", *[_e(k) for k in sweep.varied_keys], "status", "rounds", "accuracy"]
        headers += ["max ε (example)"] + (["ε (client)"] if has_client_level else [])
        headers += ["wall time"]
        rows = []
        for entry in sweep.runs:
            run = entry.run
            linked = entry.run is not None and entry.status in ("done", "interrupted", "failed")
            name = (
                f'<a href="#{_anchor(entry.name)}">{_e(entry.name)}</a>'
                if linked
                else _e(entry.name)
            )
            row = [name, *[_e(_show(entry.values.get(k, "—"))) for k in sweep.varied_keys]]
            row.append(_status(entry))
            if run is None:
                row += ["—", "—", "—"] + (["—"] if has_client_level else []) + ["—"]
            else:
                last = run.rounds[-1].round if run.rounds else 0
                row.append(_e(f"{last}/{run.planned_rounds or '—'}"))
                acc = run.final_accuracy
                row.append(_e(f"{acc:.4f}" if acc is not None else "—"))
                row.append(_eps(run.epsilon_max, f"run:{entry.name}:example:max"))
                if has_client_level:
                    cl = run.client_level
                    row.append(
                        "—" if cl is None else _eps(cl.epsilon, f"run:{entry.name}:client-level")
                    )
                row.append(_e(_duration(run.wall_time_s)))
            rows.append(row)
        first_number = 1 + len(sweep.varied_keys) + 1
        numeric = set(range(first_number, len(headers)))
        return "<h2>Runs</h2>" + _table(headers, rows, numeric)

    def utility(self) -> str:
        parts = ["<h2>Privacy–utility</h2>"]
        if not self.done:
            parts.append("<p>No run is done yet: there is nothing to plot.</p>")
            return "".join(parts)
        example = [
            SweepPoint(r.name, r.values, r.run.epsilon_max, r.run.final_accuracy)
            for r in self.done
            if r.run is not None and r.run.final_accuracy is not None
        ]
        client = [
            SweepPoint(r.name, r.values, r.run.client_level.epsilon, r.run.final_accuracy)
            for r in self.done
            if r.run is not None
            and r.run.client_level is not None
            and r.run.final_accuracy is not None
        ]
        deltas = {r.run.delta for r in self.done if r.run is not None}
        delta = f", δ = {next(iter(deltas)):g}" if len(deltas) == 1 else ""
        panels = []
        curves = privacy_utility_curves(example, self.sweep.varied_keys)
        panels.append(
            plots.UtilityPanel(
                title="Example level",
                xlabel=f"final max ε over clients{delta}",
                lines=[_line(c) for c in curves],
            )
        )
        client_curves: list[Curve] = []
        if client:
            client_curves = privacy_utility_curves(client, self.sweep.varied_keys)
            panels.append(
                plots.UtilityPanel(
                    title="Client level",
                    xlabel=f"final client-level ε{delta}",
                    lines=[_line(c) for c in client_curves],
                )
            )
        seeds = sorted({p.seeds for c in curves for p in c.points})
        seed_text = (
            f"{seeds[0]} seed{'s' if seeds[0] != 1 else ''}"
            if len(seeds) == 1
            else f"{seeds[0]}–{seeds[-1]} seeds (fewer where a run is not done)"
        )
        knobs = [k for k in self.sweep.varied_keys if k in PRIVACY_KNOBS]
        left_out = (
            len(self.done)
            - len(example)
            + sum(
                1 for p in example if not (math.isfinite(p.epsilon) and math.isfinite(p.accuracy))
            )
        )
        caption = (
            f"Final test accuracy against the final ε of each finished run, one line per "
            f"setting ({len(curves)}: {'; '.join(c.label for c in curves)}). "
            + (
                f"Along a line the privacy knob varies ({', '.join(knobs)}). "
                if knobs
                else "No privacy knob varies in this sweep, so each setting is one point. "
            )
            + f"Each point averages {seed_text}; error bars span the smallest to the largest "
            "run. ε is each run's maximum over its clients, never a mean over clients."
            + (f" {left_out} finished runs had no finite ε or accuracy." if left_out else "")
        )
        parts.append(_figure(plots.privacy_utility(panels), "privacy-utility curve", _e(caption)))
        return "".join(parts)

    def accuracy(self) -> str:
        if not self.done:
            return ""
        labels = {}
        lines = []
        for entry in self.done:
            assert entry.run is not None
            setting = self._setting(entry)
            group = self.groups[_hashable(setting)]
            labels[group] = setting_label(setting)
            initial = entry.run.initial_accuracy
            lines.append(
                plots.RunLine(
                    name=entry.name,
                    group=group,
                    group_label=labels[group],
                    rounds=[0] * (initial is not None) + [r.round for r in entry.run.rounds],
                    accuracy=([] if initial is None else [initial])
                    + [r.accuracy for r in entry.run.rounds],
                )
            )
        caption = (
            "Test accuracy per round of every finished run; one colour per setting (the "
            "varied values other than the privacy knobs and the seed)."
        )
        return "<h2>Accuracy per round</h2>" + _figure(
            plots.accuracy_of_runs(lines), "accuracy per round of every run", _e(caption)
        )

    def details(self) -> str:
        parts = ["<h2>Runs in detail</h2>"]
        shown = [r for r in self.sweep.runs if r.run is not None]
        if not shown:
            parts.append("<p>No run has results yet.</p>")
        for entry in shown:
            assert entry.run is not None
            values = ", ".join(f"{k}={_show(v)}" for k, v in entry.values.items())
            acc = entry.run.final_accuracy
            summary = f"{entry.name} — {values} — {entry.status}" + (
                f", accuracy {acc:.4f}" if acc is not None else ""
            )
            body = _RunSections(entry.run, prefix=f"run:{entry.name}:", level=3).body()
            parts.append(
                f'<details class="run" id="{_anchor(entry.name)}"><summary>{_e(summary)}'
                f"</summary>{body}</details>"
            )
        return "".join(parts)

    def body(self) -> str:
        return (
            self.overview() + self.runs_table() + self.utility() + self.accuracy() + self.details()
        )


def _line(curve: Curve) -> plots.Line:
    return plots.Line(
        label=curve.label,
        x=[p.x for p in curve.points],
        y=[p.y for p in curve.points],
        y_low=[p.y_min for p in curve.points],
        y_high=[p.y_max for p in curve.points],
        x_low=[p.x_min for p in curve.points],
        x_high=[p.x_max for p in curve.points],
    )


def sweep_report_html(sweep: SweepData, title: str) -> str:
    """The complete HTML page of a sweep."""
    subtitle = _e(f"Sweep {sweep.path} — {len(sweep.runs)} runs")
    return _page(title, subtitle, _SweepSections(sweep).body())


# -- entry points --------------------------------------------------------------------------


_RUN, _SWEEP = "run", "sweep"


def _kind(directory: Path) -> str:
    """Whether `directory` is a sweep's or a run's folder; a ReportError if neither."""
    hint = "pass a run's or a sweep's output folder"
    if not directory.exists():
        raise ReportError(f"{directory} does not exist; {hint}")
    if not directory.is_dir():
        raise ReportError(f"{directory} is a file, not a folder; {hint} (the folder holding it)")
    if (directory / SWEEP_FILE).exists():
        return _SWEEP
    if (directory / RESULTS_FILE).exists():
        return _RUN
    raise ReportError(f"{directory} has no {RESULTS_FILE} or {SWEEP_FILE}; {hint}")


def build_report(directory: str | Path, title: str | None = None) -> str:
    """The HTML report of a run folder (results.json) or a sweep folder (sweep.json)."""
    folder = Path(directory)
    kind = _kind(folder)
    name = folder.resolve().name or str(folder)
    if kind == _SWEEP:
        return sweep_report_html(load_sweep(folder), title or f"Privet sweep report: {name}")
    return run_report_html(load_run(folder), title or f"Privet run report: {name}")


def write_report(
    directory: str | Path, output: str | Path | None = None, title: str | None = None
) -> Path:
    """Write the report of `directory` atomically to `output` (default DIR/report.html).

    Returns the path written. The page is built in memory first: on error nothing is written.
    """
    folder = Path(directory)
    target = Path(output) if output is not None else folder / REPORT_FILE
    if target.is_dir():
        raise ReportError(f"--output {target} is a folder; name the HTML file to write")
    text = build_report(folder, title)
    try:
        atomic_write_text(target, text)
    except OSError as error:
        raise ReportError(f"cannot write {target}: {error.strerror or error}") from None
    return target
