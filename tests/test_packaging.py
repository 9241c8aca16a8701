"""Privet installs as one import namespace, `privet` (issue 13, item 1)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import privet

REPO = Path(__file__).resolve().parents[1]


def declared() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_declared_under_privet():
    """A new subpackage that pyproject.toml does not list would be left out of the wheel."""
    folders = {f"privet.{name}" for name in privet.SUBPACKAGES} | {"privet"}
    for name in privet.SUBPACKAGES:
        folders |= {
            "privet." + ".".join(init.parent.relative_to(REPO).parts)
            for init in (REPO / name).rglob("__init__.py")
        }
    assert set(declared()["packages"]) == folders
    assert declared()["package-dir"] == {
        "privet": "privet",
        **{f"privet.{name}": name for name in privet.SUBPACKAGES},
    }


@pytest.mark.long(20)
def test_the_wheel_holds_one_top_level_package(tmp_path):
    """What `pip install .` puts into site-packages: `privet` and its metadata, nothing else."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("privet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    } == {"privet"}
    for module in (
        "privet/server/app.py",
        "privet/client/app.py",
        "privet/privacy/secagg/wire.py",
        "privet/task/config.py",
        "privet/simulations/sweep.py",
        "privet/cli.py",
    ):
        assert module in names


def test_the_source_tree_and_the_installed_namespace_are_one():
    """Run from a checkout, privet.server is the checkout's server/ folder."""
    import privet.server.app

    assert Path(privet.server.app.__file__).resolve() == REPO / "server" / "app.py"
    result = subprocess.run(
        [sys.executable, "-c", "import server"], cwd="/", capture_output=True, text=True
    )
    assert result.returncode != 0 and "No module named 'server'" in result.stderr
