"""The privacy ledger: every release one party made, written ahead of the release itself.

A ledger belongs to one owner (a client for example-level DP-SGD, the server for client-level
DP-FedAvg) and lists what it released, round by round, as privacy events. ε is always recomputed
from the whole list, so it is cumulative over the run and can be replayed by anyone who has the
file (`privet budget --verify`).

Write-ahead: `PrivacyLedger.record` returns only after the new ledger is on disk (atomically, see
`privacy.storage`), and callers record a release *before* its result leaves the process. A crash
at any moment therefore leaves a ledger that covers everything that was sent, possibly plus one
release that never left (over-reporting, never under-reporting).

File format (JSON, strict: no NaN or Infinity tokens; ∞ is written as the string "inf")::

    {"schema_version": 2, "owner": "client-0", "level": "example", "delta": 1e-05,
     "epsilon_rdp": 1.23,                      # informational only; never read back
     "entries": [{"round": 1, "recorded_at": 1764067512.5,
                  "event": {"type": "poisson_gaussian_steps", "noise_multiplier": 1.1,
                            "sample_rate": 0.01, "steps": 100}}, ...]}

An entry's event is any registered privacy event (`privacy.events.register_event`), written by its
own `to_dict` under its kind; reading a file that names a kind no module has registered is a
one-line LedgerError naming the kind. "epsilon_rdp" is null when the RDP accountant does not
support every recorded event.

One writer: a ledger file has one writer at a time. `ledger_lock(path)` is the lock a writer
holds from reading the ledger to its last record (a second writer is refused, naming the first
one's PID), and `record`/`save` refuse to overwrite a file that changed on disk since this object
read or wrote it, or that exists but was never read: two writers can never lose each other's
releases, and a ledger is never replaced by a fresh one.

Binding: `digest(count)` is a SHA-256 over the owner, level, δ and the first `count` entries in a
canonical form; the server's checkpoint records (count, digest) for each ledger of the run, and a
ledger must *extend* that prefix (it may have grown since, by a write-ahead entry of a round that
was cut short, but never lose or change an entry).

Schema history. Version 2 records adaptive clipping's count query as the mechanism ran it
(``count_noise_std`` and ``count_sensitivity``). Version 1 recorded a ``count_noise_multiplier`` of
2·σ_b, which assumed the centred count (sensitivity ½), while the code that wrote version 1
released the raw count (sensitivity 1). A version-1 ledger is therefore read back as what really
ran, σ_b = multiplier/2 at sensitivity 1, which raises its ε; `PrivacyLedger.corrections` says so,
and the next write stores version 2.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from privet.privacy.accountants import (
    DEFAULT_ACCOUNTANT,
    Accountant,
    AccountingError,
    epsilon_for,
    get_accountant,
)
from privet.privacy.events import (
    CLIENT_LEVEL_ROUND,
    LEVELS,
    Level,
    PoissonGaussianSteps,
    PrivacyEvent,
    event_from_dict,
    event_level,
    registered_kind,
)
from privet.privacy.storage import (
    FileLock,
    LockError,
    atomic_write_text,
    lock_file_for,
    make_private_folder,
    remove_stale_temporaries,
)

LEDGER_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
_LEDGER_KEYS = {"schema_version", "owner", "level", "delta", "entries", "epsilon_rdp"}
_ENTRY_KEYS = {"round", "event", "recorded_at"}
LEDGER_DIR = "ledgers"
"""The folder of a run that holds its ledgers (the server's, and its clients' in a simulation)."""
WRITE_LOCK_WAIT_S = 10.0
"""How long one write waits for the ledger's lock (held only for a write, or by this writer)."""
_DIGEST_TAG = b"privet-ledger-digest-v1\n"


class LedgerError(ValueError):
    """A ledger that cannot be read or that would not describe a valid release history."""


def _json_number(value: float) -> float | str:
    """JSON has no infinity: write it as the string "inf" rather than an invalid token."""
    return "inf" if math.isinf(value) else value


def _canonical(value: object) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, floats as Python writes them."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def ledger_lock(path: str | os.PathLike[str]) -> FileLock:
    """The lock a ledger's writer holds (not yet acquired): `.<name>.lock` beside the ledger."""
    return FileLock(lock_file_for(path), f"privacy ledger {path}")


def remove_stale_ledger_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files of interrupted writes of the ledger `path`.

    The caller must hold `ledger_lock(path)`: then no write of that ledger is in flight.
    """
    target = Path(path)
    return remove_stale_temporaries(target.parent, lambda name: name == target.name)


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    """What changes whenever a file is replaced or rewritten."""
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def _disk_identity(path: Path) -> tuple[int, int, int, int] | None:
    """`_identity` of the file at `path` (None: there is no file)."""
    try:
        return _identity(os.stat(path))
    except FileNotFoundError:
        return None


def _check_round(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise LedgerError(f"a round must be a non-negative integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LedgerEntry:
    """One release: the privacy event, the round it belongs to, and when it was recorded."""

    round: int
    event: PrivacyEvent
    recorded_at: float

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready mapping."""
        return {"round": self.round, "recorded_at": self.recorded_at, "event": self.event.to_dict()}

    @classmethod
    def from_dict(cls, data: object) -> LedgerEntry:
        """Inverse of `to_dict`; LedgerError on anything malformed."""
        if not isinstance(data, Mapping):
            raise LedgerError(f"an entry must be a JSON object, got {data!r}")
        if set(data) != _ENTRY_KEYS:
            raise LedgerError(
                f"an entry has the fields {', '.join(sorted(_ENTRY_KEYS))}, "
                f"got {', '.join(sorted(map(str, data)))}"
            )
        recorded_at = data["recorded_at"]
        if (
            isinstance(recorded_at, bool)
            or not isinstance(recorded_at, Real)
            or not math.isfinite(recorded_at)
        ):
            raise LedgerError(f"recorded_at must be a finite number, got {recorded_at!r}")
        try:
            event = event_from_dict(data["event"])
        except ValueError as error:
            raise LedgerError(str(error)) from None
        return cls(_check_round(data["round"]), event, float(recorded_at))


def _informational_rdp_epsilon(events: list[PrivacyEvent], delta: float) -> float | str | None:
    """The "epsilon_rdp" a ledger file shows; None when the RDP accountant cannot account it.

    It is informational only (never read back), so a ledger holding an event that only another
    accountant supports is still written.
    """
    accountant = get_accountant("rdp")
    if not all(accountant.supports(event) for event in events):
        return None
    return _json_number(accountant.epsilon(events, delta))


def _entry_from_schema_1(item: object) -> tuple[object, bool]:
    """A version-1 entry in version-2 form, and whether its charge went up.

    Version 1's client-level event had ``count_noise_multiplier`` = 2·σ_b where the code released
    Σ b_i + N(0, σ_b²), a query of sensitivity 1: it becomes σ_b at sensitivity 1.
    """
    if not isinstance(item, Mapping) or not isinstance(item.get("event"), Mapping):
        return item, False
    event = dict(item["event"])
    if event.get("type") != CLIENT_LEVEL_ROUND or "count_noise_multiplier" not in event:
        return item, False
    multiplier = event.pop("count_noise_multiplier")
    if multiplier is None:
        event.update(count_noise_std=None, count_sensitivity=None)
        return {**item, "event": event}, False
    if isinstance(multiplier, bool) or not isinstance(multiplier, Real):
        raise LedgerError(f"count_noise_multiplier must be a number, got {multiplier!r}")
    event.update(count_noise_std=float(multiplier) / 2, count_sensitivity=1.0)
    return {**item, "event": event}, True


class PrivacyLedger:
    """The releases of one owner at one level (example or client), and the ε they add up to."""

    def __init__(
        self,
        owner: str,
        level: Level,
        delta: float,
        path: str | os.PathLike[str] | None = None,
        entries: Iterable[LedgerEntry] = (),
    ) -> None:
        if not isinstance(owner, str) or not owner:
            raise LedgerError(f"a ledger's owner must be a non-empty string, got {owner!r}")
        if level not in LEVELS:
            raise LedgerError(f"a ledger's level must be 'example' or 'client', got {level!r}")
        if isinstance(delta, bool) or not isinstance(delta, Real) or not 0 < delta < 1:
            raise LedgerError(f"a ledger's delta must be a number in (0, 1), got {delta!r}")
        self.owner: str = owner
        self.level: Level = level
        self.delta: float = float(delta)
        self.path: Path | None = None if path is None else Path(path)
        self._entries: list[LedgerEntry] = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, LedgerEntry):
                raise LedgerError(f"entry {index} is not a LedgerEntry: {entry!r}")
            self._check_event(entry.event)
            self._entries.append(entry)
        self._epsilon_cache: dict[tuple[str, int], float] = {}
        self._on_disk: tuple[Path, tuple[int, int, int, int]] | None = None
        """The file this object last read or wrote, as it was then (see `_write`)."""
        self.corrections: list[str] = []
        """What reading an older schema changed about the recorded releases (empty: nothing)."""

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(owner={self.owner!r}, level={self.level!r}, delta={self.delta!r}, "
            f"path={self.path!r}, entries={len(self._entries)})"
        )

    def _check_event(self, event: object) -> PrivacyEvent:
        """The event itself, if it is a registered privacy event of this ledger's level.

        Only registered event types are accepted, so that every entry can be read back.
        """
        if not isinstance(event, PrivacyEvent):
            raise LedgerError(f"expected a privacy event (a PrivacyEvent), got {event!r}")
        try:
            registered_kind(event)
        except TypeError as error:
            raise LedgerError(str(error)) from None
        level = event_level(event)
        if level != self.level:
            raise LedgerError(
                f"ledger {self.owner!r} is {self.level} level and cannot hold a {level}-level "
                f"event ({type(event).__name__}); use a separate ledger per level"
            )
        return event

    # -- recording ------------------------------------------------------------------------------

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every release recorded so far, in order."""
        return tuple(self._entries)

    def record(self, round: int, events: Iterable[PrivacyEvent]) -> None:
        """Append `events` as releases of `round`; with a `path`, write the ledger before returning.

        This is the write-ahead step: call it before the result of the release leaves the process.
        If the write fails, the exception propagates and the ledger (in memory and on disk) is
        unchanged, so the caller must not release.
        """
        round_number = _check_round(round)
        now = time.time()
        added = [LedgerEntry(round_number, self._check_event(event), now) for event in events]
        if not added:
            return
        entries = self._entries + added
        if self.path is not None:
            self._write(self.path, entries)
        self._entries = entries

    # -- queries --------------------------------------------------------------------------------

    def events(self) -> list[PrivacyEvent]:
        """Every recorded event, in order."""
        return [entry.event for entry in self._entries]

    def prefix_digests(self) -> list[str]:
        """`digest(k)` for every k from 0 to the number of entries, in one pass."""
        header = {"owner": self.owner, "level": self.level, "delta": self.delta}
        running = hashlib.sha256(_DIGEST_TAG + _canonical(header) + b"\n")
        digests = [running.hexdigest()]
        for entry in self._entries:
            running.update(_canonical(entry.to_dict()) + b"\n")
            digests.append(running.hexdigest())
        return digests

    def digest(self, count: int | None = None) -> str:
        """SHA-256 of the owner, level, δ and the first `count` entries (default: all)."""
        count = len(self._entries) if count is None else count
        if not 0 <= count <= len(self._entries):
            raise LedgerError(
                f"ledger {self.owner!r} has {len(self._entries)} entries, not {count}"
            )
        return self.prefix_digests()[count]

    def extends(self, count: int, digest: str) -> bool:
        """True when this ledger's first `count` entries are the ones `digest` was taken of."""
        return count <= len(self._entries) and self.digest(count) == digest

    def steps(self) -> int:
        """Total DP-SGD steps recorded (example level; 0 for a client-level ledger)."""
        return sum(
            entry.event.steps
            for entry in self._entries
            if isinstance(entry.event, PoissonGaussianSteps)
        )

    def rounds(self) -> list[int]:
        """The distinct rounds that have recorded releases, ascending."""
        return sorted({entry.round for entry in self._entries})

    def epsilon(self, accountant: str | Accountant = DEFAULT_ACCOUNTANT) -> float:
        """Cumulative ε at the ledger's δ over every recorded release."""
        if not isinstance(accountant, str):
            return epsilon_for(self.events(), self.delta, accountant)
        key = (accountant, len(self._entries))
        if key not in self._epsilon_cache:
            self._epsilon_cache[key] = epsilon_for(self.events(), self.delta, accountant)
        return self._epsilon_cache[key]

    def epsilon_if(
        self,
        extra_events: Iterable[PrivacyEvent],
        accountant: str | Accountant = DEFAULT_ACCOUNTANT,
    ) -> float:
        """ε if `extra_events` were released too: the budget check to run before the work."""
        extra = [self._check_event(event) for event in extra_events]
        return epsilon_for(self.events() + extra, self.delta, accountant)

    def epsilon_if_bounded(
        self,
        extra_events: Iterable[PrivacyEvent],
        accountant: str | Accountant = DEFAULT_ACCOUNTANT,
    ) -> float:
        """Like `epsilon_if`, but ∞ when the accountant cannot bound ε for the plan.

        Budget checks use this: a release whose cost cannot be bounded is never allowed.
        """
        try:
            return self.epsilon_if(extra_events, accountant)
        except AccountingError:
            return math.inf

    # -- JSON -----------------------------------------------------------------------------------

    def _json_for(self, entries: list[LedgerEntry]) -> dict[str, Any]:
        events = [entry.event for entry in entries]
        return {
            "schema_version": LEDGER_SCHEMA_VERSION,
            "owner": self.owner,
            "level": self.level,
            "delta": self.delta,
            "epsilon_rdp": _informational_rdp_epsilon(events, self.delta),
            "entries": [entry.to_dict() for entry in entries],
        }

    def _dumps(self, entries: list[LedgerEntry]) -> str:
        return json.dumps(self._json_for(entries), indent=1, allow_nan=False) + "\n"

    def to_json(self) -> dict[str, Any]:
        """The ledger as a JSON-ready mapping (with an informational "epsilon_rdp")."""
        return self._json_for(self._entries)

    @classmethod
    def from_json(cls, data: object) -> PrivacyLedger:
        """Inverse of `to_json` (without a path); LedgerError naming what is malformed."""
        if not isinstance(data, Mapping):
            raise LedgerError(f"a ledger must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS or isinstance(version, bool):
            raise LedgerError(
                f"schema version {version!r} is not one this Privet reads "
                f"({', '.join(map(str, READABLE_SCHEMA_VERSIONS))}); open it with the Privet "
                "version that wrote it"
            )
        required = _LEDGER_KEYS - {"epsilon_rdp"}
        missing = sorted(required - set(data))
        if missing:
            raise LedgerError(f"the ledger lacks field(s) {', '.join(missing)}")
        extra = sorted(str(key) for key in set(data) - _LEDGER_KEYS)
        if extra:
            raise LedgerError(f"the ledger has unexpected field(s) {', '.join(extra)}")
        entries_data = data["entries"]
        if not isinstance(entries_data, list):
            raise LedgerError(f"'entries' must be a list, got {type(entries_data).__name__}")
        ledger = cls(data["owner"], data["level"], data["delta"])
        recharged = 0
        for index, item in enumerate(entries_data):
            try:
                if version == 1:
                    item, changed = _entry_from_schema_1(item)
                    recharged += changed
                entry = LedgerEntry.from_dict(item)
                ledger._check_event(entry.event)
            except LedgerError as error:
                raise LedgerError(f"entry {index}: {error}") from None
            ledger._entries.append(entry)
        if recharged:
            ledger.corrections.append(
                f"{recharged} adaptive-clipping round(s) written by an older Privet were charged "
                "as a centred count (sensitivity 1/2) but released the raw count (sensitivity "
                "1); they are re-charged at sensitivity 1"
            )
        return ledger

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the ledger atomically to `path` (default: its own path); return where.

        Like `record`, it refuses to overwrite a ledger file it did not read (see `_write`).
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise LedgerError(f"ledger {self.owner!r} has no path; pass one to save()")
        self._write(target, self._entries)
        return target

    def _write(self, target: Path, entries: list[LedgerEntry]) -> None:
        """Write `entries` to `target` under its lock, if the file is what this object last saw.

        A file that is not the one this object last read or wrote (another process replaced it,
        or it existed before and was never read) is never overwritten: one of two writers would
        lose the other's releases, or a ledger would start again from nothing.
        """
        target = Path(os.path.abspath(target))
        make_private_folder(target.parent)
        lock = ledger_lock(target)
        try:
            lock.acquire(wait=WRITE_LOCK_WAIT_S)
        except LockError as error:
            raise LedgerError(str(error)) from None
        try:
            found = _disk_identity(target)
            known = self._on_disk[1] if self._on_disk and self._on_disk[0] == target else None
            if found is not None and found != known:
                if known is None:
                    raise LedgerError(
                        f"privacy ledger {target} already exists and this process did not read "
                        "it; refusing to overwrite it (its releases would be lost) — load it to "
                        "continue it, or write to a new folder"
                    )
                raise LedgerError(
                    f"privacy ledger {target} was changed by another process since this one read "
                    "it; refusing to overwrite it (one of two writers would lose releases) — stop "
                    "the other writer, then resume the run"
                )
            atomic_write_text(target, self._dumps(entries))
            identity = _disk_identity(target)
            self._on_disk = None if identity is None else (target, identity)
        finally:
            lock.release()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Read a ledger file; further records go to the same file. One-line LedgerError if bad."""
        source = Path(path)

        def reject(constant: str) -> float:
            raise ValueError(f"the non-JSON number {constant}")

        try:
            with source.open("rb") as handle:  # the identity of exactly the file that is read
                identity = _identity(os.fstat(handle.fileno()))
                text = handle.read().decode("utf-8")
        except FileNotFoundError:
            raise LedgerError(
                f"privacy ledger {source} does not exist; check the path (ledgers are in the "
                "run's ledgers/ folder)"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise LedgerError(f"privacy ledger {source} cannot be read: {error}") from None
        try:
            data = json.loads(text, parse_constant=reject)
        except json.JSONDecodeError as error:
            raise LedgerError(
                f"privacy ledger {source} is not valid JSON ({error.msg} at line {error.lineno}); "
                "restore it from a checkpoint"
            ) from None
        except ValueError as error:
            raise LedgerError(
                f"privacy ledger {source} is not strict JSON ({error}); restore it from a "
                "checkpoint"
            ) from None
        try:
            ledger = cls.from_json(data)
        except LedgerError as error:
            raise LedgerError(f"privacy ledger {source}: {error}") from None
        ledger.path = source
        ledger._on_disk = (Path(os.path.abspath(source)), identity)
        return ledger
