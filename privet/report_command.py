"""`privet report DIR`: a self-contained HTML report of a run or a sweep.

The work is in `simulations.report`; this module is the command-line face: its flags, and the
one line that says where the report went. Bad input raises `simulations.report.ReportError`,
which the CLI prints as `privet: error: ...` with exit status 2.
"""

from __future__ import annotations

import argparse

from privet.server.run_output import REPORT_FILE, RESULTS_FILE, SWEEP_FILE


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand."""
    parser = commands.add_parser(
        "report",
        help="write an HTML report of a run or a sweep",
        description=(
            "Write one self-contained HTML file (plots embedded, nothing fetched) for a "
            f"`privet simulate` run folder ({RESULTS_FILE}) or a sweep folder ({SWEEP_FILE}): "
            "accuracy, ε per round per client, the privacy–utility curve, clipping, noise, "
            "participation, and a plain-language statement of what was guaranteed to whom."
        ),
    )
    parser.add_argument("directory", help="a run's or a sweep's output folder")
    parser.add_argument(
        "--output",
        metavar="FILE",
        help=f"where to write the HTML (default: DIRECTORY/{REPORT_FILE}; replaced atomically)",
    )
    parser.add_argument("--title", help="the report's title (default: from the folder's name)")


def run_report(args: argparse.Namespace) -> int:
    """Write the report and say where; returns the exit status (0)."""
    from privet.simulations.report import write_report

    path = write_report(args.directory, args.output, args.title)
    print(f"Report: {path}")
    return 0
