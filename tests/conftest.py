"""Shared test settings: Flower and Ray write only to temporary folders and phone nowhere."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the scratch folder Ray and Flower wrote to."""
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

    def expected_seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        if marker is None:
            return 0.0
        return float(marker.args[0]) if marker.args else 10.0

    items.sort(key=lambda item: -expected_seconds(item))
