"""A client's example-level privacy report: what it tells the server after every round.

Client and server share this one definition (and its wire format) so that what a client computes
and what the server records can never drift apart.

A node's ledger outlives a run (`privacy.ledger`, "Runs"), so a report has two figures: the run's
own ε, steps and rounds (`epsilon`, `steps`, `rounds_participated`: this run's entries alone) and
the node's lifetime ε and steps over every run (`lifetime_epsilon`, `lifetime_steps`), both at the
run's δ. Its ledger summary (`ledger_entries`, `ledger_digest`) names the ledger state the report
was computed from, so a run folder can record what each node signed off without its ledger file.
The run's events are one (σ, q, steps) triple: `noise_multiplier`, `sample_rate`, `steps`, which
is what `privet budget --verify` replays when the ledger stays on the node.

A client of an older Privet sends none of the lifetime or ledger keys: its report is read with
the lifetime equal to the run's figures and no ledger summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


class ClientReportError(ValueError):
    """A client's privacy report that cannot be accepted."""


# Dataclass field -> key in the reply's metrics (kebab case): the report's part of the wire
# contract (`task.messages.TrainReply` carries it as it is; privacy imports nothing of ours).
REPORT_KEYS: dict[str, str] = {
    "client_id": "client-id",
    "num_examples": "num-examples",
    "epsilon": "epsilon",
    "delta": "delta",
    "noise_multiplier": "noise-multiplier",
    "sample_rate": "sample-rate",
    "steps": "steps",
    "rounds_participated": "rounds-participated",
}
# Optional keys (a client of an older Privet does not send them).
LIFETIME_KEYS: dict[str, str] = {
    "lifetime_epsilon": "lifetime-epsilon",
    "lifetime_steps": "lifetime-steps",
    "ledger_entries": "ledger-entries",
}
LEDGER_DIGEST_KEY = "ledger-digest"
"""The ledger's SHA-256 digest on the wire: eight 32-bit words, most significant first (a metric
value is a number or a list of numbers, never text)."""
_INTEGER_FIELDS = ("client_id", "num_examples", "steps", "rounds_participated")
_OPTIONAL_INTEGER_FIELDS = ("lifetime_steps", "ledger_entries")
_SHA256_HEX = 64
# Counts above 2^53 are not even exact as metric floats: no real report has them.
_LARGEST_COUNT = 2**53


@dataclass(frozen=True)
class ClientPrivacy:
    """A client's example-level privacy: this run's own, cumulative over its rounds, and lifetime.

    `lifetime_epsilon` / `lifetime_steps` default to the run's figures (a client that has taken
    part in no earlier run, or an older client that does not send them).
    """

    client_id: int
    num_examples: int
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    rounds_participated: int
    lifetime_epsilon: float = math.nan
    """The node's ε over every run its ledger holds, at this run's δ (NaN given: the run's)."""
    lifetime_steps: int = -1
    """The node's DP-SGD steps over every run (-1 given: the run's)."""
    ledger_entries: int | None = None
    """How many entries the node's ledger held when it reported (None: not said)."""
    ledger_digest: str | None = None
    """`PrivacyLedger.digest()` of those entries, 64 hex digits (None: not said)."""

    def __post_init__(self) -> None:
        if math.isnan(self.lifetime_epsilon):
            object.__setattr__(self, "lifetime_epsilon", self.epsilon)
        if self.lifetime_steps == -1:
            object.__setattr__(self, "lifetime_steps", self.steps)
        if math.isnan(self.epsilon) or self.epsilon < 0:
            raise ClientReportError(f"client {self.client_id} reported epsilon {self.epsilon}")
        if math.isnan(self.lifetime_epsilon) or self.lifetime_epsilon < 0:
            raise ClientReportError(
                f"client {self.client_id} reported lifetime epsilon {self.lifetime_epsilon}"
            )
        if not 0 <= self.lifetime_steps <= _LARGEST_COUNT or self.lifetime_steps < self.steps:
            raise ClientReportError(
                f"client {self.client_id} reported lifetime steps {self.lifetime_steps} "
                f"(the run's: {self.steps})"
            )
        if self.ledger_entries is not None and not 0 <= self.ledger_entries <= _LARGEST_COUNT:
            raise ClientReportError(
                f"client {self.client_id} reported ledger entries {self.ledger_entries}"
            )
        digest = self.ledger_digest
        if digest is not None and (
            len(digest) != _SHA256_HEX or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise ClientReportError(
                f"client {self.client_id} reported a ledger digest that is not 64 hex digits"
            )
        if not 0 < self.delta < 1 or not 0 < self.sample_rate <= 1:
            raise ClientReportError(
                f"client {self.client_id} reported delta={self.delta}, q={self.sample_rate}"
            )
        if math.isnan(self.noise_multiplier) or self.noise_multiplier < 0:
            raise ClientReportError(
                f"client {self.client_id} reported noise multiplier {self.noise_multiplier}"
            )
        for name in _INTEGER_FIELDS:
            if not 0 <= getattr(self, name) <= _LARGEST_COUNT:
                raise ClientReportError(
                    f"client {self.client_id} reported {REPORT_KEYS[name]} {getattr(self, name)}"
                )

    def to_metrics(self) -> dict[str, int | float | list[int]]:
        """The report as metric values for a Flower reply.

        The lifetime keys are sent only when they differ from the run's figures (a reader takes
        a missing one as the run's, so the meaning is the same), and the ledger summary when it
        is known: a report with neither is byte for byte what older clients sent.
        """
        values: dict[str, int | float | list[int]] = {
            wire: getattr(self, name) for name, wire in REPORT_KEYS.items()
        }
        if self.lifetime_epsilon != self.epsilon:
            values[LIFETIME_KEYS["lifetime_epsilon"]] = self.lifetime_epsilon
        if self.lifetime_steps != self.steps:
            values[LIFETIME_KEYS["lifetime_steps"]] = self.lifetime_steps
        if self.ledger_entries is not None:
            values[LIFETIME_KEYS["ledger_entries"]] = self.ledger_entries
        if self.ledger_digest is not None:
            values[LEDGER_DIGEST_KEY] = digest_words(self.ledger_digest)
        return values

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object]) -> ClientPrivacy:
        """Parse a reply's metrics; a missing or non-numeric value is a ClientReportError.

        The lifetime and ledger keys are optional (older clients do not send them).
        """
        values: dict[str, object] = {}
        optional = {**LIFETIME_KEYS}
        for name, wire in {**REPORT_KEYS, **optional}.items():
            if wire not in metrics:
                if name in optional:
                    continue
                raise ClientReportError(f"a client reply has no '{wire}' metric")
            raw = metrics[wire]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ClientReportError(
                    f"a client reply's '{wire}' is not a number: {_short(repr(raw))}"
                )
            whole = name in _INTEGER_FIELDS or name in _OPTIONAL_INTEGER_FIELDS
            if whole and not (isinstance(raw, int) or (math.isfinite(raw) and raw == int(raw))):
                raise ClientReportError(f"a client reply's '{wire}' is not a whole number: {raw!r}")
            values[name] = int(raw) if whole else float(raw)
        if LEDGER_DIGEST_KEY in metrics:
            values["ledger_digest"] = digest_from_words(metrics[LEDGER_DIGEST_KEY])
        return cls(**values)  # type: ignore[arg-type]

    def to_json_dict(self) -> dict[str, Any]:
        """The `clients[]` entry of results.json: the run's figures, lifetime, ledger summary."""
        data: dict[str, Any] = asdict(self)
        data["id"] = data.pop("client_id")
        entries, digest = data.pop("ledger_entries"), data.pop("ledger_digest")
        data["ledger"] = (
            None if entries is None or digest is None else {"entries": entries, "sha256": digest}
        )
        return data


def digest_words(digest: str) -> list[int]:
    """A 64-hex-digit digest as eight 32-bit words, most significant first (the wire form)."""
    return [int(digest[i : i + 8], 16) for i in range(0, _SHA256_HEX, 8)]


def digest_from_words(value: object) -> str:
    """Inverse of `digest_words`; ClientReportError for anything but eight 32-bit words."""
    if (
        not isinstance(value, list)
        or len(value) != _SHA256_HEX // 8
        or not all(
            isinstance(word, int) and not isinstance(word, bool) and 0 <= word < 2**32
            for word in value
        )
    ):
        raise ClientReportError(
            f"a client reply's '{LEDGER_DIGEST_KEY}' is not eight 32-bit words: "
            f"{_short(repr(value))}"
        )
    return "".join(f"{word:08x}" for word in value)


def _short(text: str, limit: int = 60) -> str:
    """A client-supplied value as a short text for a one-line error."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
