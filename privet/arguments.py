"""Argument types shared by the `privet` subcommands."""

from __future__ import annotations

import argparse
import errno
import os
import stat
import tempfile
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: a whole number above zero, else argparse's own one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def model_name(text: str) -> str:
    """An argparse type: a registered model name, ``hf:FOLDER``, or a ``module:function``.

    An unknown name is argparse's one-line usage error listing the registered ones. A
    ``module:function`` is only recognised here; it is imported when the configuration is
    validated (the same check as for a config file or Flower's run config).
    """
    from privet.task.models import is_builder_path, model_names, scheme_of

    if text in model_names() or is_builder_path(text) or scheme_of(text) is not None:
        return text
    choices = ", ".join(repr(name) for name in model_names())
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {choices}, a pretrained model as hf:FOLDER, or "
        "your own builder as module:function)"
    )


def output_folder_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why `folder` cannot be (or become) a writable results folder, or None when it can.

    Checked before any work, so that a bad --output is one line and nothing is written: a name
    too long for the file system, a file where a folder is needed (the folder itself or a
    parent), or a place where no folder can be made (/proc, a read-only or full file system,
    no permission). Writability is probed by making and removing an empty temporary folder in
    the nearest existing folder, which leaves nothing behind.
    """
    path = Path(os.path.abspath(os.fspath(folder)))
    if "\0" in str(path):
        return "contains a NUL character"
    if len(os.fsencode(str(path))) >= _PATH_MAX:
        return f"is longer than the {_PATH_MAX} bytes a path may have"
    current = path
    while True:
        try:
            mode = current.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            if current.parent == current:
                return "cannot be created: its file system root does not exist"
            current = current.parent
            continue
        except OSError as error:
            if error.errno == errno.ENAMETOOLONG and current.parent != current:
                current = current.parent  # reported below, with the file system's limit
                continue
            return f"cannot be reached ({error.strerror or type(error).__name__})"
        break
    if not stat.S_ISDIR(mode):
        what = "a file" if stat.S_ISREG(mode) else "a device or special file"
        if current == path:
            return f"is {what}, not a folder"
        return f"cannot be created: {current} is {what}, not a folder"
    limit = _name_max(current)
    for part in path.relative_to(current).parts:
        if len(os.fsencode(part)) > limit:
            return f"has a name of {len(os.fsencode(part))} bytes; this file system allows {limit}"
    try:
        probe = tempfile.mkdtemp(prefix=".privet-check-", dir=current)
    except OSError as error:
        where = "is not writable" if current == path else f"cannot be created in {current}"
        return f"{where} ({error.strerror or type(error).__name__})"
    os.rmdir(probe)
    return None


def output_file_problem(file: str | os.PathLike[str]) -> str | None:
    """Why `file` cannot be written (as a new or replaced file), or None when it can.

    Its folder is checked like `output_folder_problem` (and may not exist yet); the file itself
    must not be a folder or a device, and its name must fit the file system.
    """
    path = Path(os.path.abspath(os.fspath(file)))
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        return "is a folder, not a file" if stat.S_ISDIR(mode) else "is not a regular file"
    problem = output_folder_problem(path.parent)
    if problem is not None:
        return f"cannot be written: its folder {path.parent} {problem}"
    size, limit = len(os.fsencode(path.name)), _name_max(path.parent)
    if size > limit:
        return f"has a name of {size} bytes; this file system allows {limit}"
    return None


_PATH_MAX = 4096  # Linux's PATH_MAX; os.pathconf gives the same where it is known


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255
