"""Shared test settings: Flower and Ray write only to temporary folders and phone nowhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests import background

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Ray puts Unix sockets under its temp dir, whose path must stay short (< 108 bytes).
_SCRATCH = Path(tempfile.mkdtemp(prefix="privet-t-"))
os.environ["RAY_TMPDIR"] = str(_SCRATCH / "ray")
os.environ["FLWR_HOME"] = str(_SCRATCH / "flwr")
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray binds to 127.0.0.1 only
Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)


_BACKGROUND: dict[str, subprocess.Popen[bytes]] = {}


def _will_run(config: pytest.Config, test_file: str) -> bool:
    """Whether this session runs `test_file` (named, or under a folder named, on the command
    line; or the default test paths). Sessions that select by -k or -m run scenarios inline."""
    if config.option.keyword or config.option.markexpr or config.option.lf:
        return False
    target = (REPO_ROOT / test_file).resolve()
    args = config.args or [str(REPO_ROOT / path) for path in config.getini("testpaths")]
    for arg in args:
        path = Path(arg.split("::")[0])
        path = (path if path.is_absolute() else Path(config.invocation_params.dir) / path).resolve()
        if "::" not in arg and (path == target or path in target.parents):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    """Start the end-to-end scenarios this session checks (tests/background.py), once, at once.

    Only the session's first process does (not pytest-xdist's workers, which inherit the folder
    through the environment).
    """
    if hasattr(config, "workerinput") or background.FOLDER_ENV in os.environ:
        return
    wanted = [name for name, file in background.TEST_FILES.items() if _will_run(config, file)]
    if not wanted:
        return
    root = _SCRATCH / "background"
    os.environ[background.FOLDER_ENV] = str(root)
    for name in wanted:
        _BACKGROUND[name] = background.start(name, root)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop any scenario still running (by its PID), e.g. when the session was interrupted."""
    for process in _BACKGROUND.values():
        background.stop(process)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the scratch folder Ray and Flower wrote to (once no scenario is using it)."""
    if hasattr(session.config, "workerinput") or not _BACKGROUND:
        shutil.rmtree(_SCRATCH, ignore_errors=True)
        return
    for process in _BACKGROUND.values():
        background.stop(process)
    shutil.rmtree(_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The checksum-verified MNIST files beside the project; their absence fails the test."""
    path = SHARED_DATA / "mnist"
    assert (path / "train-images-idx3-ubyte.gz").is_file(), f"MNIST files missing under {path}"
    return path


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items) -> None:
    """Start the tests marked `long` first, longest first (`@pytest.mark.long(seconds)`).

    The suite runs on two workers (pytest-xdist, `-n 2 --dist loadfile --no-loadscope-reorder` in
    pyproject.toml: files in collection order, one worker each); a long test that starts
    last would leave one worker idle while the other finishes it.
    """

    in_background = {
        str(REPO_ROOT / file)
        for name, file in background.TEST_FILES.items()
        if background.folder_of(name) is not None
    }

    def expected_seconds(item: pytest.Item) -> float:
        if str(item.path) in in_background:
            return -1.0  # started with the session: its test only waits, so it goes last
        marker = item.get_closest_marker("long")
        if marker is None:
            return 0.0
        return float(marker.args[0]) if marker.args else 10.0

    items.sort(key=lambda item: -expected_seconds(item))
