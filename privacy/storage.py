"""Crash-safe file writes: a reader sees the old file or the new one, never a half-written one.

The privacy ledger depends on this for its write-ahead guarantee: a release is recorded on disk
before its result leaves the process, and a crash at any moment must leave a loadable ledger.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    if os.name != "posix":  # Windows cannot open a directory for fsync; os.replace is atomic there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write `payload` to `path` atomically and durably, creating parent folders.

    The bytes go to a temporary file in the same folder (so the rename cannot cross file systems),
    which is flushed and fsynced, then renamed over `path` with `os.replace` (atomic on POSIX and
    Windows), and the folder is fsynced so the rename survives a power loss. On any error the
    temporary file is removed and `path` keeps its previous content.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_directory(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
