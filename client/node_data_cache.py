"""A node's encoded data, kept between its messages' processes (under `privet node` only).

Why: every message a deployed node serves runs in a fresh process, and reading and encoding the
node's CSV with the schema took 0.29 s of a small node's 0.6 s of work per TRAIN message (2-core
machine, 200 rows). `privet node` sets `CACHE_ENV` to a folder inside its private folder (mode
0700, removed when the node stops): the first message that encodes the file stores the arrays
there (``.npz``, read back without pickle) with the counts the node reports, and later messages
load them.

An entry is named by a digest of everything the encoding depends on (the files' paths, sizes and
modification times, the node's data settings and the run's data options), so a changed file,
schema or setting misses. It carries an HMAC under the node's secret (`privacy.seal`) over its
name, its arrays and its counts; an entry whose seal does not match (damage, another node's entry,
an edit) is ignored and written again. Without the secret or the folder nothing is cached.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from privet.privacy.seal import is_sealed, seal

CACHE_ENV = "PRIVET_DATA_CACHE"
"""The folder for the node's encoded data (set by `privet node`)."""


def entry_name(key: object) -> str:
    """The entry for ``key``, a value whose ``repr`` is stable (tuples, paths, dataclasses)."""
    return hashlib.sha256(repr(key).encode()).hexdigest()[:32]


def _folder() -> Path | None:
    folder = os.environ.get(CACHE_ENV)
    return Path(folder) if folder else None


def _payload(name: str, data: bytes, meta: Mapping[str, object]) -> bytes:
    header = json.dumps({"name": name, "meta": meta}, sort_keys=True).encode()
    return header + b"\0" + hashlib.sha256(data).digest()


def load(name: str) -> tuple[dict[str, np.ndarray], dict[str, object]] | None:
    """The arrays and counts stored under ``name`` by this node, or None (absent or not sealed)."""
    folder = _folder()
    if folder is None:
        return None
    try:
        data = (folder / f"{name}.npz").read_bytes()
        stored = json.loads((folder / f"{name}.json").read_text())
        meta = stored["meta"]
        if not isinstance(meta, dict) or not is_sealed(_payload(name, data, meta), stored["seal"]):
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}, meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(name: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, object]) -> None:
    """Keep ``arrays`` and ``meta`` (JSON values) under ``name``, sealed; skipped if impossible."""
    folder = _folder()
    if folder is None:
        return
    buffer = io.BytesIO()
    np.savez(buffer, **dict(arrays))  # type: ignore[arg-type]
    data = buffer.getvalue()
    sealed = seal(_payload(name, data, dict(meta)))
    if sealed is None:
        return
    suffix = f".{os.getpid()}.tmp"
    written: list[Path] = []
    try:
        for path, content in (
            (folder / f"{name}.npz", data),
            (folder / f"{name}.json", json.dumps({"meta": dict(meta), "seal": sealed}).encode()),
        ):
            temporary = path.with_name(path.name + suffix)
            written.append(temporary)
            temporary.write_bytes(content)
            os.replace(temporary, path)
    except OSError:
        for temporary in written:
            temporary.unlink(missing_ok=True)
