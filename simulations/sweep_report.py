"""A sweep's report: its overview, the runs table, the privacy–utility curves, every run.

`_SweepSections` writes the sections of a sweep from a `SweepData`: what varied, each run's
status and results, the privacy–utility plot (curves from `report_curves`), accuracy per
round of every finished run, and each run's own report (`run_report.RunSections`) in a
collapsible section; `sweep_report_html` puts them on a page. Runs that are not done are listed
with their status and left out of the plots.
"""

from __future__ import annotations

import math
import re
from typing import Any

from privet.simulations import plots
from privet.simulations.report_curves import (
    PRIVACY_KNOBS,
    SEED_KEYS,
    Curve,
    SweepPoint,
    privacy_utility_curves,
    setting_label,
    show_value,
    value_key,
)
from privet.simulations.report_data import SweepData, SweepRun
from privet.simulations.report_html import duration, eps_span, esc, figure, page, table
from privet.simulations.run_report import RunSections

__all__ = ["sweep_report_html"]


def _anchor(name: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _status(run: SweepRun) -> str:
    text = run.status + (f": {run.reason}" if run.reason else "")
    return f'<span class="status-{esc(run.status)}">{esc(text)}</span>'


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
            self.groups.setdefault(value_key(self._setting(run)), len(self.groups))

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
            f"<p>{len(sweep.runs)} runs ({esc(tally or 'none')})"
            + (f", engine {esc(sweep.engine)}" if sweep.engine else "")
            + ". Runs that are not done are listed with their status and left out of the "
            "plots.</p>",
        ]
        if sweep.varied_keys:
            varied = {}
            for key in sweep.varied_keys:
                seen: dict[str, Any] = {}
                for run in sweep.runs:
                    seen.setdefault(value_key(run.values.get(key)), run.values.get(key))
                varied[key] = ", ".join(show_value(v) for v in seen.values())
            rows = [[esc(k), esc(v)] for k, v in varied.items()]
            parts.append("<h3>Varied</h3>" + table(["setting", "values"], rows, set()))
        if sweep.base:
            rows = [[esc(k), esc(show_value(v))] for k, v in sweep.base.items()]
            parts.append(
                "<details><summary>Settings shared by every run</summary>"
                + table(["setting", "value"], rows, set())
                + "</details>"
            )
        return "".join(parts)

    def runs_table(self) -> str:
        sweep = self.sweep
        has_client_level = any(
            r.run is not None and r.run.client_level is not None for r in sweep.runs
        )
        headers = ["run", *[esc(k) for k in sweep.varied_keys], "status", "rounds", "accuracy"]
        headers += ["max ε (example)"] + (["ε (client)"] if has_client_level else [])
        headers += ["wall time"]
        rows = []
        for entry in sweep.runs:
            run = entry.run
            linked = entry.run is not None and entry.status in ("done", "interrupted", "failed")
            name = (
                f'<a href="#{_anchor(entry.name)}">{esc(entry.name)}</a>'
                if linked
                else esc(entry.name)
            )
            row = [name, *[esc(show_value(entry.values.get(k, "—"))) for k in sweep.varied_keys]]
            row.append(_status(entry))
            if run is None:
                row += ["—", "—", "—"] + (["—"] if has_client_level else []) + ["—"]
            else:
                last = run.rounds[-1].round if run.rounds else 0
                row.append(esc(f"{last}/{run.planned_rounds or '—'}"))
                acc = run.final_accuracy
                row.append(esc(f"{acc:.4f}" if acc is not None else "—"))
                row.append(eps_span(run.epsilon_max, f"run:{entry.name}:example:max"))
                if has_client_level:
                    cl = run.client_level
                    row.append(
                        "—"
                        if cl is None
                        else eps_span(cl.epsilon, f"run:{entry.name}:client-level")
                    )
                row.append(esc(duration(run.wall_time_s)))
            rows.append(row)
        first_number = 1 + len(sweep.varied_keys) + 1
        numeric = set(range(first_number, len(headers)))
        return "<h2>Runs</h2>" + table(headers, rows, numeric)

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
        parts.append(figure(plots.privacy_utility(panels), "privacy-utility curve", esc(caption)))
        return "".join(parts)

    def accuracy(self) -> str:
        if not self.done:
            return ""
        labels = {}
        lines = []
        for entry in self.done:
            assert entry.run is not None
            setting = self._setting(entry)
            group = self.groups[value_key(setting)]
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
        return "<h2>Accuracy per round</h2>" + figure(
            plots.accuracy_of_runs(lines), "accuracy per round of every run", esc(caption)
        )

    def details(self) -> str:
        parts = ["<h2>Runs in detail</h2>"]
        shown = [r for r in self.sweep.runs if r.run is not None]
        if not shown:
            parts.append("<p>No run has results yet.</p>")
        for entry in shown:
            assert entry.run is not None
            values = ", ".join(f"{k}={show_value(v)}" for k, v in entry.values.items())
            acc = entry.run.final_accuracy
            summary = f"{entry.name} — {values} — {entry.status}" + (
                f", accuracy {acc:.4f}" if acc is not None else ""
            )
            body = RunSections(entry.run, prefix=f"run:{entry.name}:", level=3).body()
            parts.append(
                f'<details class="run" id="{_anchor(entry.name)}"><summary>{esc(summary)}'
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
    subtitle = esc(f"Sweep {sweep.path} — {len(sweep.runs)} runs")
    return page(title, subtitle, _SweepSections(sweep).body())
