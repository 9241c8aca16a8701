"""The run folder: every file a run (or a sweep) writes, named once, and results.json read once.

A run folder holds::

    results.json                 what the run recorded (`read_results`; written by server.results)
    model.pt                     the final model's state dict
    checkpoint.json              the last finished round (server.checkpoint)
    checkpoint-model-<N>.npz     the global model after round N, named by checkpoint.json
    ledgers/                     the privacy ledgers: server.json, client-<id>.json
    .privet.lock                 the writer's lock (one process writes a run folder)
    replaced/<time>/             an earlier run's files, set aside by --overwrite or a sweep retry
    error.txt                    a sweep run's failure, one line
    report.html                  `privet report`'s page
    audit.json                   `privet audit`'s bound beside the accounted ε (audit runs only)

and a sweep folder ``sweep.json``, ``sweep.csv`` and ``runs/<run>/`` (one run folder each).
Every module that names one of these files takes the name from here, so that moving a file is
one edit and a reader can never look for a file under a name the writer no longer uses.

results.json is parsed in exactly one place, `read_results`: it checks the file is a JSON object,
reads its `schema_version` (files written before Privet recorded one are version 1; both read the
same), and gives typed access to what the report, the sweep table, `privet budget --verify`,
resume and the engines need, each value checked when it is first asked for. A missing,
truncated or malformed file, or a wrong value, is a `ResultsError` whose message is one line
naming the file, the problem and what to do. `ResultsFile.raw` keeps the whole mapping for
anything that has no typed accessor yet.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_FILE",
    "ERROR_FILE",
    "MODEL_FILE",
    "NOT_PRIVET",
    "READABLE_RESULTS_VERSIONS",
    "REPLACED_DIR",
    "REPORT_FILE",
    "RESULTS_FILE",
    "RESULTS_SCHEMA_VERSION",
    "RUN_LOCK_FILE",
    "SERVER_LEDGER_OWNER",
    "SWEEP_FILE",
    "SWEEP_FORMAT",
    "SWEEP_RUNS_DIR",
    "SWEEP_TABLE_FILE",
    "SWEEP_VERSION",
    "WEIGHTS_FILE_GLOB",
    "WEIGHTS_FILE_NAME",
    "ClientData",
    "ClientLevelData",
    "JsonFields",
    "LedgerSummary",
    "PrivacySummary",
    "ResultsError",
    "ResultsFile",
    "RoundData",
    "RunFolder",
    "read_json",
    "read_results",
    "weights_file_name",
]

# -- the layout ------------------------------------------------------------------------------

RESULTS_FILE = "results.json"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.json"
_WEIGHTS_PREFIX, _WEIGHTS_SUFFIX = "checkpoint-model-", ".npz"
WEIGHTS_FILE_GLOB = f"{_WEIGHTS_PREFIX}*{_WEIGHTS_SUFFIX}"
WEIGHTS_FILE_NAME = re.compile(rf"^{re.escape(_WEIGHTS_PREFIX)}\d+{re.escape(_WEIGHTS_SUFFIX)}$")
RUN_LOCK_FILE = ".privet.lock"
REPLACED_DIR = "replaced"
ERROR_FILE = "error.txt"
REPORT_FILE = "report.html"
AUDIT_FILE = "audit.json"
SERVER_LEDGER_OWNER = "server"
_LEDGER_SUFFIX = ".json"

SWEEP_FILE = "sweep.json"
SWEEP_TABLE_FILE = "sweep.csv"
SWEEP_RUNS_DIR = "runs"
SWEEP_FORMAT = "privet-sweep"
SWEEP_VERSION = 1

RESULTS_SCHEMA_VERSION = 3
"""3: a client's `epsilon`, `steps` and `rounds_participated` are the run's own, beside its
`lifetime_epsilon`, `lifetime_steps` and `ledger` summary, and `privacy` has
`lifetime_epsilon_max` and `run_token` (before, a node's ledger carried over between runs was
mixed into the run's figures); 2: results.json records `schema_version`; 1: the same content as
2, written before it did. Every version reads: what an older file lacks reads as the run's."""
READABLE_RESULTS_VERSIONS = (1, 2, 3)


def __getattr__(name: str) -> Any:
    """`LEDGER_DIR` ("ledgers/"), imported from privacy.ledger on first use.

    privacy.ledger owns the name because clients write ledgers too and the client never imports
    the server; importing it lazily keeps this module (and the command line's help) light.
    """
    if name == "LEDGER_DIR":
        from privet.privacy.ledger import LEDGER_DIR

        return LEDGER_DIR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def weights_file_name(server_round: int) -> str:
    """The checkpoint's weights file of `server_round` (a name inside the run folder)."""
    return f"{_WEIGHTS_PREFIX}{server_round}{_WEIGHTS_SUFFIX}"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is created or read here)."""

    path: Path

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def ledgers(self) -> Path:
        from privet.privacy.ledger import LEDGER_DIR

        return self.path / LEDGER_DIR

    @property
    def lock(self) -> Path:
        return self.path / RUN_LOCK_FILE

    @property
    def replaced(self) -> Path:
        return self.path / REPLACED_DIR

    @property
    def error(self) -> Path:
        return self.path / ERROR_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    def weights(self, server_round: int) -> Path:
        """The checkpointed global model after `server_round`."""
        return self.path / weights_file_name(server_round)

    def ledger(self, owner: str) -> Path:
        """The ledger of `owner` ("server", or "client-<id>" in a simulation)."""
        return self.ledgers / f"{owner}{_LEDGER_SUFFIX}"


# -- reading JSON with one-line errors -------------------------------------------------------

NOT_PRIVET = "rerun the simulation or pass another run's folder"


class ResultsError(ValueError):
    """A results.json that cannot be read or holds a wrong value; the message is one line."""


def _reject_constant(token: str) -> float:
    raise ValueError(f"the non-JSON number {token}")


def read_json(path: Path, error: type[ValueError] = ResultsError) -> Any:
    """The parsed strict JSON of `path` (no NaN or Infinity tokens), or `error` in one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist; pass the folder of a run that wrote it") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text; it is not a Privet file") from None
    except OSError as problem:
        raise error(f"cannot read {path}: {problem.strerror or problem}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as problem:
        raise error(
            f"{path} is not valid JSON ({problem.msg} at line {problem.lineno}) and cannot be "
            f"read: it was cut off or edited — {NOT_PRIVET}"
        ) from None
    except ValueError as problem:
        raise error(
            f"{path} is not valid JSON ({problem}) and cannot be read: it was edited — {NOT_PRIVET}"
        ) from None


class JsonFields:
    """Typed access to one JSON object of a file; a wrong or missing value is `error`."""

    def __init__(
        self,
        path: Path,
        data: Any,
        where: str = "",
        error: type[ValueError] = ResultsError,
    ) -> None:
        if not isinstance(data, dict):
            place = where.rstrip(".") or "the file"
            raise error(
                f"{path}: {place} is {type(data).__name__}, expected an object; {NOT_PRIVET}"
            )
        self.path, self.data, self.where, self.error = path, data, where, error

    def _bad(self, key: str, expected: str) -> ValueError:
        shown = "missing" if key not in self.data else repr(self.data[key])[:40]
        return self.error(
            f"{self.path}: {self.where}{key} is {shown}, expected {expected}; {NOT_PRIVET}"
        )

    def has(self, key: str) -> bool:
        """Whether `key` is present and not null."""
        return self.data.get(key) is not None

    def number(self, key: str) -> float:
        """A required number (see `optional_number`)."""
        value = self.optional_number(key)
        if value is None:
            raise self._bad(key, "a number")
        return value

    def optional_number(self, key: str) -> float | None:
        """A number; results.json writes infinity as the string "inf" (and NaN as "nan")."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "+inf"):
            return math.inf
        if isinstance(value, str) and value.strip().lower() in ("-inf", "nan"):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "a number")
        return float(value)

    def integer(self, key: str, default: int | None = None) -> int:
        """An integer (booleans are not); `default` when absent, if given."""
        value = self.data.get(key)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        return value

    def optional_text(self, key: str) -> str | None:
        """A string, or None when absent."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(key, "text")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        """A boolean (JSON true or false); `default` when absent."""
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def items(self, key: str, required: bool = False) -> list[Any]:
        """A list (empty when absent and not required)."""
        value = self.data.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return value

    def ids(self, key: str) -> list[int]:
        """A list of client ids (integers)."""
        values = self.items(key)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise self._bad(key, "a list of client ids")
        return values

    def child(self, key: str, required: bool = False) -> JsonFields | None:
        """The object under `key` (None when absent and not required)."""
        value = self.data.get(key)
        if value is None:
            if required:
                raise self._bad(key, "an object")
            return None
        return JsonFields(self.path, value, f"{self.where}{key}.", self.error)


# -- typed values of results.json ------------------------------------------------------------


@dataclass(frozen=True)
class RoundData:
    """One round of results.json: test metrics, ε so far, who took part, clipping, SecAgg."""

    round: int
    accuracy: float
    epsilon_max: float
    epsilon_by_client: dict[str, float]
    clients_trained: int
    local_accuracy: float | None
    sampled: int
    declined: int
    failed: int
    rejected: int
    epsilon_client_level: float | None
    clip_norm: float | None
    noised_within_fraction: float | None
    secure_aggregation: dict[str, Any] | None
    loss: float | None = None


@dataclass(frozen=True)
class LedgerSummary:
    """The ledger state a node signed off with its last report: entry count and digest."""

    entries: int
    sha256: str


@dataclass(frozen=True)
class ClientData:
    """One client's example-level privacy in the run (and its lifetime), with its parameters.

    `lifetime_epsilon` / `lifetime_steps` are the run's figures in a file that does not have them.
    """

    id: int
    num_examples: int | None
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    rounds_participated: int | None
    lifetime_epsilon: float | None = None
    lifetime_steps: int | None = None
    ledger: LedgerSummary | None = None


@dataclass(frozen=True)
class ClientLevelData:
    """The client-level (DP-FedAvg) guarantee of a run, as results.json's client_level has it."""

    epsilon: float
    delta: float
    noise_multiplier: float
    update_noise_multiplier: float | None
    sample_rate: float
    expected_clients: float | None
    adaptive_clipping: bool
    clip_norm_final: float | None
    rounds: int
    count_stddev: float | None = None
    count_sensitivity: float | None = None
    mechanism: str | None = None
    """"distributed discrete Gaussian" when the clients added the noise; None: the server did."""
    epsilon_against_server: float | None = None
    """Under distributed DP: ε of the rounds a client took part in, without sampling (the server
    knows who took part)."""


@dataclass(frozen=True)
class PrivacySummary:
    """results.json's `privacy` object: the run's accountant, δ and federation ε."""

    accountant: str
    delta: float
    epsilon_max: float | None
    noise_source: str | None
    lifetime_epsilon_max: float | None = None
    run_token: str | None = None


def _round_data(fields: JsonFields) -> RoundData:
    by_client_fields = fields.child("epsilon_by_client")
    by_client: dict[str, float] = {}
    if by_client_fields is not None:
        for key in by_client_fields.data:
            by_client[str(key)] = by_client_fields.number(key)
    secure = fields.child("secure_aggregation")
    if secure is not None:  # check the parts readers use
        secure.optional_text("status")
        secure.optional_text("reason")
        secure.ids("survivors")
        secure.ids("dropped")
        secure.optional_number("threshold")
        secure.optional_number("quantization_clipped")
    return RoundData(
        round=fields.integer("round"),
        accuracy=fields.number("accuracy"),
        epsilon_max=fields.number("epsilon_max"),
        epsilon_by_client=by_client,
        clients_trained=fields.integer("clients_trained", default=0),
        local_accuracy=fields.optional_number("local_accuracy"),
        sampled=len(fields.ids("sampled")),
        declined=len(fields.ids("declined")),
        failed=fields.integer("failed", default=0),
        rejected=len(fields.ids("rejected")),
        epsilon_client_level=fields.optional_number("epsilon_client_level"),
        clip_norm=fields.optional_number("clip_norm"),
        noised_within_fraction=fields.optional_number("noised_within_fraction"),
        secure_aggregation=None if secure is None else dict(secure.data),
        loss=fields.optional_number("loss"),
    )


def _ledger_summary(fields: JsonFields) -> LedgerSummary | None:
    ledger = fields.child("ledger")
    if ledger is None:
        return None
    digest = ledger.optional_text("sha256")
    if digest is None or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ledger._bad("sha256", "64 hex digits")
    return LedgerSummary(entries=ledger.integer("entries"), sha256=digest)


def _client_data(fields: JsonFields, delta: float) -> ClientData:
    epsilon = fields.number("epsilon")
    steps = fields.integer("steps")
    return ClientData(
        id=fields.integer("id"),
        num_examples=fields.integer("num_examples") if fields.has("num_examples") else None,
        epsilon=epsilon,
        delta=fields.optional_number("delta") or delta,
        noise_multiplier=fields.number("noise_multiplier"),
        sample_rate=fields.number("sample_rate"),
        steps=steps,
        rounds_participated=(
            fields.integer("rounds_participated") if fields.has("rounds_participated") else None
        ),
        lifetime_epsilon=(
            fields.number("lifetime_epsilon") if fields.has("lifetime_epsilon") else epsilon
        ),
        lifetime_steps=fields.integer("lifetime_steps", default=steps),
        ledger=_ledger_summary(fields),
    )


def _client_level_data(fields: JsonFields, delta: float) -> ClientLevelData:
    # results.json before Privet recorded the count query said only true or false here.
    adaptive = fields.data.get("adaptive_clipping")
    count = None if isinstance(adaptive, bool) else fields.child("adaptive_clipping")
    return ClientLevelData(
        epsilon=fields.number("epsilon"),
        delta=fields.optional_number("delta") or delta,
        noise_multiplier=fields.number("noise_multiplier"),
        update_noise_multiplier=fields.optional_number("update_noise_multiplier"),
        sample_rate=fields.number("sample_rate"),
        expected_clients=fields.optional_number("expected_clients_per_round"),
        adaptive_clipping=bool(adaptive),
        clip_norm_final=fields.optional_number("clip_norm_final"),
        rounds=fields.integer("rounds", default=0),
        count_stddev=None if count is None else count.number("count_stddev"),
        count_sensitivity=None if count is None else count.number("count_sensitivity"),
        mechanism=fields.optional_text("mechanism"),
        epsilon_against_server=fields.optional_number("epsilon_against_server"),
    )


# -- the reader ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ResultsFile:
    """One run's results.json as read: typed values, each checked when first asked for.

    Build it with `read_results`. Every accessor raises `ResultsError` (one line naming the file
    and the value) when the file holds something Privet never writes there; `validate` checks
    them all at once. `raw` is the whole parsed mapping, for anything without an accessor.
    """

    path: Path
    schema_version: int
    raw: Mapping[str, Any]

    @cached_property
    def _top(self) -> JsonFields:
        return JsonFields(self.path, self.raw)

    @property
    def folder(self) -> RunFolder:
        """The run folder this file belongs to."""
        return RunFolder(self.path.parent)

    @cached_property
    def finished(self) -> bool:
        """Whether the run ran to its end without failing (false while it runs)."""
        return self._top.flag("finished")

    @cached_property
    def stop_reason(self) -> str | None:
        return self._top.optional_text("stop_reason")

    @cached_property
    def failure_reason(self) -> str | None:
        return self._top.optional_text("failure_reason")

    @cached_property
    def warnings(self) -> tuple[str, ...]:
        """The run's warning lines: failed clients, nodes left out, rounds without update."""
        values = self._top.items("warnings")
        if not all(isinstance(value, str) for value in values):
            raise self._top._bad("warnings", "a list of strings")
        return tuple(values)

    @cached_property
    def engine(self) -> str | None:
        """The engine's recorded name (see simulations.engines.RECORDED_NAMES)."""
        return self._top.optional_text("engine")

    @cached_property
    def privet_version(self) -> str | None:
        return self._top.optional_text("privet_version")

    @cached_property
    def wall_time_s(self) -> float | None:
        return self._top.optional_number("wall_time_s")

    @cached_property
    def config(self) -> Mapping[str, Any]:
        """The run's configuration, snake-case keys (as `RunConfig.to_json_dict` wrote it)."""
        config = self._top.child("config", required=True)
        assert config is not None
        return dict(config.data)

    @property
    def planned_rounds(self) -> int | None:
        """config.rounds, when it is an integer."""
        value = self.config.get("rounds")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @cached_property
    def privacy(self) -> PrivacySummary:
        """The example-level summary: accountant (rdp if unrecorded), δ, max ε, noise source."""
        privacy = self._top.child("privacy", required=True)
        assert privacy is not None
        return PrivacySummary(
            accountant=privacy.optional_text("accountant") or "rdp",
            delta=privacy.number("delta"),
            epsilon_max=privacy.optional_number("epsilon_max"),
            noise_source=privacy.optional_text("noise_source"),
            lifetime_epsilon_max=(
                privacy.optional_number("lifetime_epsilon_max")
                if privacy.has("lifetime_epsilon_max")
                else privacy.optional_number("epsilon_max")
            ),
            run_token=privacy.optional_text("run_token"),
        )

    @cached_property
    def initial_accuracy(self) -> float | None:
        initial = self._top.child("initial")
        return None if initial is None else initial.optional_number("accuracy")

    @cached_property
    def rounds(self) -> tuple[RoundData, ...]:
        """Every finished round, in order."""
        return tuple(
            _round_data(JsonFields(self.path, item, f"rounds[{index}]."))
            for index, item in enumerate(self._top.items("rounds", required=True))
        )

    @cached_property
    def clients(self) -> tuple[ClientData, ...]:
        """Each client's cumulative example-level privacy, in the file's order."""
        delta = self.privacy.delta
        return tuple(
            _client_data(JsonFields(self.path, item, f"clients[{index}]."), delta)
            for index, item in enumerate(self._top.items("clients"))
        )

    @cached_property
    def declined(self) -> tuple[tuple[int, int], ...]:
        """(client id, round) of each client that declined a round for its budget."""
        declined = []
        for index, item in enumerate(self._top.items("declined")):
            entry = JsonFields(self.path, item, f"declined[{index}].")
            declined.append((entry.integer("id"), entry.integer("round")))
        return tuple(declined)

    @cached_property
    def client_level(self) -> ClientLevelData | None:
        """The client-level guarantee, or None when client-level DP was off."""
        fields = self._top.child("client_level")
        return None if fields is None else _client_level_data(fields, self.privacy.delta)

    @cached_property
    def secure_aggregation(self) -> dict[str, Any] | None:
        """What secure aggregation guaranteed, or None when it was off."""
        secure = self._top.child("secure_aggregation")
        return None if secure is None else dict(secure.data)

    @cached_property
    def resumed_after(self) -> tuple[int, ...]:
        """The rounds after which the run was resumed from its checkpoint."""
        return tuple(self._top.ids("resumed_after_rounds"))

    def validate(self) -> ResultsFile:
        """Check every typed value now (the report does, before it writes anything)."""
        for name in (
            "finished",
            "stop_reason",
            "failure_reason",
            "warnings",
            "engine",
            "privet_version",
            "wall_time_s",
            "config",
            "privacy",
            "initial_accuracy",
            "rounds",
            "clients",
            "declined",
            "client_level",
            "secure_aggregation",
            "resumed_after",
        ):
            getattr(self, name)
        return self


def read_results(run_dir: str | Path) -> ResultsFile:
    """Read RUN_DIR/results.json: a JSON object of a schema version this Privet reads.

    Raises `ResultsError` (one line) when the file is missing, unreadable, not strict JSON, not
    an object, or from a newer Privet. Values are checked as they are asked for.
    """
    path = RunFolder(Path(run_dir)).results
    data = read_json(path)
    if not isinstance(data, dict):
        raise ResultsError(
            f"{path}: the file is {type(data).__name__}, expected an object with a run's "
            f"config, privacy and rounds; {NOT_PRIVET}"
        )
    version = data.get("schema_version", 1)
    if version not in READABLE_RESULTS_VERSIONS or isinstance(version, bool):
        raise ResultsError(
            f"{path}: schema_version {version!r:.20} is not one this Privet reads "
            f"({', '.join(map(str, READABLE_RESULTS_VERSIONS))}); read it with the Privet "
            "version that wrote it, or upgrade Privet"
        )
    return ResultsFile(path=path, schema_version=int(version), raw=data)
