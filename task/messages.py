"""The message contract between the ServerApp and the ClientApp: every key, typed, defined once.

Each message that crosses the wire is a small frozen dataclass with an encoder (``to_config`` /
``to_metrics``, plain dicts that Flower's ConfigRecord and MetricRecord take as they are) and a
decoder (``from_config`` / ``from_metrics``) that checks every value's type and range and raises
`MessageError`, one line naming the key, for anything malformed. Client and server both go through
these classes, so the two sides cannot drift apart; the wire format is exactly what the literal
keys built before this module existed (old and new nodes interoperate).

Two key families live in `privacy`, beside the code that owns their meaning, because `privacy`
and `task` import nothing of ours (DESIGN.md): the client's privacy report
(`privacy.report.ClientPrivacy.to_metrics`, which `TrainReply.report` carries as it is) and the
secure-aggregation protocol (`privacy.secagg.wire`: its record names, stage actions and the
``secagg-*`` round settings that `SecAggInput.settings` carries). Their keys never collide with
these (a test checks).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# -- record names in a message's RecordDict ------------------------------------------------------
ARRAYS_RECORD = "arrays"
"""The model's weights (to a client) or its update (from a client), an ArrayRecord."""
CONFIG_RECORD = "config"
"""The round's instructions to a client, a ConfigRecord (`TrainInstructions`)."""
METRICS_RECORD = "metrics"
"""A client's reply values, a MetricRecord (`TrainReply`, `EvaluateReply`, ...)."""
LINK_CHECK_ACTION = "link_check"
"""Flower query action of a link check (message type ``query.link_check``, `server.link_check`):
the node sends back what it got, without reading its data or its ledger."""

# -- config keys (server -> client) ---------------------------------------------------------------
SERVER_ROUND = "server-round"
CLIP_NORM = "clip-norm"
WEIGHT = "weight"
RUN_TOKEN = "run-token"
_RUN_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# -- metric keys (client -> server) ---------------------------------------------------------------
NUM_EXAMPLES = "num-examples"
CLIENT_ID = "client-id"
LOSS = "loss"
ACCURACY = "accuracy"
DECLINED = "declined"
WITHIN_CLIP = "within-clip"
QUANTIZATION_CLIPPED = "quantization-clipped"
TRAIN_SECONDS = "train-seconds"
GPU_PEAK_BYTES = "gpu-peak-bytes"
ROUND_STEPS = "round-steps"

LARGEST_COUNT = 2**53
"""Counts above 2^53 are not even exact as metric floats: no real message has them."""

MetricValues = dict[str, int | float]
ConfigValues = dict[str, int | float | bytes]
TrainConfigValues = dict[str, int | float | str]
ReportValue = int | float | list[int]
"""A privacy report's metric value: a number, or a list of whole numbers (a ledger digest)."""


class MessageError(ValueError):
    """A message value that cannot be used; the message names the key."""


def _shown(value: object) -> str:
    return str(value)[:40]


def read_count(metrics: Mapping[str, object], key: str, default: int | None = None) -> int:
    """A whole, non-negative count under `key` (`default` when absent, if given)."""
    if key not in metrics:
        if default is not None:
            return default
        raise MessageError(f"the reply has no '{key}' metric")
    value = metrics[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value != int(value)
        or not 0 <= value <= LARGEST_COUNT
    ):
        raise MessageError(f"its '{key}' is not a whole count: {_shown(value)}")
    return int(value)


def read_flag(metrics: Mapping[str, object], key: str) -> bool | None:
    """A 0/1 flag under `key`, None when absent."""
    if key not in metrics:
        return None
    value = metrics[key]
    if isinstance(value, bool) or value not in (0, 1):
        raise MessageError(f"its '{key}' is not 0 or 1: {_shown(value)}")
    return bool(value)


def read_fraction(metrics: Mapping[str, object], key: str) -> float:
    """A number in [0, 1] under `key`."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise MessageError(f"its '{key}' is not a number in [0, 1]: {_shown(value)}")
    return float(value)


def _read_number(values: Mapping[str, object], key: str, what: str) -> float:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise MessageError(f"{what} key '{key}' is not a number: {_shown(value)}")
    return float(value)


def _read_positive(values: Mapping[str, object], key: str, what: str) -> float | None:
    if key not in values:
        return None
    number = _read_number(values, key, what)
    if not number > 0:
        raise MessageError(f"{what} key '{key}' must be above 0, not {_shown(number)}")
    return number


@dataclass(frozen=True)
class TrainInstructions:
    """What the server sends with a TRAIN message, beside the global model.

    ``extra`` holds the run's other train-config values, passed through untouched (they come
    first on the wire, as the server's round config is built from them).
    """

    server_round: int
    clip_norm: float | None = None
    """The client-level clip norm S the client clips its update to (None: no client-level DP)."""
    extra: Mapping[str, object] = field(default_factory=dict)
    run_token: str | None = None
    """The run's token (key ``run-token``): the client tags its ledger entries with it, so a
    node's ledger tells this run's releases from earlier runs'. None: a server that sends none
    (an older Privet); its releases are then recorded untagged."""

    def __post_init__(self) -> None:
        if isinstance(self.server_round, bool) or not 0 <= self.server_round <= LARGEST_COUNT:
            raise MessageError(f"train config key '{SERVER_ROUND}' is not a round number")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise MessageError(f"train config key '{CLIP_NORM}' must be above 0")
        if self.run_token is not None and (
            not isinstance(self.run_token, str) or not _RUN_TOKEN.match(self.run_token)
        ):
            raise MessageError(
                f"train config key '{RUN_TOKEN}' must be 1 to 64 letters, digits, '-' or '_', "
                f"not {_shown(self.run_token)}"
            )

    def to_config(self) -> TrainConfigValues:
        """The contract's keys (the server adds them to its round config, after ``extra``)."""
        values: TrainConfigValues = {SERVER_ROUND: self.server_round}
        if self.clip_norm is not None:
            values[CLIP_NORM] = self.clip_norm
        if self.run_token is not None:
            values[RUN_TOKEN] = self.run_token
        return values

    @classmethod
    def from_config(cls, values: Mapping[str, object]) -> TrainInstructions:
        """Parse a TRAIN message's config record (``run-token`` is optional)."""
        if SERVER_ROUND not in values:
            raise MessageError(f"the train config has no '{SERVER_ROUND}' key")
        round_number = _read_number(values, SERVER_ROUND, "train config")
        if not round_number.is_integer():
            raise MessageError(f"train config key '{SERVER_ROUND}' is not a whole number")
        token = values.get(RUN_TOKEN)
        if token is not None and not isinstance(token, str):
            raise MessageError(f"train config key '{RUN_TOKEN}' is not text: {_shown(token)}")
        contract = (SERVER_ROUND, CLIP_NORM, RUN_TOKEN)
        extra = {k: v for k, v in values.items() if k not in contract}
        return cls(
            int(round_number), _read_positive(values, CLIP_NORM, "train config"), extra, token
        )


@dataclass(frozen=True)
class SecAggInput:
    """The secure round's settings, sent in `privacy.secagg.wire.INPUT_KEY`'s record.

    ``settings`` are the ``secagg-*`` keys (`privacy.secagg.wire.encode_request`); the clip norm
    travels beside them, and with the TRAIN message so does the client's aggregation weight.
    """

    settings: Mapping[str, int | float | bytes]
    clip_norm: float | None
    weight: float | None = None

    def to_config(self) -> ConfigValues:
        """The record's values: settings, clip norm, then the weight when there is one."""
        values: ConfigValues = dict(self.settings)
        if self.clip_norm is not None:
            values[CLIP_NORM] = self.clip_norm
        if self.weight is not None:
            values[WEIGHT] = self.weight
        return values

    @classmethod
    def from_config(cls, values: Mapping[str, object]) -> SecAggInput:
        """Parse the record; the ``secagg-*`` settings are checked by their own decoder."""
        settings = {k: v for k, v in values.items() if k not in (CLIP_NORM, WEIGHT)}
        weight = _read_positive(values, WEIGHT, "secure-aggregation input")
        if weight is not None and weight > 1:
            raise MessageError(f"secure-aggregation input key '{WEIGHT}' must be at most 1")
        return cls(
            settings,  # type: ignore[arg-type]  # typed by privacy.secagg.wire.decode_request
            _read_positive(values, CLIP_NORM, "secure-aggregation input"),
            weight,
        )


@dataclass(frozen=True)
class TrainReply:
    """A client's TRAIN reply metrics: its privacy report, and what became of its update.

    ``report`` is `privacy.report.ClientPrivacy.to_metrics()` (the server parses it with
    `ClientPrivacy.from_metrics`). ``within_clip`` (plain rounds with client-level DP) and
    ``quantization_clipped`` (secure rounds) are absent (None) otherwise.
    """

    report: Mapping[str, ReportValue]
    declined: bool = False
    within_clip: bool | None = None
    quantization_clipped: int | None = None
    train_seconds: float | None = None
    """Wall-clock seconds of the round's local training (None: not said, e.g. a decline)."""
    round_steps: int | None = None
    """DP-SGD steps the round ran (with ``train_seconds``: the step time)."""
    gpu_peak_bytes: int | None = None
    """The most GPU memory the client's training held at once (None: not on a GPU)."""

    def to_metrics(self) -> dict[str, ReportValue]:
        """The metric values, in the order the client always sent them."""
        values: dict[str, ReportValue] = {**self.report, DECLINED: int(self.declined)}
        if self.quantization_clipped is not None:
            values[QUANTIZATION_CLIPPED] = self.quantization_clipped
        if self.within_clip is not None:
            values[WITHIN_CLIP] = int(self.within_clip)
        if self.train_seconds is not None and self.round_steps is not None:
            values[TRAIN_SECONDS] = self.train_seconds
            values[ROUND_STEPS] = self.round_steps
        if self.gpu_peak_bytes is not None:
            values[GPU_PEAK_BYTES] = self.gpu_peak_bytes
        return values

    @staticmethod
    def gpu_peak_bytes_in(metrics: Mapping[str, object]) -> int | None:
        """The GPU memory peak the client reported (None: not said, it trained on a CPU)."""
        if GPU_PEAK_BYTES not in metrics:
            return None
        return read_count(metrics, GPU_PEAK_BYTES)

    @staticmethod
    def step_seconds_in(metrics: Mapping[str, object]) -> float | None:
        """Seconds per DP-SGD step of the round's local training (None: not said or no step)."""
        seconds, steps = metrics.get(TRAIN_SECONDS), metrics.get(ROUND_STEPS)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            return None
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            return None
        if not (math.isfinite(seconds) and seconds >= 0):
            raise MessageError(f"its '{TRAIN_SECONDS}' is not a duration: {_shown(seconds)}")
        return float(seconds) / steps

    @staticmethod
    def declined_in(metrics: Mapping[str, object]) -> bool:
        """Whether the client declined the round (no update: its budget would be exceeded)."""
        return bool(read_flag(metrics, DECLINED))

    @staticmethod
    def within_clip_in(metrics: Mapping[str, object]) -> bool | None:
        """Whether the update was within the clip norm before clipping (None: not said)."""
        return read_flag(metrics, WITHIN_CLIP)

    @staticmethod
    def quantization_clipped_in(metrics: Mapping[str, object]) -> int:
        """Coordinates the secure rounding clipped (0 when not said)."""
        return read_count(metrics, QUANTIZATION_CLIPPED, default=0)

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object]) -> TrainReply:
        """Parse every contract value; the rest is the privacy report.

        The server reads the parts one at a time (`declined_in`, ...) because each kind of
        malformed value drops the reply at its own step, with its own reason.
        """
        contract = (
            DECLINED,
            WITHIN_CLIP,
            QUANTIZATION_CLIPPED,
            TRAIN_SECONDS,
            ROUND_STEPS,
            GPU_PEAK_BYTES,
        )
        report = {k: v for k, v in metrics.items() if k not in contract}
        for key, value in report.items():
            if isinstance(value, list) and all(
                isinstance(item, int) and not isinstance(item, bool) for item in value
            ):
                continue  # a ledger digest's words, checked by `privacy.report`
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MessageError(f"its '{key}' is not a number: {_shown(value)}")
        clipped = (
            read_count(metrics, QUANTIZATION_CLIPPED) if QUANTIZATION_CLIPPED in metrics else None
        )
        step = cls.step_seconds_in(metrics)
        return cls(
            report,  # type: ignore[arg-type]  # checked above
            cls.declined_in(metrics),
            cls.within_clip_in(metrics),
            clipped,
            None if step is None else float(metrics[TRAIN_SECONDS]),  # type: ignore[arg-type]
            None if step is None else int(metrics[ROUND_STEPS]),  # type: ignore[call-overload]
            cls.gpu_peak_bytes_in(metrics),
        )


@dataclass(frozen=True)
class EvaluateReply:
    """A client's EVALUATE reply: its held-out example count and accuracy (loss, id: for logs)."""

    num_examples: int
    accuracy: float
    loss: float | None = None
    client_id: int | None = None

    def to_metrics(self) -> MetricValues:
        """The metric values, in the order the client always sent them."""
        values: MetricValues = {NUM_EXAMPLES: self.num_examples}
        if self.client_id is not None:
            values[CLIENT_ID] = self.client_id
        if self.loss is not None:
            values[LOSS] = self.loss
        values[ACCURACY] = self.accuracy
        return values

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object]) -> EvaluateReply:
        """Parse a reply: a whole example count and an accuracy in [0, 1] are required."""
        count = read_count(metrics, NUM_EXAMPLES)
        accuracy = read_fraction(metrics, ACCURACY)
        # The loss and the id are for logs only: a reply is never dropped for them.
        loss, client = metrics.get(LOSS), metrics.get(CLIENT_ID)
        return cls(
            count,
            accuracy,
            float(loss) if isinstance(loss, int | float) and not isinstance(loss, bool) else None,
            int(client) if isinstance(client, int) and not isinstance(client, bool) else None,
        )


SCHEMA_DIGEST = "schema-sha256"
"""Config key of a discovery QUERY: the SHA-256 of the tabular schema the run encodes data with."""
BACKBONE_DIGEST = "backbone-sha256"
"""Config key of a discovery QUERY: the SHA-256 of the model's tensors that never travel."""


@dataclass(frozen=True)
class IdentityQuery:
    """The server's discovery (QUERY) message: which client is a node; its schema and backbone.

    ``schema_digest`` is `task.tabular.schema_digest` of the run's tabular schema (None for
    image data): a node that encodes its own CSV with another schema would train a model whose
    inputs mean something else, so it refuses before any round. ``backbone_digest`` is
    `task.models.frozen_digest` of the server's model (None when every tensor travels): the
    frozen backbone of a fine-tuning run never travels, so a node whose model folder holds other
    weights would send adapters for another model; it refuses too.
    """

    schema_digest: str | None = None
    backbone_digest: str | None = None

    def to_config(self) -> dict[str, str]:
        """The config values (none for a run without a schema or a frozen backbone)."""
        values = {}
        if self.schema_digest is not None:
            values[SCHEMA_DIGEST] = self.schema_digest
        if self.backbone_digest is not None:
            values[BACKBONE_DIGEST] = self.backbone_digest
        return values

    @classmethod
    def from_config(cls, values: Mapping[str, object]) -> IdentityQuery:
        """Parse the query's config; an absent key is a run without that schema or backbone."""
        digests = []
        for key in (SCHEMA_DIGEST, BACKBONE_DIGEST):
            value = values.get(key)
            if value is not None and (
                not isinstance(value, str) or len(value) != 64 or not _is_hex(value)
            ):
                raise MessageError(f"query config key '{key}' is not a SHA-256 hex digest")
            digests.append(value)
        return cls(*digests)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


CLASSES_PRESENT = "classes-present"


@dataclass(frozen=True)
class IdentityReply:
    """A node's discovery (QUERY) reply: which client, i.e. data shard, it is.

    ``classes_present`` (a node with its own file) is how many of the run's classes its training
    rows hold: a node with one class trains, and the server says so in the run's warnings (a
    count, never which class).
    """

    client_id: int
    classes_present: int | None = None

    def to_metrics(self) -> MetricValues:
        """The metric values."""
        values: MetricValues = {CLIENT_ID: self.client_id}
        if self.classes_present is not None:
            values[CLASSES_PRESENT] = self.classes_present
        return values

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object]) -> IdentityReply:
        """Parse a reply; an integral float is accepted (a metric may arrive as one)."""
        value = metrics.get(CLIENT_ID)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise MessageError(f"its '{CLIENT_ID}' is not a client id: {_shown(value)}")
        present = read_count(metrics, CLASSES_PRESENT) if CLASSES_PRESENT in metrics else None
        return cls(value, present)


@dataclass(frozen=True)
class AdvertiseReply:
    """The metrics of a client's reply to the advertise-keys stage: how many examples will train."""

    num_examples: int

    def to_metrics(self) -> MetricValues:
        """The metric values."""
        return {NUM_EXAMPLES: self.num_examples}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object]) -> AdvertiseReply:
        """Parse a reply: a whole example count is required."""
        return cls(read_count(metrics, NUM_EXAMPLES))


__all__ = [
    "ACCURACY",
    "ARRAYS_RECORD",
    "CLIENT_ID",
    "CLIP_NORM",
    "CONFIG_RECORD",
    "DECLINED",
    "LOSS",
    "METRICS_RECORD",
    "NUM_EXAMPLES",
    "QUANTIZATION_CLIPPED",
    "ROUND_STEPS",
    "TRAIN_SECONDS",
    "GPU_PEAK_BYTES",
    "RUN_TOKEN",
    "SERVER_ROUND",
    "WEIGHT",
    "WITHIN_CLIP",
    "AdvertiseReply",
    "EvaluateReply",
    "IdentityReply",
    "MessageError",
    "SecAggInput",
    "TrainInstructions",
    "TrainReply",
    "read_count",
    "read_flag",
    "read_fraction",
]
