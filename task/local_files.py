"""Checks on the local data files a user names, shared by every loader that reads files.

:func:`not_a_file_reason` words why a path cannot be read as a data file (missing, a folder, a
device such as /dev/zero), so that each loader's error names the real problem instead of failing
inside a parser. :func:`file_key` is the cache key of a loaded file: it includes the file's
modification time and size, so that a file replaced on disk is read again rather than served
from a stale in-process cache.
"""

import stat
from pathlib import Path

__all__ = ["file_key", "not_a_file_reason"]


def not_a_file_reason(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data file, or None when it is a regular file.

    The reason completes "FILE ...": "does not exist", "is a folder, not a file", "is a
    character device, not a regular file" (e.g. /dev/zero), and so on. A link counts as what it
    points to.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of the path is a file, not a folder)"
    except OSError as error:
        return f"cannot be read ({error.strerror or type(error).__name__})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    for test, what in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return f"is {what}, not a regular file"
    return "is not a regular file"


def file_key(path: Path) -> tuple[Path, int, int]:
    """Return (resolved path, mtime_ns, size): the cache key that notices a replaced file."""
    stat = path.stat()
    return path.resolve(), stat.st_mtime_ns, stat.st_size
