"""Reading what the report is made from: one run's results.json, or a sweep's sweep.json.

This is the report's only contact with the file system on the way in. It turns a run folder
into a `RunData` and a sweep folder into a `SweepData` (every run with its status: done,
interrupted, failed, pending or unreadable), checking them as it goes, so that the modules that
build HTML can take every field as valid. results.json is read through `server.run_output`, its
one reader; every problem becomes a `ReportError` whose message is one line naming the file, the
problem and what to do. Nothing here formats HTML or computes a privacy number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privet.server.run_output import (
    CHECKPOINT_FILE,
    ERROR_FILE,
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

__all__ = [
    "SAFE_NAME",
    "ReportError",
    "RunData",
    "SweepData",
    "SweepRun",
    "load_run",
    "load_sweep",
]

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a sweep run's folder name


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
    failure_reason: str | None
    warnings: tuple[str, ...]
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
    audit: dict[str, Any] | None = None
    """DIR/audit.json when the run was made by `privet audit` (`simulations.audit`), else None."""

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
        failure_reason=results.failure_reason,
        warnings=results.warnings,
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
        audit=_audit_of(Path(directory)),
    )


AUDIT_NUMBERS = ("epsilon_lower_bound", "confidence", "epsilon_accounted", "canaries")


def _audit_of(directory: Path) -> dict[str, Any] | None:
    """The run's audit.json, checked for the numbers the report prints (None: not audited)."""
    from privet.simulations.audit import AUDIT_FILE, read_audit

    try:
        audit = read_audit(directory)
    except (OSError, ValueError) as error:
        raise ReportError(
            f"{directory / AUDIT_FILE} is unreadable ({error}); rerun the audit"
        ) from None
    if audit is None or audit.get("finished") is False:
        return audit
    for key in AUDIT_NUMBERS:
        value = audit.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ReportError(
                f"{directory / AUDIT_FILE} lacks a number for {key}; rerun `privet audit`"
            )
    return audit


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
