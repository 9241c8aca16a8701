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

    {"schema_version": 3, "owner": "client-0", "level": "example", "delta": 1e-05,
     "epsilon_rdp": 1.23,                      # informational only; never read back
     "runs": [{"run": "9f2c...", "delta": 1e-05}, ...],
     "entries": [{"round": 1, "recorded_at": 1764067512.5, "run": "9f2c...",
                  "event": {"type": "poisson_gaussian_steps", "noise_multiplier": 1.1,
                            "sample_rate": 0.01, "steps": 100}}, ...]}

Runs. A ledger outlives a run: a deployment node keeps one ledger for its data for good, so it
holds the releases of every run the node took part in, and its ε composes them all (the node's
*lifetime* ε). Each entry names the run it belongs to by the run's token (the server makes one
when a run starts fresh and keeps it across resumes), so a run's *own* ε is the composition of
its entries alone. Entries without a token (written before runs were tagged, or for a server that
sends none) form one untagged run, read as "earlier runs" by any tagged one. "runs" lists every
run in order of its first entry with the δ that run used. The events are δ-free (RDP, PLD and
PRV all compose them without δ), so a run may use another δ than the last: the ledger's "delta"
is the δ of its latest run, the one its lifetime ε is reported at, and each run's own ε is
reported at its own δ.

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

Schema history. Version 3 tags each entry with its run (optional "run") and lists the runs with
their δ ("runs"); an entry without a run reads as one of the earlier, untagged runs, so versions
1 and 2 read unchanged, as one untagged run at the file's δ, and their entries keep their digests
(an untagged entry is written exactly as version 2 wrote it).

Version 2 records adaptive clipping's count query as the mechanism ran it (``count_noise_std``
and ``count_sensitivity``). Version 1 recorded a ``count_noise_multiplier`` of
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
import re
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

LEDGER_SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
_LEDGER_KEYS = {"schema_version", "owner", "level", "delta", "entries", "epsilon_rdp", "runs"}
_OPTIONAL_LEDGER_KEYS = {"epsilon_rdp", "runs"}
_ENTRY_KEYS = {"round", "event", "recorded_at"}
_OPTIONAL_ENTRY_KEYS = {"run"}
RUN_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What a run token may look like (the server writes 32 hex digits)."""
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
    """One release: the privacy event, the round and run it belongs to, and when it was recorded.

    `run` is the run's token; None for an untagged entry (an earlier run, see the module's notes).
    """

    round: int
    event: PrivacyEvent
    recorded_at: float
    run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready mapping (an untagged entry exactly as version 2 wrote it)."""
        data: dict[str, Any] = {
            "round": self.round,
            "recorded_at": self.recorded_at,
            "event": self.event.to_dict(),
        }
        if self.run is not None:
            data["run"] = self.run
        return data

    @classmethod
    def from_dict(cls, data: object) -> LedgerEntry:
        """Inverse of `to_dict`; LedgerError on anything malformed."""
        if not isinstance(data, Mapping):
            raise LedgerError(f"an entry must be a JSON object, got {data!r}")
        if not _ENTRY_KEYS <= set(data) <= _ENTRY_KEYS | _OPTIONAL_ENTRY_KEYS:
            raise LedgerError(
                f"an entry has the fields {', '.join(sorted(_ENTRY_KEYS))} (and optionally "
                f"run), got {', '.join(sorted(map(str, data)))}"
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
        run = _check_run(data.get("run"))
        return cls(_check_round(data["round"]), event, float(recorded_at), run)


def _check_run(value: object) -> str | None:
    """A run token (or None: untagged); LedgerError for anything else."""
    if value is None:
        return None
    if not isinstance(value, str) or not RUN_TOKEN_PATTERN.match(value):
        raise LedgerError(
            f"a run token must be 1 to 64 letters, digits, '-' or '_', got {str(value)[:70]!r}"
        )
    return value


def _check_delta(value: object, what: str) -> float:
    """A δ in (0, 1) as a float; LedgerError naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < float(value) < 1:
        raise LedgerError(f"{what} must be a number in (0, 1), got {value!r}")
    return float(value)


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


def _steps(entries: Iterable[LedgerEntry]) -> int:
    return sum(
        entry.event.steps for entry in entries if isinstance(entry.event, PoissonGaussianSteps)
    )


def _run_name(token: str | None) -> str:
    return "the untagged (earlier) runs" if token is None else f"run {token}"


def _runs_from(data: object, version: int, ledger: PrivacyLedger) -> dict[str | None, float]:
    """The runs of a ledger file: its "runs" list (version 3), else one untagged run at its δ.

    Every run an entry names must be listed, once (a listed run whose entries were lost is kept:
    the digests, not this list, tell whether entries were lost).
    """
    used = list(dict.fromkeys(entry.run for entry in ledger.entries))
    if version < 3 or data is None:
        if version >= 3 and used:
            raise LedgerError("the ledger has entries but no 'runs' list")
        return {None: ledger.delta} if used else {}
    if not isinstance(data, list):
        raise LedgerError(f"'runs' must be a list, got {type(data).__name__}")
    runs: dict[str | None, float] = {}
    for index, item in enumerate(data):
        if not isinstance(item, Mapping) or set(item) != {"run", "delta"}:
            raise LedgerError(f"runs[{index}] must be an object with 'run' and 'delta'")
        token = _check_run(item["run"])
        if token in runs:
            raise LedgerError(f"runs[{index}]: {_run_name(token)} is listed twice")
        runs[token] = _check_delta(item["delta"], f"runs[{index}].delta")
    unlisted = [token for token in used if token not in runs]
    if unlisted:
        raise LedgerError(
            f"entries name {_run_name(unlisted[0])}, which 'runs' does not list (with its delta)"
        )
    return runs


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
        self.owner: str = owner
        self.level: Level = level
        self.delta: float = _check_delta(delta, "a ledger's delta")
        """The δ of the latest run: the one `epsilon` (the lifetime ε) is reported at."""
        self.path: Path | None = None if path is None else Path(path)
        self._entries: list[LedgerEntry] = []
        self._runs: dict[str | None, float] = {}
        """Each run (token; None: untagged) in order of its first entry, with the δ it used."""
        for index, entry in enumerate(entries):
            if not isinstance(entry, LedgerEntry):
                raise LedgerError(f"entry {index} is not a LedgerEntry: {entry!r}")
            self._check_event(entry.event)
            self._runs.setdefault(entry.run, self.delta)
            self._entries.append(entry)
        self._epsilon_cache: dict[tuple[str, int, float, str | None, bool], float] = {}
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

    def record(self, round: int, events: Iterable[PrivacyEvent], run: str | None = None) -> None:
        """Append `events` as releases of `round` of run `run`; with a `path`, write them first.

        This is the write-ahead step: call it before the result of the release leaves the process.
        If the write fails, the exception propagates and the ledger (in memory and on disk) is
        unchanged, so the caller must not release. A run records at one δ (the ledger's `delta`
        when its first entry is written); recording more of it at another δ is a LedgerError.
        """
        round_number = _check_round(round)
        token = _check_run(run)
        known = self._runs.get(token)
        if known is not None and known != self.delta:
            raise LedgerError(
                f"ledger {self.owner!r}: {_run_name(token)} recorded its releases at delta "
                f"{known:g}, not {self.delta:g}; continue a run with its own delta "
                + (
                    "(resume it unchanged)"
                    if token is not None
                    else "(untagged releases come from a server that sends no run token: "
                    "upgrade the server, whose runs are then told apart)"
                )
            )
        now = time.time()
        added = [
            LedgerEntry(round_number, self._check_event(event), now, token) for event in events
        ]
        if not added:
            return
        entries = self._entries + added
        runs = dict(self._runs)
        runs.setdefault(token, self.delta)
        if self.path is not None:
            self._write(self.path, entries, runs)
        self._entries = entries
        self._runs = runs

    def copy_as(self, owner: str, path: str | os.PathLike[str]) -> PrivacyLedger:
        """A new ledger of `owner` at `path` with this one's entries and runs (not yet written).

        For carrying a record over to a ledger under another name: nothing it holds is lost.
        """
        copy = PrivacyLedger(owner, self.level, self.delta, path, self._entries)
        copy._runs = dict(self._runs)
        return copy

    def use_delta(self, delta: float) -> None:
        """Report at `delta` from now on: the δ of the run that is about to record.

        The events are δ-free, so earlier runs at another δ compose with this one; the lifetime
        ε (`epsilon`) is then reported at the new δ. Nothing is written until the next record.
        """
        self.delta = _check_delta(delta, "delta")

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
        """Total DP-SGD steps recorded, every run (example level; 0 for a client-level ledger)."""
        return _steps(self._entries)

    def rounds(self) -> list[int]:
        """The distinct rounds that have recorded releases, ascending (every run)."""
        return sorted({entry.round for entry in self._entries})

    def epsilon(self, accountant: str | Accountant = DEFAULT_ACCOUNTANT) -> float:
        """Lifetime ε: at the ledger's δ over every recorded release of every run."""
        return self._cached(accountant, self.delta, None, everything=True)

    # -- runs -----------------------------------------------------------------------------------

    def runs(self) -> list[tuple[str | None, float]]:
        """(token, δ) of every run with entries, in order of its first entry (None: untagged)."""
        return [(token, delta) for token, delta in self._runs.items()]

    def run_delta(self, run: str | None) -> float:
        """The δ run `run` recorded at (the ledger's δ for a run with no entries yet)."""
        return self._runs.get(run, self.delta)

    def run_entries(self, run: str | None) -> list[LedgerEntry]:
        """The entries of run `run` (None: the untagged ones), in order."""
        return [entry for entry in self._entries if entry.run == run]

    def run_events(self, run: str | None) -> list[PrivacyEvent]:
        """The events of run `run` alone."""
        return [entry.event for entry in self.run_entries(run)]

    def run_steps(self, run: str | None) -> int:
        """DP-SGD steps of run `run` alone."""
        return _steps(self.run_entries(run))

    def run_rounds(self, run: str | None) -> list[int]:
        """The distinct rounds run `run` recorded releases in, ascending."""
        return sorted({entry.round for entry in self.run_entries(run)})

    def only_run(self, run: str | None) -> bool:
        """True when every entry belongs to run `run` (then its ε is the lifetime ε)."""
        return all(entry.run == run for entry in self._entries)

    def run_epsilon(
        self,
        run: str | None,
        accountant: str | Accountant = DEFAULT_ACCOUNTANT,
        delta: float | None = None,
    ) -> float:
        """The run's own ε: its entries alone, at `delta` (default: the δ the run used)."""
        at = self.run_delta(run) if delta is None else _check_delta(delta, "delta")
        return self._cached(accountant, at, run, everything=False)

    def run_epsilon_if_bounded(
        self,
        run: str | None,
        extra_events: Iterable[PrivacyEvent],
        accountant: str | Accountant = DEFAULT_ACCOUNTANT,
    ) -> float:
        """The run's own ε at the ledger's δ if `extra_events` were released too (∞: unbounded)."""
        extra = [self._check_event(event) for event in extra_events]
        try:
            return epsilon_for(self.run_events(run) + extra, self.delta, accountant)
        except AccountingError:
            return math.inf

    def _cached(
        self, accountant: str | Accountant, delta: float, run: str | None, everything: bool
    ) -> float:
        events = self.events() if everything else self.run_events(run)
        if not isinstance(accountant, str):
            return epsilon_for(events, delta, accountant)
        key = (accountant, len(self._entries), delta, run, everything)
        if key not in self._epsilon_cache:
            self._epsilon_cache[key] = epsilon_for(events, delta, accountant)
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

    def _json_for(
        self, entries: list[LedgerEntry], runs: Mapping[str | None, float]
    ) -> dict[str, Any]:
        events = [entry.event for entry in entries]
        return {
            "schema_version": LEDGER_SCHEMA_VERSION,
            "owner": self.owner,
            "level": self.level,
            "delta": self.delta,
            "epsilon_rdp": _informational_rdp_epsilon(events, self.delta),
            "runs": [{"run": token, "delta": delta} for token, delta in runs.items()],
            "entries": [entry.to_dict() for entry in entries],
        }

    def _dumps(self, entries: list[LedgerEntry], runs: Mapping[str | None, float]) -> str:
        return json.dumps(self._json_for(entries, runs), indent=1, allow_nan=False) + "\n"

    def to_json(self) -> dict[str, Any]:
        """The ledger as a JSON-ready mapping (with an informational "epsilon_rdp")."""
        return self._json_for(self._entries, self._runs)

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
        required = _LEDGER_KEYS - _OPTIONAL_LEDGER_KEYS
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
            if version < 3 and entry.run is not None:
                raise LedgerError(f"entry {index}: a version-{version} ledger has no run tokens")
            ledger._entries.append(entry)
        ledger._runs = _runs_from(data.get("runs"), version, ledger)
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
        self._write(target, self._entries, self._runs)
        return target

    def _write(
        self, target: Path, entries: list[LedgerEntry], runs: Mapping[str | None, float]
    ) -> None:
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
            atomic_write_text(target, self._dumps(entries, runs))
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
