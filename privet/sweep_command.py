"""`privet sweep`: a grid of simulations from one command, with progress, resumable.

Every `privet simulate` setting can be given as a flag (or in a --config TOML file) and is shared
by all runs; `--vary KEY=V1,V2,...` (repeatable; linked keys as ``k1/k2=a1/a2,b1/b2``) or a
``[vary]`` table in the TOML file makes the grid. Running the same command again, or
`privet resume DIR`, continues an interrupted sweep.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from privet.arguments import output_folder_problem, positive_int
from privet.config_sources import read_config_tables
from privet.server.run_output import RESULTS_FILE
from privet.simulations.sweep import (
    RUNS_DIR,
    TABLE_FILE,
    RoundProgress,
    RunOutcome,
    SweepError,
    SweepSpec,
    SweepSummary,
    Variation,
    check_output,
    describe,
    load_spec,
    rows,
    run_status,
    run_sweep,
)
from privet.task.config import (
    CLIENT_NOISE_KEYS,
    NOISE_KEYS,
    RunConfig,
    ignored_settings,
    merge_settings,
)

DEFAULT_ENGINE = "in-process"
MAX_DEFAULT_JOBS = 4  # each in-process run holds its data and model: ~1 GB at most for MNIST
EXIT_INCOMPLETE = 1


def add_sweep_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `sweep` subcommand: every simulate setting, plus --vary, --jobs and --output."""
    from privet.cli import add_engine_argument, add_settings_arguments

    parser = commands.add_parser(
        "sweep",
        help="run a grid of simulations (e.g. over target ε, partitions and seeds)",
        description=(
            "Run every combination of the --vary values as its own private simulation, "
            f"sharing all other settings. Results: OUTPUT/{TABLE_FILE} (one row per run) and "
            f"OUTPUT/{RUNS_DIR}/<run>/{RESULTS_FILE}. Run the same command again, or "
            "`privet resume OUTPUT`, to continue an interrupted sweep. Example: privet sweep "
            "--vary target-epsilon=1,3,8 --vary partition=iid,dirichlet --vary seed=0,1"
        ),
    )
    run = add_settings_arguments(parser)
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--vary",
        action="append",
        metavar="KEY=V1,V2,...",
        help="a setting and its values (repeatable); link keys whose values go together with "
        "'/': --vary partition/alpha=iid/0.5,dirichlet/0.1",
    )
    sweep.add_argument("--output", help="the sweep's folder (default: privet-output/sweep-<time>)")
    add_jobs_argument(sweep)
    add_engine_argument(run, default_text=DEFAULT_ENGINE)
    sweep.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def add_jobs_argument(group: argparse._ArgumentGroup) -> None:
    """--jobs: runs at once (each in its own worker process)."""
    group.add_argument(
        "--jobs",
        type=positive_int,
        help="runs at once, each in its own process (default: one per CPU core, at most "
        f"{MAX_DEFAULT_JOBS}, with the in-process engine; 1 with flower)",
    )


def default_jobs(engine: str) -> int:
    """One run per core with the in-process engine; Ray already uses every core for one run."""
    if engine != "in-process":
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_JOBS))


def _default_output() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("privet-output") / f"sweep-{stamp}"
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return candidate


def spec_from_args(args: argparse.Namespace) -> tuple[SweepSpec, Path]:
    """The sweep the flags and --config file describe, and its folder."""
    from privet.cli import SIMULATE_KEYS, given_keys

    file_settings: dict[str, Any] = {}
    file_vary: dict[str, Any] = {}
    if args.config:
        file_settings, tables = read_config_tables(args.config, ("vary",))
        file_vary = tables.get("vary", {})
    flags = {key: getattr(args, key, None) for key in SIMULATE_KEYS}
    base = merge_settings(file_settings, flags)
    output = Path(str(base.pop("output", None) or _default_output()))
    problem = output_folder_problem(output)
    if problem is not None:
        raise SweepError(f"--output {output} {problem}; choose another --output")
    variations: dict[str, Variation] = {}
    for label, values in file_vary.items():
        if not isinstance(values, list):
            raise SweepError(f"config file {args.config}: [vary] {label} must be a list of values")
        variation = Variation.build(label, values)
        variations[variation.label] = variation
    from_flags: set[str] = set()
    for text in args.vary or []:
        variation = Variation.parse(text)
        if variation.label in from_flags:
            raise SweepError(
                f"--vary {variation.label} is given twice; list all its values in one --vary "
                f"{variation.label}=V1,V2,..."
            )
        from_flags.add(variation.label)
        variations[variation.label] = variation  # a flag replaces the file's list for that key
    if not variations:
        raise SweepError(
            "nothing to sweep: give at least one --vary KEY=V1,V2,... (or a [vary] table in "
            "the --config file)"
        )
    flag_keys = {key.replace("_", "-") for key, value in flags.items() if value is not None}
    _settle_fixed_and_varied(base, variations, from_flags, flag_keys, args.config)
    spec = SweepSpec(base, tuple(variations.values()))
    _check_no_setting_ignored_by_every_run(spec, output, given_keys(base, {}))
    return spec, output


def _linked_keys(key: str) -> tuple[str, ...]:
    """A key and the keys that set the same thing (a noise multiplier and its target ε)."""
    for pair in (NOISE_KEYS, CLIENT_NOISE_KEYS):
        if key in pair:
            return pair
    return (key,)


def _settle_fixed_and_varied(
    base: dict[str, Any],
    variations: dict[str, Variation],
    from_flags: set[str],
    flag_keys: set[str],
    config_file: str | None,
) -> None:
    """Refuse a setting that is both fixed and varied, unless a flag varies a file's setting.

    `--noise-multiplier 1 --vary target-epsilon=1,3` used to run the target ε while sweep.json
    still recorded σ = 1. A --vary flag over a --config file's fixed value follows "flags win
    over the file": that value leaves the base settings, so sweep.json records what ran.
    """
    for variation in variations.values():
        for key in variation.keys:
            for fixed in _linked_keys(key):
                if fixed not in base:
                    continue
                if fixed in flag_keys or variation.label not in from_flags:
                    where = f"--{fixed}" if fixed in flag_keys else f"{fixed} in {config_file}"
                    what = "the same noise" if fixed != key else "it"
                    raise SweepError(
                        f"{where} is fixed while --vary {variation.label} varies {what}; "
                        "give one or the other"
                    )
                del base[fixed]  # the flag's variation replaces the file's value


def _check_no_setting_ignored_by_every_run(spec: SweepSpec, output: Path, given: set[str]) -> None:
    """A setting given or varied that no run of the grid would use is an error, as in simulate."""
    varied = set(spec.varied_keys)
    candidates = given | varied
    ignored_everywhere: dict[str, tuple[str, str]] | None = None
    for run in spec.runs():
        ignored = ignored_settings(spec.config_of(run, output), candidates)
        if ignored_everywhere is None:
            ignored_everywhere = ignored
        else:
            ignored_everywhere = {k: v for k, v in ignored_everywhere.items() if k in ignored}
        if not ignored_everywhere:
            return
    if ignored_everywhere:
        key, (needs, fix) = next(iter(ignored_everywhere.items()))
        how = f"--vary {key}" if key in varied else f"--{key}"
        raise SweepError(
            f"{how} has no effect in any run: it needs {needs}; {fix} (or vary it), or drop {how}"
        )


def check_plans(spec: SweepSpec, output: Path) -> None:
    """Plan every distinct run before any starts, so a bad combination fails in seconds."""
    from privet.simulations.plan import plan_simulation

    checked: set[tuple[Any, ...]] = set()
    for run in spec.runs():
        config = spec.config_of(run, output)
        key = tuple(
            (name, value)
            for name, value in sorted(config.to_json_dict().items())
            if name != "output"
        )
        if key in checked:
            continue
        try:
            plan_simulation(config)
        except ValueError as error:
            raise SweepError(f"{run.name} ({describe(run.values)}): {error}") from None
        checked.add(key)


class SweepProgress:
    """A bar over runs, and one line per run in progress showing its round, accuracy and ε."""

    def __init__(self, console: Console, total: int, done: int) -> None:
        self.bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.runs = self.bar.add_task("runs", total=total, completed=done)
        self.active: dict[str, TaskID] = {}

    def on_round(self, progress: RoundProgress) -> None:
        """Advance the run's own line."""
        task = self.active.get(progress.run)
        if task is None:
            task = self.bar.add_task(progress.run, total=progress.rounds)
            self.active[progress.run] = task
        epsilon = "∞" if progress.epsilon_max == float("inf") else f"{progress.epsilon_max:.3f}"
        self.bar.update(
            task,
            completed=progress.round,
            description=f"  {progress.run}: round {progress.round}, accuracy "
            f"{progress.accuracy:.3f}, max ε {epsilon}",
        )

    def on_outcome(self, outcome: RunOutcome) -> None:
        """Close the run's line; count it if it is done."""
        task = self.active.pop(outcome.run, None)
        if task is not None:
            self.bar.remove_task(task)
        if outcome.status == "done":
            self.bar.advance(self.runs)
        else:
            self.bar.console.print(f"[red]{outcome.run} failed:[/red] {outcome.error}")


def execute_sweep(
    spec: SweepSpec, output: Path, engine: str, jobs: int | None, console: Console
) -> int:
    """Check, run and summarise a sweep; returns the exit status (0: every run is done)."""
    if engine == "flower" and jobs is not None and jobs > 1:
        raise SweepError(
            "--jobs above 1 needs --engine in-process: each Flower simulation already uses "
            "every core through Ray"
        )
    check_output(spec, output)  # writes nothing: a bad sweep leaves no trace
    check_plans(spec, output)
    runs = spec.runs()
    done = sum(run_status(output / RUNS_DIR / run.name) == "done" for run in runs)
    workers = jobs or default_jobs(engine)
    console.print(
        f"[bold]Privet sweep[/bold]: {len(runs)} runs over "
        f"{', '.join(v.label for v in spec.variations)}; {done} already done; engine {engine}, "
        f"{min(workers, max(1, len(runs) - done))} at a time → {output}"
    )
    progress = SweepProgress(console, len(runs), done)
    try:
        with progress.bar:
            run_sweep(spec, output, engine, workers, progress.on_round, progress.on_outcome)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]Interrupted.[/yellow] Continue with `privet resume {output}` (finished "
            "rounds are kept)."
        )
        raise
    show_table(spec, output, console)
    summary = SweepSummary.of(spec, output)
    return 0 if summary.complete else EXIT_INCOMPLETE


def show_table(spec: SweepSpec, output: Path, console: Console) -> None:
    """The sweep's table on the terminal, and where the files are."""
    table = Table(title="Sweep (server-side test accuracy; ε per client, the maximum)")
    for column in ("run", *spec.varied_keys, "status", "accuracy", "max ε"):
        table.add_column(column, justify="right")
    for row in rows(spec, output):
        accuracy = row.get("final_accuracy")
        epsilon = row.get("epsilon_max")
        table.add_row(
            row["run"],
            *(str(row.get(key)) for key in spec.varied_keys),
            row["status"],
            "" if accuracy is None else f"{accuracy:.4f}",
            "" if epsilon is None else f"{epsilon:.3f}",
        )
    console.print(table)
    console.print(f"Table: {output / TABLE_FILE}; report: privet report {output}")


def run_sweep_command(args: argparse.Namespace) -> int:
    """`privet sweep`."""
    spec, output = spec_from_args(args)
    engine = args.engine or DEFAULT_ENGINE
    return execute_sweep(spec, output, engine, args.jobs, Console())


def resume_sweep(output: Path, engine: str | None, jobs: int | None) -> int:
    """`privet resume DIR` for a sweep folder: continue with the saved settings."""
    spec = load_spec(output)
    for run in spec.runs():
        RunConfig.from_mapping(spec.settings_of(run, output))  # still valid in this version
    return execute_sweep(spec, output, engine or DEFAULT_ENGINE, jobs, Console())
