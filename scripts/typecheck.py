"""Run mypy over the `privet` namespace as it installs: privet.server is server/, and so on.

mypy cannot follow the package-dir mapping in pyproject.toml: the editable install maps
privet.server to server/ with an import hook that mypy never runs, and `mypy server/` names the
modules `server.*`, so `[[tool.mypy.overrides]]` for `privet.*` and every `from privet.server ...`
would miss. This script builds the installed layout as a tree of symlinks (privet/ holds
privet/*.py and the folders client/ privacy/ server/ simulations/ task/), runs `mypy -p privet`
with that tree as MYPYPATH and the settings of `[tool.mypy]`, and rewrites the paths in mypy's
report back to the files in this tree, so each error names the file to edit.

Usage: `.venv/bin/python scripts/typecheck.py [extra mypy arguments]`; the exit status is mypy's.
The tree and mypy's cache live in the repository's ignored `.mypy_cache/`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("client", "privacy", "server", "simulations", "task")
"""The top-level folders that install as privet.<name> (privet/__init__.py has the same list)."""
CACHE = REPO_ROOT / ".mypy_cache"
"""mypy's cache: ignored by git, reused from run to run."""
TREE = CACHE / "privet-tree"
"""The symlink tree: always this path, since mypy's cache stores each module's path."""


def build_tree(root: Path) -> Path:
    """Lay out `root/privet` as the installed package: links to privet/*.py and the subpackages.

    Idempotent (a link already in place stays; one whose file is gone is removed), so that runs
    share one tree path, which mypy's cache records.
    """
    package = root / "privet"
    package.mkdir(parents=True, exist_ok=True)
    links = {source.name: source for source in (REPO_ROOT / "privet").glob("*.py")}
    links.update({name: REPO_ROOT / name for name in SUBPACKAGES})
    for entry in package.iterdir():
        if entry.name not in links or entry.resolve() != links[entry.name]:
            entry.unlink(missing_ok=True)
    for name, source in sorted(links.items()):
        with contextlib.suppress(FileExistsError):  # in place already, or a concurrent run's
            (package / name).symlink_to(source, target_is_directory=source.is_dir())
    return package


def real_paths(report: str, package: Path) -> str:
    """Rewrite the tree's paths in mypy's report to paths relative to the repository root."""
    prefixes = [str(package) + os.sep, os.path.relpath(package, REPO_ROOT) + os.sep]
    lines = []
    for line in report.splitlines(keepends=True):
        for prefix in prefixes:
            if line.startswith(prefix):
                rest = line[len(prefix) :]
                top = rest.split(os.sep, 1)[0]
                line = rest if top in SUBPACKAGES else "privet" + os.sep + rest
                break
        lines.append(line)
    return "".join(lines)


def run_mypy(extra: list[str]) -> subprocess.CompletedProcess[str]:
    """Run mypy on the symlink tree from the repository root; return it with real paths."""
    package = build_tree(TREE)
    env = {**os.environ, "MYPYPATH": str(TREE)}
    command = [sys.executable, "-m", "mypy", "--cache-dir", str(CACHE), "-p", "privet"]
    result = subprocess.run(
        [*command, *extra], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    result.stdout = real_paths(result.stdout, package)
    result.stderr = real_paths(result.stderr, package)
    return result


def main() -> int:
    """Run mypy with this script's arguments appended; print its report; return its status."""
    result = run_mypy(sys.argv[1:])
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
