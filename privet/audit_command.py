"""`privet audit`: a simulation with canaries, and an ε lower bound beside the accounted ε.

The work is in `simulations.audit`; this module is the command-line face. It takes every setting
`privet simulate` takes (the run is the same run, on the in-process engine) plus the audit's own
flags, prints the verdict in one line, and exits 0 when the bound is within the accounted ε, 3
when it is above it (the run's ε cannot be trusted), 1 when the run did not finish.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privet.simulations.audit import (
    AUDIT_FILE,
    AUDIT_LEVELS,
    DEFAULT_CLIENT_CANARIES,
    DEFAULT_EXAMPLE_CANARIES,
    AuditSettings,
)

if TYPE_CHECKING:
    from privet.server.results import RoundCallback, RunResults
    from privet.task.config import RunConfig

EXIT_AUDIT_FAILED = 3


def add_audit_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `audit` subcommand: the simulate settings and the audit's flags."""
    from privet.cli import add_settings_arguments
    from privet.task.config import SETTINGS_BY_NAME

    parser = commands.add_parser(
        "audit",
        help="measure privacy empirically: an epsilon lower bound beside the accounted epsilon",
        description=(
            "Run a simulation (any settings `privet simulate` takes; in-process engine) with "
            "canaries included at random, and turn how well they can be told apart into a lower "
            "bound on epsilon at a stated confidence (Steinke, Nasr, Jagielski 2023). A bound "
            f"above the accounted epsilon exits with status {EXIT_AUDIT_FAILED}. Writes "
            f"OUTPUT/{AUDIT_FILE} beside the run's results."
        ),
    )
    run = add_settings_arguments(parser)
    run.add_argument("--output", help=SETTINGS_BY_NAME["output"].help)
    run.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    audit = parser.add_argument_group("audit")
    audit.add_argument(
        "--level",
        choices=AUDIT_LEVELS,
        default="example",
        help="example: gradient canaries in DP-SGD steps (white box); client: canary clients "
        "(needs client-level DP) (default: example)",
    )
    audit.add_argument(
        "--view",
        choices=("white-box", "server"),
        default="white-box",
        help="example level: what the auditor sees: every DP-SGD step (white-box) or each "
        "client's update as the server receives it (server) (default: white-box)",
    )
    audit.add_argument(
        "--canaries",
        type=int,
        help=f"canaries per run (default: {DEFAULT_EXAMPLE_CANARIES} examples, or "
        f"{DEFAULT_CLIENT_CANARIES} clients)",
    )
    audit.add_argument(
        "--canary-clients",
        type=int,
        help="example level: how many clients hold the gradient canaries (default: all)",
    )
    audit.add_argument(
        "--confidence", type=float, default=0.95, help="confidence of the bound (default: 0.95)"
    )
    audit.add_argument(
        "--runs",
        type=int,
        default=1,
        help="audited runs; with more than one, also a Clopper-Pearson bound (default: 1)",
    )


def run_audit_command(args: argparse.Namespace) -> int:
    """Run the audit, print its verdict, and return the exit status."""
    from privet.cli import config_from_args
    from privet.console import SimulationConsole
    from privet.server.checkpoint import lock_run_folder
    from privet.simulations.audit import AuditFailedError, run_audit
    from privet.simulations.inprocess_engine import run_in_process

    settings = AuditSettings(
        level=args.level,
        canaries=args.canaries,
        canary_clients=args.canary_clients,
        confidence=args.confidence,
        runs=args.runs,
        view=args.view,
    )
    config = config_from_args(args)
    from privet.simulations.audit import check_auditable, check_canary_room
    from privet.simulations.plan import plan_simulation

    check_auditable(config, settings)
    plan = plan_simulation(config)
    check_canary_room(config, settings, plan)
    if args.overwrite:
        from privet.server.app import clear_output

        clear_output(Path(config.output))  # the earlier files, audit.json too, to replaced/
    console = SimulationConsole()
    console.show_plan(plan)
    console.console.print(
        f"Auditing: {settings.level} level"
        + (f" ({settings.view} view)" if settings.level == "example" else "")
        + f", {settings.canary_count} canaries per run, "
        f"{settings.runs} run(s), {config.clients} clients, {config.rounds} rounds (in-process)"
    )

    def locked_run(run_config: RunConfig, on_round: RoundCallback, **hooks: Any) -> RunResults:
        with lock_run_folder(Path(run_config.output)):
            return run_in_process(run_config, on_round, **hooks)

    try:
        with console.progress(config.rounds) as on_round:
            report = run_audit(config, settings, on_round, runner=locked_run)
    except AuditFailedError as error:
        print(f"privet: audit not done: the run did not finish: {error}", file=sys.stderr)
        return 1
    print(report.verdict())
    print(f"Audit: {Path(config.output) / AUDIT_FILE}")
    return 0 if report.passed else EXIT_AUDIT_FAILED
