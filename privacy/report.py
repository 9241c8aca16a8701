"""A client's example-level privacy report: what it tells the server after every round.

Client and server share this one definition (and its wire format) so that what a client computes
and what the server records can never drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass


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
_INTEGER_FIELDS = ("client_id", "num_examples", "steps", "rounds_participated")
# Counts above 2^53 are not even exact as metric floats: no real report has them.
_LARGEST_COUNT = 2**53


@dataclass(frozen=True)
class ClientPrivacy:
    """A client's cumulative example-level privacy over every round it trained in."""

    client_id: int
    num_examples: int
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    rounds_participated: int

    def __post_init__(self) -> None:
        if math.isnan(self.epsilon) or self.epsilon < 0:
            raise ClientReportError(f"client {self.client_id} reported epsilon {self.epsilon}")
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

    def to_metrics(self) -> dict[str, int | float]:
        """The report as metric values for a Flower reply."""
        return {wire: getattr(self, name) for name, wire in REPORT_KEYS.items()}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object]) -> ClientPrivacy:
        """Parse a reply's metrics; a missing or non-numeric value is a ClientReportError."""
        values: dict[str, int | float] = {}
        for name, wire in REPORT_KEYS.items():
            if wire not in metrics:
                raise ClientReportError(f"a client reply has no '{wire}' metric")
            raw = metrics[wire]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ClientReportError(
                    f"a client reply's '{wire}' is not a number: {_short(repr(raw))}"
                )
            if name in _INTEGER_FIELDS and not (
                isinstance(raw, int) or (math.isfinite(raw) and raw == int(raw))
            ):
                raise ClientReportError(f"a client reply's '{wire}' is not a whole number: {raw!r}")
            values[name] = int(raw) if name in _INTEGER_FIELDS else float(raw)
        return cls(**values)  # type: ignore[arg-type]

    def to_json_dict(self) -> dict[str, float | int]:
        """The `clients[]` entry of results.json."""
        data = asdict(self)
        data["id"] = data.pop("client_id")
        return data


def _short(text: str, limit: int = 60) -> str:
    """A client-supplied value as a short text for a one-line error."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
