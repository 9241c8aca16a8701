"""`privet report DIR` as a user meets it: where the report went, and bad input in one line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from privet import cli
from privet.simulations.inprocess_engine import run_in_process
from privet.simulations.report import ReportError
from privet.task.config import RunConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real two-client, one-round run (about a second)."""
    folder = tmp_path_factory.mktemp("report-command") / "run"
    run_in_process(RunConfig(output=str(folder), clients=2, rounds=1, reproducible=True))
    return folder


def test_report_writes_next_to_the_run_and_says_where(run_dir, capsys):
    assert cli.main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    target = run_dir / "report.html"
    assert out.strip() == f"Report: {target}"
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Privet run report: run</title>" in page
    assert "data:image/png;base64," in page


def test_output_and_title(run_dir, tmp_path, capsys):
    target = tmp_path / "nested" / "mine.html"
    status = cli.main(["report", str(run_dir), "--output", str(target), "--title", "Trial 7"])
    assert status == 0
    assert capsys.readouterr().out.strip() == f"Report: {target}"
    assert "<title>Trial 7</title>" in target.read_text(encoding="utf-8")


def test_help_names_the_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    out = capsys.readouterr().out
    for flag in ("directory", "--output", "--title"):
        assert flag in out


def test_bad_directory_raises_report_error(tmp_path):
    args = argparse.Namespace(directory=str(tmp_path), output=None, title=None)
    from privet.report_command import run_report

    with pytest.raises(ReportError, match="has no results.json or sweep.json"):
        run_report(args)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: None, "does not exist; pass a run's or a sweep's output folder"),
        (lambda folder: folder.mkdir(), "has no results.json or sweep.json"),
        (
            lambda folder: (folder.mkdir(), (folder / "results.json").write_text("{")),
            "results.json is not valid JSON",
        ),
    ],
    ids=["missing", "empty", "corrupt"],
)
def test_bad_input_is_one_line_with_exit_status_2(tmp_path, capsys, make, message):
    folder = tmp_path / "nothing-here"
    make(folder)
    assert cli.main(["report", str(folder)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("privet: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not (folder / "report.html").exists()
