"""Crash-safe, private file writes, and the locks that keep one writer per file.

- `atomic_write_bytes` / `atomic_write_text`: a reader sees the old file or the new one, never a
  half-written one. The privacy ledger depends on this for its write-ahead guarantee: a release is
  recorded on disk before its result leaves the process, and a crash at any moment must leave a
  loadable ledger.
- `FileLock`: an exclusive `flock` on a lock file, held by the one process that may write what
  the lock guards (a run folder, a ledger). The operating system drops it when the process ends,
  however it ends, so a crash never leaves a stale lock behind; the file holds the holder's PID
  only so that a refused second writer can be told who holds it.
- `remove_stale_temporaries`: the temporary files of writes cut short by a crash, removed by the
  process that holds the lock of what they were for (so no one is writing them).

File permission policy (one for everything a run writes): files are private to their owner
(0600: `tempfile.mkstemp` creates them so, whatever the umask), folders Privet creates are 0700,
and every file is flushed and fsynced before it is renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no flock; locks are not enforced there)
    fcntl = None  # type: ignore[assignment]

FILE_MODE = 0o600
FOLDER_MODE = 0o700
TEMP_SUFFIX = ".tmp"
LOCK_SUFFIX = ".lock"
# `atomic_write_bytes` names its temporary `.<target>.<8 characters>.tmp`: `tempfile.mkstemp`'s
# random part is 8 characters of [a-z0-9_] (CPython's `tempfile._RandomNameSequence`).
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    if os.name != "posix":  # Windows cannot open a directory for fsync; os.replace is atomic there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_folder(path: str | os.PathLike[str]) -> Path:
    """Create `path` and its missing parents if needed, each 0700 whatever the umask.

    Folders that already exist keep their mode.
    """
    folder = Path(path)
    missing = []
    probe = folder
    while not probe.is_dir() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for level in reversed(missing):
        try:
            level.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            if not level.is_dir():
                raise
            continue  # made meanwhile by someone else: theirs, left as it is
        os.chmod(level, FOLDER_MODE)
    return folder


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write `payload` to `path` atomically and durably, creating parent folders (0700).

    The bytes go to a temporary file in the same folder (so the rename cannot cross file systems),
    created 0600, which is flushed and fsynced, then renamed over `path` with `os.replace` (atomic
    on POSIX and Windows), and the folder is fsynced so the rename survives a power loss. On any
    error the temporary file is removed and `path` keeps its previous content.
    """
    target = Path(path)
    make_private_folder(target.parent)
    fd, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX
    )
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


# -- locks --------------------------------------------------------------------------------------


class LockError(RuntimeError):
    """A lock that cannot be taken (one line naming the lock file and what to do)."""


class InUseError(LockError):
    """Another process holds the lock: a second writer would overwrite the first one's records."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid
        """The holder's process id, when it could be read from the lock file."""


_registry_guard = threading.Lock()
_held: dict[tuple[int, int], list[int]] = {}
"""Locks this process holds: (device, inode) of the lock file -> [fd, depth]."""


def _forget_inherited_locks() -> None:
    """In a forked child: the parent's locks are the parent's; never release them from here."""
    global _registry_guard
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)  # the parent's descriptor stays open, so the parent keeps its lock
    _held.clear()
    _registry_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


def lock_file_for(path: str | os.PathLike[str]) -> Path:
    """The lock file that guards writes to `path`: `.<name>.lock` beside it."""
    target = Path(path)
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def _holder_pid(fd: int) -> int | None:
    """The PID the holder wrote into the lock file (retried briefly: it writes right after)."""
    for _ in range(10):
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 32, 0).decode("ascii").strip()
            if text:
                return int(text)
        time.sleep(0.02)
    return None


class FileLock:
    """An exclusive, per-process re-entrant `flock` on `path`; released when the process ends.

    `acquire(wait)` tries for up to `wait` seconds (0: once) and raises `InUseError` naming the
    holder's PID. The same process may acquire a lock it already holds (each acquire needs its
    release), so a caller can hold a run's lock around code that takes it again.
    """

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._key: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r}, held={self._key is not None})"

    @property
    def held(self) -> bool:
        """True between a successful `acquire` and its `release`."""
        return self._key is not None

    def acquire(self, wait: float = 0.0) -> FileLock:
        """Take the lock (see the class); returns self."""
        if self._key is not None:
            raise RuntimeError(f"{self!r} is already acquired through this object")
        if fcntl is None:  # pragma: no cover
            self._key = (-1, id(self))
            return self
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            make_private_folder(self.path.parent)
            fd = os.open(self.path, flags, FILE_MODE)
            with contextlib.suppress(OSError):
                os.fchmod(fd, FILE_MODE)  # whatever the umask
        except OSError as error:
            raise LockError(
                f"cannot open the lock file {self.path} of {self.what} ({error.strerror}); "
                "choose a folder you can write"
            ) from None
        stat = os.fstat(fd)
        key = (stat.st_dev, stat.st_ino)
        if self._reenter(key, fd):
            return self
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    if self._reenter(key, fd):  # another thread of this process took it meanwhile
                        return self
                    pid = _holder_pid(fd)
                    os.close(fd)
                    holder = f"process {pid}" if pid is not None else "another process"
                    stop = f"stop it (kill {pid})" if pid is not None else "stop it"
                    raise InUseError(
                        f"{self.what} is in use by {holder} (lock {self.path}); wait for it to "
                        f"end or {stop}, then try again — two writers would lose ledger entries",
                        pid,
                    ) from None
                time.sleep(0.01)
            except BaseException:
                os.close(fd)
                raise
        with _registry_guard:
            _held[key] = [fd, 1]
        self._key = key
        with contextlib.suppress(OSError):  # only for the refusal message of a second writer
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return self

    def _reenter(self, key: tuple[int, int], fd: int) -> bool:
        with _registry_guard:
            entry = _held.get(key)
            if entry is None:
                return False
            entry[1] += 1
        os.close(fd)
        self._key = key
        return True

    def release(self) -> None:
        """Give the lock back (the last release of this process unlocks the file)."""
        key, self._key = self._key, None
        if key is None or fcntl is None:
            return
        with _registry_guard:
            entry = _held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[key]
        fd = entry[0]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> FileLock:
        if self._key is None:
            self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


# -- temporary files of interrupted writes -------------------------------------------------------


def stale_temporaries(folder: str | os.PathLike[str], target: Callable[[str], bool]) -> list[Path]:
    """Temporary files of `atomic_write_bytes` in `folder` for targets that `target` accepts.

    Only regular files (not links) owned by this user whose name is exactly what
    `atomic_write_bytes` creates (`.<target>.<8 of [a-z0-9_]>.tmp`) are listed.
    """
    found: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        if match is None or not target(match.group("target")):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_file(follow_symlinks=False) or (uid is not None and info.st_uid != uid):
            continue
        found.append(Path(entry.path))
    return sorted(found)


def remove_stale_temporaries(
    folder: str | os.PathLike[str], target: Callable[[str], bool]
) -> list[Path]:
    """Remove `stale_temporaries(folder, target)`; return what was removed.

    The caller must hold the lock under which those targets are written (so no write is in
    flight); see `remove_unlocked_temporaries` to check each target's own lock instead.
    """
    removed = []
    for path in stale_temporaries(folder, target):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def remove_unlocked_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries in `folder` of targets whose own lock (`lock_file_for`) is free.

    For folders whose files each have their own writer lock (a ledgers folder): a temporary whose
    target's lock another process holds may be a write in flight and is left alone.
    """
    removed: list[Path] = []
    by_target: dict[str, list[Path]] = {}
    for path in stale_temporaries(folder, lambda name: True):
        match = TEMP_NAME.match(path.name)
        assert match is not None
        by_target.setdefault(match.group("target"), []).append(path)
    for name, paths in sorted(by_target.items()):
        lock = FileLock(lock_file_for(Path(folder) / name), f"file {Path(folder) / name}")
        try:
            lock.acquire()
        except InUseError:
            continue
        try:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        finally:
            lock.release()
    return removed
