"""`privet report`: one self-contained HTML file for a run or a sweep of runs.

The report is read from what a run wrote (results.json; for a sweep, sweep.json and each run's
folder) and from nothing else: it never recomputes a privacy number, it states the ones the run
recorded, with the parameters they came from, so that anyone can check them (the test suite
does, against Opacus' and Google's analysis code). Plots are PNGs embedded as base64 data URIs;
there is no JavaScript, no style sheet or font to fetch, no link outside the file, so it can be
mailed, archived or opened offline.

The file is assembled in memory and written atomically: a bad input raises `ReportError` (one
line naming the file, the problem and what to do) and leaves any earlier report untouched.

This module is the entry point (`build_report`, `write_report`: which kind of folder, which
page, where it goes). The work is in one module per job, each importing only those before it:
`report_data` reads runs and sweeps, `report_curves` groups a sweep's runs into privacy–utility
curves, `report_html` holds the HTML pieces and the page, `run_report` writes one run's
sections and `sweep_report` a sweep's; `plots` draws the figures. The names other code uses are
re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from privet.privacy import atomic_write_text
from privet.server.run_output import (
    REPORT_FILE,
    RESULTS_FILE,
    SWEEP_FILE,
    ClientData,
    ClientLevelData,
    RoundData,
)
from privet.simulations.report_curves import (
    PRIVACY_KNOBS,
    SEED_KEYS,
    Curve,
    CurvePoint,
    SweepPoint,
    privacy_utility_curves,
)
from privet.simulations.report_data import (
    ReportError,
    RunData,
    SweepData,
    SweepRun,
    load_run,
    load_sweep,
)
from privet.simulations.report_html import format_epsilon
from privet.simulations.run_report import run_report_html
from privet.simulations.sweep_report import sweep_report_html

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
