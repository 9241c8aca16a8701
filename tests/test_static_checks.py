"""Static checks as tests, so CI's one command (`pytest`) also runs them: mypy, ruff, ruff format.

mypy checks the `privet` namespace as it installs (scripts/typecheck.py: privet.server is server/,
...), with the settings of `[tool.mypy]` in pyproject.toml; ruff lints and format-checks the tree
with `[tool.ruff]`. Each test prints the tool's report when it fails.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import privet

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

_SPEC = importlib.util.spec_from_file_location("typecheck", REPO_ROOT / "scripts" / "typecheck.py")
assert _SPEC is not None and _SPEC.loader is not None
typecheck = importlib.util.module_from_spec(_SPEC)  # scripts/ is not a package
_SPEC.loader.exec_module(typecheck)


def _report(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {result.returncode}\n{result.stdout}{result.stderr}"


def _python_files_in_privet_namespace() -> int:
    folders = ["privet", *typecheck.SUBPACKAGES]
    return sum(len(list((REPO_ROOT / folder).rglob("*.py"))) for folder in folders)


@pytest.mark.long(60)
def test_mypy_finds_no_type_errors_in_every_module_of_the_namespace():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "typecheck.py")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, _report(result)
    # Every module was checked: a broken tree would make mypy pass on nothing.
    expected = f"Success: no issues found in {_python_files_in_privet_namespace()} source files"
    assert expected in result.stdout, _report(result)


def test_the_typecheck_tree_is_the_installed_layout_and_errors_name_real_files(tmp_path):
    package = typecheck.build_tree(tmp_path)
    assert (package / "server" / "app.py").resolve() == REPO_ROOT / "server" / "app.py"
    assert (package / "cli.py").resolve() == REPO_ROOT / "privet" / "cli.py"
    assert set(typecheck.SUBPACKAGES) == set(privet.SUBPACKAGES)
    report = (
        f"{package}/server/app.py:3: error: one  [arg-type]\n"
        f"{package}/cli.py:7: error: two  [type-arg]\n"
        "Found 2 errors in 2 files (checked 2 source files)\n"
    )
    assert typecheck.real_paths(report, package).splitlines() == [
        "server/app.py:3: error: one  [arg-type]",
        "privet/cli.py:7: error: two  [type-arg]",
        "Found 2 errors in 2 files (checked 2 source files)",
    ]


def test_ruff_check_passes():
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, _report(result)


def test_ruff_format_check_passes():
    result = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, _report(result)
