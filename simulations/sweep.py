"""Sweeps: a grid of simulations over configuration keys, resumable, with one table of all runs.

A sweep is a base configuration plus *variations*: each names one configuration key and its
values (``target-epsilon = 1, 3, 8``), or several linked keys whose values go together
(``partition/alpha = iid/0.5, dirichlet/0.1``). The runs are the Cartesian product of the
variations, in the order given. On disk::

    DIR/sweep.json          what the sweep is: base, variations, the runs and their values
    DIR/sweep.csv           one row per run (rewritten after every run)
    DIR/runs/run-000/       a normal run folder: results.json, ledgers/, model.pt, checkpoint

A run's status is read from its folder, never stored twice: finished results → done; a
checkpoint → interrupted (it continues from its last round, ledgers and all); ``error.txt`` →
failed (retried when the sweep is run again); nothing → pending. Running the same sweep again
into the same folder therefore continues it after any interruption.

Nothing in a sweep is deleted. A run that is started again from scratch — it failed, or it was
cut short before its first checkpoint — first has the earlier attempt's files, ledgers and all,
moved into ``runs/<run>/replaced/<time>/``; sweep.csv lists them in its ``earlier_attempts``
column. Paths inside a sweep are relative to its folder (sweep.json holds none, and each run's
folder is ``DIR/runs/<run>`` for the DIR it is run in), so a sweep folder that was moved or
copied continues where it now is.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privet.privacy import atomic_write_text
from privet.privacy.storage import InUseError
from privet.server.checkpoint import set_aside_run
from privet.server.results import RoundRecord
from privet.server.run_output import (
    CHECKPOINT_FILE,
    ERROR_FILE,
    REPLACED_DIR,
    RESULTS_FILE,
    SWEEP_FILE,
    SWEEP_FORMAT,
    SWEEP_RUNS_DIR,
    SWEEP_TABLE_FILE,
    SWEEP_VERSION,
    ResultsError,
    read_results,
)
from privet.task.config import ConfigError, RunConfig, merge_settings

logger = logging.getLogger(__name__)

TABLE_FILE = SWEEP_TABLE_FILE
RUNS_DIR = SWEEP_RUNS_DIR
FORMAT = SWEEP_FORMAT
VERSION = SWEEP_VERSION
LINK = "/"
# Keys a sweep sets for each run itself.
RESERVED_KEYS = ("output", "resume")
STATUSES = ("done", "interrupted", "failed", "pending")


class SweepError(ValueError):
    """A sweep that cannot be run as asked; the message names the problem and the fix."""


# -- what a sweep is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Variation:
    """One axis of the grid: one key (or several linked keys) and the values it takes."""

    keys: tuple[str, ...]
    options: tuple[tuple[Any, ...], ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise SweepError(f"--vary {self.label} has no values; give at least one")
        for key in self.keys:
            if key in RESERVED_KEYS:
                raise SweepError(f"--vary {key}: the sweep sets {key} for each run itself")
        for option in self.options:
            if len(option) != len(self.keys):
                raise SweepError(
                    f"--vary {self.label}: each value needs {len(self.keys)} parts joined by "
                    f"'{LINK}', got {LINK.join(str(part) for part in option)!r}"
                )
        if len(set(self.options)) != len(self.options):
            raise SweepError(f"--vary {self.label} lists a value twice")

    @property
    def label(self) -> str:
        """The keys as written on the command line, e.g. ``partition/alpha``."""
        return LINK.join(self.keys)

    @classmethod
    def build(cls, label: str, raw_options: Sequence[Any]) -> Variation:
        """A variation from its label and raw values, each converted to its key's type."""
        keys = tuple(part.strip().replace("_", "-") for part in str(label).split(LINK))
        if any(not key for key in keys):
            raise SweepError(f"--vary {label!r}: empty key name")
        options = []
        for raw in raw_options:
            parts: Sequence[Any]
            if len(keys) == 1:
                parts = [raw]
            elif isinstance(raw, str):
                parts = [part.strip() for part in raw.split(LINK)]
            elif isinstance(raw, list | tuple):
                parts = list(raw)
            else:
                parts = [raw]
            if len(parts) != len(keys):
                raise SweepError(
                    f"--vary {label}: each value needs {len(keys)} parts joined by '{LINK}', "
                    f"got {raw!r}"
                )
            try:
                options.append(
                    tuple(
                        RunConfig.coerce_value(key, part)
                        for key, part in zip(keys, parts, strict=True)
                    )
                )
            except ConfigError as error:
                raise SweepError(f"--vary {label}: {error}") from None
        return cls(keys, tuple(options))

    @classmethod
    def parse(cls, text: str) -> Variation:
        """``key=v1,v2`` or ``key1/key2=a1/a2,b1/b2`` (the command line's --vary)."""
        label, sep, values = text.partition("=")
        if not sep or not label.strip() or not values.strip():
            raise SweepError(
                f"--vary {text!r} is not KEY=VALUE,VALUE,...; e.g. --vary target-epsilon=1,3,8"
            )
        return cls.build(label.strip(), [part.strip() for part in values.split(",")])

    def to_json(self) -> list[Any]:
        """The values as sweep.json stores them (a list per option for linked keys)."""
        if len(self.keys) == 1:
            return [option[0] for option in self.options]
        return [list(option) for option in self.options]


@dataclass(frozen=True)
class SweepRun:
    """One run of the grid: its folder name and the values of the varied keys."""

    name: str
    values: dict[str, Any]


@dataclass(frozen=True)
class SweepSpec:
    """The base settings every run shares, and the variations that make the grid."""

    base: dict[str, Any]
    variations: tuple[Variation, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for variation in self.variations:
            for key in variation.keys:
                if key in seen:
                    raise SweepError(f"--vary names {key} twice; list all its values once")
                seen.add(key)
        for key in RESERVED_KEYS:
            if key in self.base and key != "output":
                raise SweepError(f"a sweep cannot be given {key}; it sets it for each run")

    @property
    def varied_keys(self) -> list[str]:
        """Every varied key, in the order of the variations."""
        return [key for variation in self.variations for key in variation.keys]

    def runs(self) -> list[SweepRun]:
        """The Cartesian product of the variations, first variation slowest."""
        combos = list(itertools.product(*(variation.options for variation in self.variations)))
        width = max(3, len(str(len(combos) - 1)))
        runs = []
        for index, combo in enumerate(combos):
            values: dict[str, Any] = {}
            for variation, option in zip(self.variations, combo, strict=True):
                values.update(zip(variation.keys, option, strict=True))
            runs.append(SweepRun(f"run-{index:0{width}d}", values))
        return runs

    def settings_of(self, run: SweepRun, output: Path) -> dict[str, Any]:
        """The full settings of one run: base, then its values, then its own output folder."""
        settings = merge_settings(self.base, run.values)
        settings.setdefault("reproducible", True)  # a simulation is reproducible by default
        settings["output"] = str(output / RUNS_DIR / run.name)
        return settings

    def config_of(self, run: SweepRun, output: Path) -> RunConfig:
        """The validated configuration of one run (a one-line SweepError names the run)."""
        try:
            return RunConfig.from_mapping(self.settings_of(run, output))
        except ConfigError as error:
            raise SweepError(f"{run.name} ({describe(run.values)}): {error}") from None

    def to_json(self) -> dict[str, Any]:
        """What sweep.json holds."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "base": {key: value for key, value in self.base.items() if key != "output"},
            "vary": {variation.label: variation.to_json() for variation in self.variations},
            "runs": [{"name": run.name, "values": run.values} for run in self.runs()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SweepSpec:
        """Inverse of `to_json` (the runs are recomputed from the variations)."""
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise SweepError("not a Privet sweep file (format/version)")
        variations = tuple(Variation.build(label, values) for label, values in data["vary"].items())
        return cls(dict(data["base"]), variations)


def describe(values: Mapping[str, Any]) -> str:
    """``target-epsilon=1, seed=0``: a run's varied values in one short phrase."""
    return ", ".join(f"{key}={_text(value)}" for key, value in values.items())


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- the sweep on disk ---------------------------------------------------------------------------


def load_spec(output: Path) -> SweepSpec:
    """The sweep saved in `output` (one-line SweepError if the file is damaged)."""
    path = output / SWEEP_FILE
    try:
        return SweepSpec.from_json(json.loads(path.read_text()))
    except SweepError as error:
        raise SweepError(f"{path}: {error}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SweepError(f"{path} is not a readable sweep file ({error})") from None


def check_output(spec: SweepSpec, output: Path) -> list[RunConfig]:
    """Every run's configuration, checked, and whether `output` can hold this sweep.

    Writes nothing. A folder holding another sweep, a single run, or anything else is refused.
    """
    configs = [spec.config_of(run, output) for run in spec.runs()]
    if output.exists() and not output.is_dir():
        raise SweepError(f"{output} is a file, not a folder; choose another --output")
    if (output / RESULTS_FILE).exists() or (output / CHECKPOINT_FILE).exists():
        raise SweepError(f"{output} holds a single run, not a sweep; choose another --output")
    if (output / SWEEP_FILE).exists():
        saved = load_spec(output)
        if saved.to_json() != spec.to_json():
            raise SweepError(
                f"{output} holds a different sweep; choose another --output, or run the same "
                f"settings again (or `privet resume {output}`) to continue it"
            )
    elif output.is_dir() and any(output.iterdir()):
        raise SweepError(f"{output} is not empty and holds no sweep; choose another --output")
    return configs


def prepare_sweep(spec: SweepSpec, output: Path) -> list[RunConfig]:
    """`check_output`, then save sweep.json (once: a continued sweep keeps its file)."""
    configs = check_output(spec, output)
    path = output / SWEEP_FILE
    if not path.exists():
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(spec.to_json(), indent=1, allow_nan=False))
    return configs


def run_status(run_dir: Path) -> str:
    """done, interrupted, failed or pending — from the run's own files."""
    if (run_dir / RESULTS_FILE).exists():
        try:
            if read_results(run_dir).finished:
                return "done"
        except ResultsError:
            pass
    if (run_dir / ERROR_FILE).exists():
        return "failed"
    if (run_dir / CHECKPOINT_FILE).exists():
        return "interrupted"
    return "pending"


# -- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundProgress:
    """A round of some run has finished (what a progress display needs)."""

    run: str
    round: int
    rounds: int
    accuracy: float
    epsilon_max: float


@dataclass(frozen=True)
class RunOutcome:
    """How one run of the sweep ended."""

    run: str
    status: str
    error: str | None = None
    set_aside: str | None = None
    """Where an earlier attempt's folder was moved before this one started (relative to the
    sweep folder), if it was."""


ProgressCallback = Callable[[RoundProgress], None]
OutcomeCallback = Callable[[RunOutcome], None]


def execute_run(
    settings: Mapping[str, Any],
    name: str,
    engine: str,
    on_round: ProgressCallback | None = None,
) -> RunOutcome:
    """Run (or continue) one run of a sweep; a failure is recorded in its error.txt, not raised.

    An interrupted run continues from its checkpoint with its ledgers. A run that failed, or
    that was cut short before its first checkpoint, starts again in the same folder once the
    earlier attempt's files, ledgers and all, are moved into ``replaced/<time>/``
    (`server.checkpoint.set_aside_run`): nothing is deleted. A run folder that another process
    is writing (its lock is held) is left alone: that run fails here without touching it.
    """
    from privet.simulations.engines import run_simulation_with

    run_dir = Path(str(settings["output"]))
    status = run_status(run_dir)
    if status == "done":
        return RunOutcome(name, "done")
    config = RunConfig.from_mapping({**settings, "resume": status == "interrupted"})
    rounds = config.rounds
    set_aside = None

    def forward(record: RoundRecord) -> None:
        if on_round is not None:
            on_round(RoundProgress(name, record.round, rounds, record.accuracy, record.epsilon_max))

    try:
        if status != "interrupted":
            moved = set_aside_run(run_dir)
            if moved is not None:
                set_aside = f"{RUNS_DIR}/{name}/{REPLACED_DIR}/{moved.name}"
        results = run_simulation_with(engine, config, forward)
    except KeyboardInterrupt:
        raise
    except InUseError as error:  # another process writes this run: its folder is not ours
        reason = _one_line(error)
        logger.warning("%s not run: %s", name, reason)
        return RunOutcome(name, "failed", reason, set_aside)
    except Exception as error:  # noqa: BLE001 (one run's failure must not stop the sweep)
        return _failed(run_dir, name, _one_line(error), set_aside)
    if not results.finished:  # it ran to its end and failed (e.g. nothing trained)
        reason = (results.failure_reason or "the run did not finish").replace("\n", " ")
        return _failed(run_dir, name, reason, set_aside)
    return RunOutcome(name, "done", None, set_aside)


def _failed(run_dir: Path, name: str, reason: str, set_aside: str | None) -> RunOutcome:
    """Record a failure in the run's error.txt (the sweep retries it when run again)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / ERROR_FILE, reason + "\n")
    logger.warning("%s failed: %s", name, reason)
    return RunOutcome(name, "failed", reason, set_aside)


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".replace("\n", " ")


def earlier_attempts(run_dir: Path) -> list[str]:
    """A run's earlier attempts, set aside in its ``replaced/`` folder, oldest first."""
    try:
        return sorted(entry.name for entry in (run_dir / REPLACED_DIR).iterdir() if entry.is_dir())
    except OSError:
        return []


def run_sweep(
    spec: SweepSpec,
    output: Path,
    engine: str,
    jobs: int = 1,
    on_round: ProgressCallback | None = None,
    on_outcome: OutcomeCallback | None = None,
) -> list[RunOutcome]:
    """Run every run of the sweep that is not done yet, `jobs` at a time; rewrite sweep.csv.

    Runs are independent and each is deterministic for its seed, so the results do not depend
    on `jobs`. With more than one job each run goes to its own worker process.
    """
    prepare_sweep(spec, output)
    todo = [run for run in spec.runs() if run_status(output / RUNS_DIR / run.name) != "done"]
    outcomes: list[RunOutcome] = []

    def finished(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        write_table(spec, output)
        if on_outcome is not None:
            on_outcome(outcome)

    write_table(spec, output)
    if jobs <= 1 or len(todo) <= 1:
        for run in todo:
            finished(execute_run(spec.settings_of(run, output), run.name, engine, on_round))
        return outcomes
    from privet.simulations.sweep_workers import run_in_workers

    run_in_workers(
        [(spec.settings_of(run, output), run.name) for run in todo],
        engine,
        jobs,
        on_round,
        finished,
    )
    return outcomes


# -- the table ----------------------------------------------------------------------------------

TABLE_COLUMNS = (
    "final_accuracy",
    "best_accuracy",
    "final_loss",
    "epsilon_max",
    "delta",
    "epsilon_client_level",
    "noise_multiplier_min",
    "noise_multiplier_max",
    "client_noise_multiplier",
    "rounds_completed",
    "rounds_planned",
    "clients",
    "clients_per_round",
    "client_updates",
    "declined",
    "dropped",
    "secure_rounds_failed",
    "stop_reason",
    "wall_time_s",
    "engine",
    "results",
    "error",
    "earlier_attempts",
)


def table_row(output: Path, run: SweepRun) -> dict[str, Any]:
    """One run's row of sweep.csv, from its results.json (empty cells when it has none)."""
    run_dir = output / RUNS_DIR / run.name
    row: dict[str, Any] = {"run": run.name, "status": run_status(run_dir), **run.values}
    error = run_dir / ERROR_FILE
    if error.exists():
        row["error"] = error.read_text().strip()
    attempts = earlier_attempts(run_dir)
    if attempts:
        row["earlier_attempts"] = "; ".join(
            f"{RUNS_DIR}/{run.name}/{REPLACED_DIR}/{name}" for name in attempts
        )
    with contextlib.suppress(ResultsError):  # none yet, or unreadable: the status says which
        row.update(_results_cells(run_dir, run.name))
    return row


def _results_cells(run_dir: Path, name: str) -> dict[str, Any]:
    """The result columns of a run's row; ResultsError when its results.json is missing or bad."""
    results = read_results(run_dir)
    rounds = results.rounds
    config = results.config
    accuracies = [r.accuracy for r in rounds]
    sigmas = [c.noise_multiplier for c in results.clients]
    client_level = results.client_level
    secure = results.secure_aggregation or {}
    return {
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "final_loss": rounds[-1].loss if rounds else None,
        "epsilon_max": results.privacy.epsilon_max,
        "delta": config.get("delta"),
        "epsilon_client_level": None if client_level is None else client_level.epsilon,
        "noise_multiplier_min": min(sigmas) if sigmas else None,
        "noise_multiplier_max": max(sigmas) if sigmas else None,
        "client_noise_multiplier": None if client_level is None else client_level.noise_multiplier,
        "rounds_completed": len(rounds),
        "rounds_planned": config.get("rounds"),
        "clients": config.get("clients"),
        "clients_per_round": config.get("clients_per_round"),
        "client_updates": sum(r.clients_trained for r in rounds),
        "declined": len(results.declined),
        "dropped": sum(r.failed for r in rounds),
        "secure_rounds_failed": len(secure.get("rounds_failed") or []),
        "stop_reason": results.stop_reason,
        "wall_time_s": results.wall_time_s,
        "engine": results.engine,
        "results": str(Path(RUNS_DIR) / name / RESULTS_FILE),
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    return str(value)


def write_table(spec: SweepSpec, output: Path) -> Path:
    """Rewrite sweep.csv (atomically) from every run's current files."""
    columns = ["run", "status", *spec.varied_keys, *TABLE_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for run in spec.runs():
        row = table_row(output, run)
        writer.writerow({key: _cell(row.get(key)) for key in columns})
    path = output / TABLE_FILE
    atomic_write_text(path, buffer.getvalue())
    return path


@dataclass
class SweepSummary:
    """Counts of run statuses, for the end of a sweep."""

    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: SweepSpec, output: Path) -> SweepSummary:
        """Count the runs of `spec` in `output` by status."""
        counts = dict.fromkeys(STATUSES, 0)
        for run in spec.runs():
            counts[run_status(output / RUNS_DIR / run.name)] += 1
        return cls(counts)

    @property
    def complete(self) -> bool:
        """Whether every run is done."""
        return all(count == 0 for status, count in self.counts.items() if status != "done")


def rows(spec: SweepSpec, output: Path) -> Iterable[dict[str, Any]]:
    """Every run's table row, in run order."""
    return (table_row(output, run) for run in spec.runs())
