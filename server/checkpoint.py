"""The server's checkpoint: everything needed to continue a run after a crash, written atomically.

After every round the server writes the global model (`checkpoint-model-<round>.npz`, plain
arrays, loaded with ``allow_pickle=False``) and then `checkpoint.json`, which names that file with
its SHA-256, the last finished round, the run configuration, the strategy's state (declines, the
random generators of sampling and noise, the clip norm), the results so far, the *ledger
bindings* and a `digest` (SHA-256 of the rest of the document, so a flipped bit is an error, not
a changed sample rate). The JSON is replaced atomically and only after the weights are on disk,
so a crash at any moment leaves a consistent checkpoint of the last finished round.

Ledger bindings. The privacy ledgers are not copied: they are written ahead of every release and
reloaded from `ledgers/` on resume. The checkpoint records, for each ledger in the run's
`ledgers/` folder, its number of entries and `PrivacyLedger.digest` of them as of that round. A
ledger must *extend* that prefix — it may have grown by a write-ahead entry of a round that was cut
short, never lost or changed an entry — or `privet resume`, `privet budget --verify` and the next
checkpoint stop with a one-line error: a deleted, shortened or edited ledger can never lower ε.
Each checkpoint also checks that the ledgers still extend what the previous one bound (a chain).
Schema 1 checkpoints (older Privet) bind nothing; for them the ledgers must exist and give at
least the ε that the checkpoint's results recorded.

The binding guards against damage and mistakes, not against someone who rewrites both files (the
digests are not signatures).

Client ledgers kept on the nodes of a deployment (`ledger-dir`) are not in the run folder, so the
server cannot bind them. It binds what it can: each client's reported ε (the run's own and its
lifetime), which it keeps in the checkpoint and never lowers (`server.federation_privacy`), with
the ledger summary (entry count and digest) the node signed off with its report, which
results.json keeps for `privet budget --verify`; and the node refuses a ledger file that lost
entries it holds in its own state (`client.app.load_ledger`).

The run token. A run is named by a token that the nodes tag their ledger entries with, so a
node's ledger tells this run's releases from earlier runs' (`privacy.ledger`, "Runs"). It is made
when a run starts fresh and kept in the checkpoint (the strategy's ``privacy.run_token``), so a
resumed run goes on as the same run; a checkpoint of an older Privet has none, and its resumed
run sends none (its nodes record untagged entries, as before).

The run folder: one writer. `lock_run_folder` takes an exclusive lock (`.privet.lock`, see
`privacy.storage.FileLock`) that a run holds from start to end; a second writer (another resume,
another simulate into the folder) is refused naming the holder's PID. Paths inside a run are
relative to its folder, so a copied or moved run folder resumes where it is. Nothing here deletes
a ledger: `set_aside_run` moves an earlier run's files into `replaced/<time>/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privet.privacy import (
    DEFAULT_ACCOUNTANT,
    AccountingError,
    LedgerError,
    PrivacyLedger,
    atomic_write_bytes,
    atomic_write_text,
)
from privet.privacy.ledger import LEDGER_DIR, ledger_lock
from privet.privacy.storage import (
    FileLock,
    InUseError,
    make_private_folder,
    remove_stale_temporaries,
    remove_unlocked_temporaries,
)
from privet.server.run_output import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    REPLACED_DIR,
    RESULTS_FILE,
    RUN_LOCK_FILE,
    WEIGHTS_FILE_GLOB,
    WEIGHTS_FILE_NAME,
    weights_file_name,
)
from privet.task.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
IGNORED_ON_RESUME = ("resume", "output")
"""Configuration keys that may differ between the checkpointed run and its resumption (a run
folder may be resumed where it is now: copied or moved)."""
_KEYS = {
    1: {"schema_version", "round", "weights", "config", "strategy", "results"},
    2: {"schema_version", "round", "weights", "config", "strategy", "results", "ledgers", "digest"},
}
_LEDGER_NAME = re.compile(r"^(server|client-\d+)\.json$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RUN_FILES = (RESULTS_FILE, MODEL_FILE, CHECKPOINT_FILE)
_WEIGHTS_NAME = WEIGHTS_FILE_NAME


class CheckpointError(ConfigError):
    """A checkpoint that is missing, corrupt or from another configuration; or bad ledgers.

    (Ledgers that do not extend what the checkpoint recorded.)
    """


@dataclass(frozen=True)
class LedgerBinding:
    """A ledger as of a checkpoint: its number of entries and the digest of those entries."""

    entries: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The binding as checkpoint.json writes it."""
        return {"entries": self.entries, "sha256": self.sha256}


@dataclass(frozen=True)
class ServerCheckpoint:
    """The state of a run after its last finished round.

    `ledgers` is what the checkpoint bound when it was loaded (None for a schema-1 checkpoint);
    `save_checkpoint` always binds the ledgers it finds on disk.
    """

    round: int
    config: dict[str, Any]
    weights: list[np.ndarray]
    strategy: dict[str, Any]
    results: dict[str, Any]
    ledgers: dict[str, LedgerBinding] | None = None


def _weights_name(server_round: int) -> str:
    return weights_file_name(server_round)


def _canonical_digest(document: Mapping[str, Any]) -> str:
    """SHA-256 of the document without its "digest", in a canonical JSON form."""
    body = {key: value for key, value in document.items() if key != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


# -- the run folder -----------------------------------------------------------------------------


def _is_run_file(name: str) -> bool:
    return name in _RUN_FILES or _WEIGHTS_NAME.match(name) is not None


def lock_run_folder(output_dir: Path) -> FileLock:
    """Create the run folder (0700) if needed and take its writer lock; return the held lock.

    Use as ``with lock_run_folder(folder): ...``. A second writer gets `InUseError`, one line
    naming the holder's PID. The holder removes temporary files left by interrupted writes: those
    of the run's own files, and those of ledgers whose own lock is free.
    """
    try:
        make_private_folder(output_dir)
    except OSError as error:
        raise ConfigError(
            f"cannot create the run folder {output_dir} ({error.strerror}); choose a folder you "
            "can write"
        ) from None
    if not output_dir.is_dir():
        raise ConfigError(f"{output_dir} is not a folder; choose a folder for the run")
    lock = FileLock(output_dir / RUN_LOCK_FILE, f"run folder {output_dir}").acquire()
    try:
        remove_stale_temporaries(output_dir, _is_run_file)
        if (output_dir / LEDGER_DIR).is_dir():
            remove_unlocked_temporaries(output_dir / LEDGER_DIR)
    except BaseException:
        lock.release()
        raise
    return lock


def set_aside_run(output_dir: Path) -> Path | None:
    """Move everything of an earlier run in `output_dir` into `replaced/<UTC time>/`.

    For starting a run again in the same folder (`privet simulate --overwrite`, a sweep's failed
    run): nothing is deleted, ledgers included. Refused (`InUseError`) while a run or a client
    holds the folder or one of its ledgers. Returns the new folder, or None if there was nothing.
    """
    if not output_dir.exists():
        return None
    with contextlib.ExitStack() as stack:
        stack.enter_context(lock_run_folder(output_dir))
        ledgers = output_dir / LEDGER_DIR
        for ledger in sorted(ledgers.glob("*.json")) if ledgers.is_dir() else []:
            stack.enter_context(ledger_lock(ledger).acquire())
        moving = sorted(
            entry
            for entry in output_dir.iterdir()
            if entry.name not in (RUN_LOCK_FILE, REPLACED_DIR)
        )
        if not moving:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        target = output_dir / REPLACED_DIR / stamp
        suffix = 1
        while target.exists():
            target, suffix = output_dir / REPLACED_DIR / f"{stamp}-{suffix}", suffix + 1
        make_private_folder(output_dir / REPLACED_DIR)
        make_private_folder(target)
        for entry in moving:
            os.rename(entry, target / entry.name)
        logger.warning("moved the earlier run's files in %s to %s", output_dir, target)
        return target


# -- ledger bindings ----------------------------------------------------------------------------

_digest_cache: dict[str, tuple[tuple[int, int, int, int], list[str]]] = {}


def _prefix_digests(path: Path) -> list[str]:
    """`PrivacyLedger.prefix_digests` of the file (cached while the file stays the same)."""
    key = os.path.abspath(path)
    info = os.stat(path)
    identity = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
    cached = _digest_cache.get(key)
    if cached is not None and cached[0] == identity:
        return cached[1]
    digests = PrivacyLedger.load(path).prefix_digests()
    _digest_cache[key] = (identity, digests)
    return digests


def _ledger_files(output_dir: Path) -> list[Path]:
    folder = output_dir / LEDGER_DIR
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if _LEDGER_NAME.match(path.name))


def _check_bound(
    output_dir: Path, bindings: Mapping[str, LedgerBinding], source: str, stop: str
) -> dict[str, list[str]]:
    """Every bound ledger must extend its binding; returns each ledger's prefix digests."""
    found: dict[str, list[str]] = {}
    for name, binding in sorted(bindings.items()):
        path = output_dir / LEDGER_DIR / name
        if not path.exists():
            raise CheckpointError(
                f"privacy ledger {path} is missing, but {source} records {binding.entries} "
                f"release(s) in it; restore the ledger — {stop} would restart its ε from zero"
            )
        try:
            digests = _prefix_digests(path)
        except (LedgerError, OSError) as error:
            raise CheckpointError(f"{error}; {stop} is refused") from None
        count = len(digests) - 1
        if count < binding.entries:
            raise CheckpointError(
                f"privacy ledger {path} has {count} entries, but {source} records "
                f"{binding.entries}; restore the ledger — {stop} would under-report ε"
            )
        if digests[binding.entries] != binding.sha256:
            raise CheckpointError(
                f"privacy ledger {path} does not match {source}: its first {binding.entries} "
                f"entries were changed; restore the ledger — {stop} could under-report ε"
            )
        found[name] = digests
    return found


def bind_ledgers(output_dir: Path) -> dict[str, LedgerBinding]:
    """The binding of every ledger now in the run's `ledgers/` folder."""
    bindings = {}
    for path in _ledger_files(output_dir):
        try:
            digests = _prefix_digests(path)
        except (LedgerError, OSError) as error:
            raise CheckpointError(f"{error}; the checkpoint cannot bind it") from None
        bindings[path.name] = LedgerBinding(len(digests) - 1, digests[-1])
    return bindings


def check_ledgers(output_dir: Path, checkpoint: ServerCheckpoint) -> str | None:
    """Refuse ledgers that do not extend what `checkpoint` bound (one-line CheckpointError).

    Returns a note when the checkpoint (schema 1) binds nothing and only weaker checks were made.
    """
    source = f"{output_dir / CHECKPOINT_FILE} of round {checkpoint.round}"
    if checkpoint.ledgers is not None:
        _check_bound(output_dir, checkpoint.ledgers, source, "continuing")
        return None
    return _check_unbound(output_dir, checkpoint, source)


def _recorded_epsilon(value: object) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _check_unbound(output_dir: Path, checkpoint: ServerCheckpoint, source: str) -> str:
    """A schema-1 checkpoint: ledgers must exist (the server's) and give at least its ε."""
    rounds = checkpoint.results.get("rounds") or []
    last = rounds[-1] if rounds and isinstance(rounds[-1], Mapping) else {}
    accountant = checkpoint.config.get("accountant") or DEFAULT_ACCOUNTANT
    expected: dict[str, float] = {}
    server_epsilon = _recorded_epsilon(last.get("epsilon_client_level"))
    if server_epsilon is not None:
        expected["server.json"] = server_epsilon
    by_client = last.get("epsilon_by_client")
    for client, value in by_client.items() if isinstance(by_client, Mapping) else []:
        epsilon = _recorded_epsilon(value)
        if epsilon is not None and math.isfinite(epsilon):  # ∞: the client's ε was unknown
            expected[f"client-{client}.json"] = epsilon
    for name, epsilon in sorted(expected.items()):
        path = output_dir / LEDGER_DIR / name
        if not path.exists():
            if name != "server.json":
                continue  # a node's ledger may be kept on the node (`ledger-dir`)
            raise CheckpointError(
                f"privacy ledger {path} is missing, but {source} records a client-level ε of "
                f"{epsilon:.6g}; restore the ledger — continuing would restart its ε from zero"
            )
        try:
            replayed = PrivacyLedger.load(path).epsilon(accountant)
        except (LedgerError, AccountingError, ValueError) as error:
            raise CheckpointError(f"{error}; continuing is refused") from None
        if replayed < epsilon and not math.isclose(replayed, epsilon, rel_tol=1e-9):
            raise CheckpointError(
                f"privacy ledger {path} gives ε {replayed:.6g}, below the {epsilon:.6g} that "
                f"{source} records; restore the ledger — continuing would under-report ε"
            )
    return (
        f"{output_dir / CHECKPOINT_FILE} was written by an older Privet and does not bind the "
        "ledgers: checked only that none is missing or below the ε it recorded"
    )


# -- saving and loading -------------------------------------------------------------------------


def save_checkpoint(output_dir: Path, checkpoint: ServerCheckpoint) -> Path:
    """Write the weights, then the JSON that points to them; remove older weight files.

    The ledgers found in `ledgers/` are bound; each ledger the previous checkpoint bound must still
    extend that binding (CheckpointError, and no new checkpoint, if one lost or changed entries).
    """
    previous = _previous_bindings(output_dir)
    if previous:
        _check_bound(output_dir, previous[1], previous[0], "continuing the run")
    bindings = bind_ledgers(output_dir)
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(w) for w in checkpoint.weights])
    payload = buffer.getvalue()
    name = _weights_name(checkpoint.round)
    atomic_write_bytes(output_dir / name, payload)
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "round": checkpoint.round,
        "weights": {"file": name, "sha256": hashlib.sha256(payload).hexdigest()},
        "config": checkpoint.config,
        "strategy": checkpoint.strategy,
        "results": checkpoint.results,
        "ledgers": {key: value.to_json() for key, value in sorted(bindings.items())},
    }
    document["digest"] = _canonical_digest(document)
    path = output_dir / CHECKPOINT_FILE
    atomic_write_text(path, json.dumps(document, indent=1, allow_nan=False))
    for old in output_dir.glob(WEIGHTS_FILE_GLOB):
        if old.name != name:
            old.unlink(missing_ok=True)
    return path


def _previous_bindings(output_dir: Path) -> tuple[str, dict[str, LedgerBinding]] | None:
    """What the checkpoint now on disk bound (None: there is none, or it binds nothing)."""
    if not (output_dir / CHECKPOINT_FILE).exists():
        return None
    document = read_checkpoint(output_dir)
    if document.get("ledgers") is None:
        return None
    source = f"{output_dir / CHECKPOINT_FILE} of round {document['round']}"
    return source, _bindings_from(document["ledgers"])


def _bindings_from(data: Mapping[str, Any]) -> dict[str, LedgerBinding]:
    return {
        name: LedgerBinding(int(value["entries"]), str(value["sha256"]))
        for name, value in data.items()
    }


def _is_count(value: object, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _validate(document: object, path: Path) -> dict[str, Any]:
    """The checkpoint document, if it is one this Privet wrote, undamaged (else CheckpointError)."""

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(
            f"{path} is not a valid Privet checkpoint ({problem}); restore it from a backup or "
            "start a new run"
        )

    if not isinstance(document, dict):
        raise bad(f"expected a JSON object, got {type(document).__name__}")
    version = document.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
        raise CheckpointError(
            f"{path} has schema version {version!r}, this Privet reads "
            f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; resume it with the Privet that "
            "wrote it"
        )
    expected = _KEYS[version]
    missing, extra = sorted(expected - set(document)), sorted(set(document) - expected)
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}")
    if extra:
        raise bad(f"unexpected field(s) {', '.join(extra)}")
    if version >= 2 and document["digest"] != _canonical_digest(document):
        raise CheckpointError(
            f"{path} does not match its digest: the file was damaged or edited; restore it from "
            "a backup or start a new run"
        )
    server_round = document["round"]
    if not _is_count(server_round, 1):
        raise bad(f"round must be a positive integer, got {server_round!r}")
    config, strategy, results = document["config"], document["strategy"], document["results"]
    for key, value in (("config", config), ("strategy", strategy), ("results", results)):
        if not isinstance(value, dict):
            raise bad(f"{key} must be an object")
    # Runs checkpointed before the missing-value policy existed kept every row of a tabular file;
    # "impute" keeps every row too, so their data set sizes (and sampling rates) stay what ran.
    config.setdefault("missing", "impute")
    rounds = config.get("rounds")
    if _is_count(rounds, 1) and server_round > rounds:
        raise bad(f"round {server_round} is beyond the run's {rounds} rounds")
    listed = results.get("rounds")
    numbers = (
        [item.get("round") if isinstance(item, dict) else None for item in listed]
        if isinstance(listed, list)
        else None
    )
    if numbers != list(range(1, server_round + 1)):
        raise bad(f"round {server_round}, but its results hold rounds {numbers}")
    weights = document["weights"]
    if (
        not isinstance(weights, dict)
        or set(weights) != {"file", "sha256"}
        or weights["file"] != _weights_name(server_round)
        or not isinstance(weights["sha256"], str)
        or not _SHA256.match(weights["sha256"])
    ):
        raise bad(f'weights must be {{"file": "{_weights_name(server_round)}", "sha256": ...}}')
    if version >= 2:
        ledgers = document["ledgers"]
        if not isinstance(ledgers, dict):
            raise bad("ledgers must be an object")
        for name, value in ledgers.items():
            if (
                not _LEDGER_NAME.match(name)
                or not isinstance(value, dict)
                or set(value) != {"entries", "sha256"}
                or not _is_count(value["entries"])
                or not isinstance(value["sha256"], str)
                or not _SHA256.match(value["sha256"])
            ):
                raise bad(f"ledger binding {name!r} is malformed")
    return document


def read_checkpoint(output_dir: Path) -> dict[str, Any]:
    """The validated checkpoint.json document of `output_dir` (the weights are not read)."""
    path = output_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist: nothing to resume (a run writes it after its first round)"
        )

    def reject(token: str) -> float:
        raise ValueError(f"the non-JSON number {token}")

    try:
        document = json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a valid Privet checkpoint ({error}); restore it from a backup or "
            "start a new run"
        ) from None
    return _validate(document, path)


def load_checkpoint(output_dir: Path, check: bool = True) -> ServerCheckpoint:
    """Read and verify the checkpoint in `output_dir`; every problem is a one-line error.

    With `check` (the default) the ledgers must extend what the checkpoint bound (`check_ledgers`).
    """
    document = read_checkpoint(output_dir)
    path = output_dir / CHECKPOINT_FILE
    weights_file = output_dir / document["weights"]["file"]
    try:
        payload = weights_file.read_bytes()
    except OSError:
        raise CheckpointError(f"{weights_file} is missing; the checkpoint cannot be used") from None
    if hashlib.sha256(payload).hexdigest() != document["weights"]["sha256"]:
        raise CheckpointError(f"{weights_file} does not match its checksum in {path}")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{weights_file} cannot be read ({error})") from None
    ledgers = document.get("ledgers")
    checkpoint = ServerCheckpoint(
        document["round"],
        document["config"],
        weights,
        document["strategy"],
        document["results"],
        None if ledgers is None else _bindings_from(ledgers),
    )
    if check:
        note = check_ledgers(output_dir, checkpoint)
        if note:
            logger.warning("%s", note)
    return checkpoint


def check_run_ledgers(run_dir: Path) -> str | None:
    """For `privet budget --verify`: the ledgers of a run must extend its checkpoint's bindings.

    One-line CheckpointError if not; returns a note when nothing (or little) could be checked.
    """
    if not (run_dir / CHECKPOINT_FILE).exists():
        return (
            f"{run_dir} has no {CHECKPOINT_FILE}: the ledgers are replayed as found, not checked "
            "against the run's record of them"
        )
    document = read_checkpoint(run_dir)
    ledgers = document.get("ledgers")
    checkpoint = ServerCheckpoint(
        document["round"],
        document["config"],
        [],
        document["strategy"],
        document["results"],
        None if ledgers is None else _bindings_from(ledgers),
    )
    source = f"{run_dir / CHECKPOINT_FILE} of round {checkpoint.round}"
    if checkpoint.ledgers is not None:
        _check_bound(run_dir, checkpoint.ledgers, source, "trusting its ε")
        return None
    return _check_unbound(run_dir, checkpoint, source)


def check_same_run(checkpoint: ServerCheckpoint, config: RunConfig) -> None:
    """Refuse to resume with a configuration other than the checkpointed run's."""
    now = config.to_json_dict()
    for key, value in checkpoint.config.items():
        if key in IGNORED_ON_RESUME:
            continue
        if now.get(key) != value:
            raise CheckpointError(
                f"the checkpoint was made with {key}={value!r}, this run has {key}="
                f"{now.get(key)!r}; resume with the run's own configuration"
            )


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy generator's state as JSON-ready data."""
    return dict(rng.bit_generator.state)


def restore_generator(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Put a generator back in a saved state (the same bit generator kind)."""
    rng.bit_generator.state = state


__all__ = [
    "CHECKPOINT_FILE",
    "IGNORED_ON_RESUME",
    "REPLACED_DIR",
    "RUN_LOCK_FILE",
    "SCHEMA_VERSION",
    "CheckpointError",
    "InUseError",
    "LedgerBinding",
    "ServerCheckpoint",
    "bind_ledgers",
    "check_ledgers",
    "check_run_ledgers",
    "check_same_run",
    "generator_state",
    "load_checkpoint",
    "lock_run_folder",
    "read_checkpoint",
    "restore_generator",
    "save_checkpoint",
    "set_aside_run",
]
