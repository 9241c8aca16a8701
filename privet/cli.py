"""The `privet` command line: `privet simulate` runs a private federated simulation."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from privet import __version__
from privet.arguments import model_name, output_folder_problem
from privet.config_sources import build_config, read_config_file
from privet.simulations.engine_names import ENGINE_NAMES
from privet.task.config import (
    SETTINGS,
    SETTINGS_BY_NAME,
    RunConfig,
    check_no_ignored_settings,
)
from privet.task.settings import SECTION_NAMES, SECTION_TITLES, Setting

EXIT_USAGE = 2


class CliError(ValueError):
    """A command-line problem reported as one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that names the problem and where to look."""

    def error(self, message: str) -> NoReturn:
        """Print `privet: error: ...` and exit with status 2 (argparse prints usage first)."""
        self.exit(EXIT_USAGE, f"privet: error: {message} (see '{self.prog} --help')\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (not a bug): reported in one line, without a traceback."""
    from privet.budget import BudgetError
    from privet.certs import CertError
    from privet.client.local_plan import PlanError
    from privet.node import NodeError
    from privet.privacy import AccountingError, CalibrationError, LedgerError
    from privet.privacy.storage import LockError
    from privet.simulations.report import ReportError
    from privet.simulations.sweep import SweepError
    from privet.task.config import ConfigError
    from privet.task.datasets import DataError
    from privet.task.models import ModelError

    return (
        CliError,
        ConfigError,
        DataError,
        ModelError,
        PlanError,
        CalibrationError,
        AccountingError,
        LedgerError,
        LockError,
        BudgetError,
        CertError,
        SweepError,
        ReportError,
        NodeError,
    )


def _add_simulate_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "simulate",
        help="run a private federated simulation on this machine",
        description=(
            "Train a model with FedAvg across virtual clients, each running Opacus DP-SGD, on "
            "Flower's simulation runtime. Defaults: digits data, 5 clients, 5 rounds, ε ≤ 8 per "
            "client at δ = 1e-5."
        ),
    )
    run = add_settings_arguments(parser)
    add_engine_argument(run, default_text="flower")
    run.add_argument("--output", help=SETTINGS_BY_NAME["output"].help)
    run.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def add_settings_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The flags of every run setting (shared by `simulate` and `sweep`); returns the run group.

    Generated from RunConfig's declaration (privet.task.config.SETTINGS): one argument group per
    section, one flag per setting whose shape is not "own" (added by each command) or "none".
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for section in SECTION_NAMES:
        groups[section] = parser.add_argument_group(SECTION_TITLES[section])
    for item in SETTINGS:
        if item.flag in ("own", "none"):
            continue
        group: argparse._ArgumentGroup = groups[item.section]
        if item.exclusive is not None:
            if item.exclusive not in exclusive:
                exclusive[item.exclusive] = group.add_mutually_exclusive_group()
            group = exclusive[item.exclusive]
        group.add_argument(item.option, **_flag_options(item))
    run = groups["run"]
    run.add_argument("--config", help="TOML file with any of the settings above (flags win)")
    return run


def _flag_options(item: Setting) -> dict[str, Any]:
    """The keyword arguments of one declared setting's flag; its default is None ("not given")."""
    if item.flag == "switch":
        return {"action": "store_true", "default": None, "help": item.help}
    if item.flag == "toggle":
        return {"action": argparse.BooleanOptionalAction, "default": None, "help": item.help}
    options: dict[str, Any] = {"help": item.help}
    if item.kind in (int, float):
        options["type"] = item.kind
    if item.builder_path and item.choices is not None:
        options["type"] = model_name
        options["metavar"] = "{" + ",".join((*item.choices(), "hf:FOLDER", "MODULE:FUNCTION")) + "}"
    elif item.choices is not None:
        options["choices"] = item.choices()
    return options


def add_engine_argument(group: argparse._ArgumentGroup, default_text: str) -> None:
    """The --engine flag: Flower's simulation runtime (Ray) or Privet's in-process engine."""
    group.add_argument(
        "--engine",
        choices=ENGINE_NAMES,
        help="flower: Flower's simulation runtime (Ray, one process per client slot); "
        "in-process: the same apps in this process, no Ray — faster and far lighter for many "
        f"clients on one machine (default: {default_text})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `privet` command."""
    parser = OneLineParser(
        prog="privet",
        description="Federated training with differential privacy, on Flower and Opacus.",
    )
    parser.add_argument("--version", action="version", version=f"privet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_simulate_parser(commands)
    from privet.sweep_command import add_sweep_parser

    add_sweep_parser(commands)
    resume = commands.add_parser(
        "resume",
        help="continue an interrupted simulation or sweep from its last checkpoint",
        description="Continue a `privet simulate` run from OUTPUT/checkpoint.json with the same "
        "configuration (privacy ledgers continue where they were), or a `privet sweep` from "
        "OUTPUT/sweep.json (finished runs are kept, interrupted ones continue).",
    )
    resume.add_argument("output", help="the interrupted run's or sweep's output folder")
    resume.add_argument(
        "--engine",
        choices=ENGINE_NAMES,
        help="engine to continue on (default: the one the run used; in-process for a sweep)",
    )
    from privet.sweep_command import add_jobs_argument

    add_jobs_argument(resume.add_argument_group("sweep"))
    resume.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    from privet.budget import add_budget_parser

    add_budget_parser(commands)
    from privet.certs import add_certs_parser

    add_certs_parser(commands)
    from privet.report_command import add_report_parser

    add_report_parser(commands)
    from privet.node import add_node_parser

    add_node_parser(commands)
    from privet.schema_command import add_schema_parser

    add_schema_parser(commands)
    from privet.model_folder_command import add_model_folder_parser

    add_model_folder_parser(commands)
    from privet.audit_command import add_audit_parser

    add_audit_parser(commands)
    return parser


SIMULATE_KEYS: tuple[str, ...] = tuple(item.name for item in SETTINGS if item.on_command_line)
"""The settings `privet simulate` takes as flags (not `resume`, set by `privet resume`, nor
`node-clients`, for deployments): every declared setting whose flag shape is not "none"."""
DEFAULT_SIMULATE_ENGINE = "flower"


def _default_output() -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("privet-output") / f"run-{stamp}"
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return str(candidate)


def given_keys(file_values: Mapping[str, Any], flags: Mapping[str, Any]) -> set[str]:
    """The settings the user gave (flags that are not None, every key of the config file)."""
    given = {key for key, value in flags.items() if value is not None}
    return {str(key).replace("_", "-") for key in (*file_values, *given)}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated run configuration of `privet simulate`'s flags and optional --config file."""
    file_values = read_config_file(args.config) if args.config else {}
    flags = {key: getattr(args, key) for key in SIMULATE_KEYS}
    if flags["output"] is None and "output" not in file_values:
        flags["output"] = _default_output()
    if flags["reproducible"] is None and "reproducible" not in file_values:
        flags["reproducible"] = True  # a simulation is reproducible unless told otherwise
    config = build_config(file_values, flags)
    check_no_ignored_settings(config, given_keys(file_values, flags))
    output = Path(config.output)
    problem = output_folder_problem(output)
    if problem is not None:
        raise CliError(f"--output {config.output} {problem}; choose another --output")
    from privet.server.run_output import CHECKPOINT_FILE, LEDGER_DIR, RESULTS_FILE

    for name in (RESULTS_FILE, LEDGER_DIR, CHECKPOINT_FILE):
        if (output / name).exists() and not args.overwrite:
            raise CliError(
                f"{output / name} already exists; choose another --output, pass --overwrite "
                f"to replace that run, or `privet resume {output}` to continue it"
            )
    return config


def _simulate(args: argparse.Namespace) -> int:
    from privet.console import SimulationConsole
    from privet.simulations.engines import run_simulation_with
    from privet.simulations.plan import plan_simulation

    config = config_from_args(args)
    console = SimulationConsole()
    plan = plan_simulation(config)
    if args.overwrite:
        from privet.server.app import clear_output

        clear_output(Path(config.output))
    console.show_plan(plan)
    engine = args.engine or DEFAULT_SIMULATE_ENGINE
    with console.progress(config.rounds) as on_round:
        results = run_simulation_with(engine, config, on_round, verbose=args.verbose)
    console.show_results(results)
    return 0 if results.finished else 1


def _resume(args: argparse.Namespace) -> int:
    from privet.console import SimulationConsole
    from privet.server.checkpoint import load_checkpoint
    from privet.simulations.engines import recorded_engine, run_simulation_with

    output = Path(args.output)
    from privet.simulations.sweep import SWEEP_FILE

    if (output / SWEEP_FILE).exists():
        from privet.sweep_command import resume_sweep

        return resume_sweep(output, args.engine, args.jobs)
    from privet.simulations.audit import AUDIT_FILE

    if (output / AUDIT_FILE).exists():
        raise CliError(
            f"{args.output} holds a `privet audit` run, which is rerun, not resumed (a resumed "
            f"run would go on without its canaries); rerun `privet audit --output {args.output} "
            "--overwrite` with the same settings"
        )
    checkpoint = load_checkpoint(output)
    values = {k: v for k, v in checkpoint.config.items() if v is not None}
    # The run is continued where it is now (a copied or moved folder), never where it started.
    config = RunConfig.from_mapping({**values, "output": str(output), "resume": True})
    if checkpoint.round >= config.rounds:
        raise CliError(f"{args.output} finished all {config.rounds} rounds; nothing to resume")
    engine = args.engine or recorded_engine(output) or DEFAULT_SIMULATE_ENGINE
    console = SimulationConsole()
    console.console.print(
        f"Resuming {args.output} after round {checkpoint.round} of {config.rounds} ({engine})"
    )
    with console.progress(config.rounds) as on_round:
        results = run_simulation_with(engine, config, on_round, verbose=args.verbose)
    console.show_results(results)
    return 0 if results.finished else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `privet` console script; returns the process exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "node":  # only `privet node` passes flags on (to Flower)
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "certs":
            from privet.certs import run_certs

            return run_certs(args)
        if args.command == "budget":
            from privet.budget import run_budget

            return run_budget(args)
        if args.command == "sweep":
            from privet.sweep_command import run_sweep_command

            return run_sweep_command(args)
        if args.command == "report":
            from privet.report_command import run_report

            return run_report(args)
        if args.command == "node":
            from privet.node import run_node

            return run_node(rest)
        if args.command == "schema":
            from privet.schema_command import run_schema

            return run_schema(args)
        if args.command == "audit":
            from privet.audit_command import run_audit_command

            return run_audit_command(args)
        if args.command == "model-folder":
            from privet.model_folder_command import run_model_folder

            return run_model_folder(args)
    except _user_errors() as error:
        print(f"privet: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("privet: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
