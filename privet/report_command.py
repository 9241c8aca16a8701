"""`privet report DIR`: a self-contained HTML report of a run or a sweep (being written)."""

from __future__ import annotations

import argparse


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand."""
    parser = commands.add_parser("report", help="write an HTML report of a run or a sweep")
    parser.add_argument("directory", help="a run's or a sweep's output folder")


def run_report(args: argparse.Namespace) -> int:
    """Write the report; returns the exit status."""
    raise NotImplementedError("privet report is being written")
