"""Protocol messages as flat plain data, and back, checked strictly.

A message crosses the network as a flat mapping of ints, bytes, strs and lists of them (what a
Flower ConfigRecord holds), keyed by the dataclass's field names in kebab case. Reading one back
checks every key and type, so a malformed or hostile message becomes a one-line
`SecAggProtocolError` naming the key, never a crash deep inside the protocol.

A client's reply to a stage is either that stage's message or a `Refusal` (`read_reply` tells
which); both name the round id and the stage, so a stale or misdirected reply is recognised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from privet.privacy.secagg.protocol import (
    AdvertiseKeys,
    KeysBroadcast,
    MaskedInput,
    Refusal,
    SecAggConfig,
    SecAggProtocolError,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskShares,
)
from privet.privacy.secagg.quantization import QuantizationSpec

STAGE_ACTIONS = {
    "advertise_keys": "secagg_advertise_keys",
    "share_keys": "secagg_share_keys",
    "unmask": "secagg_unmask",
}
"""Flower query action of the key and unmask stages (message type ``query.<action>``). The
masked input travels in the TRAIN reply: a client masks its update right after training, so the
plain update is never stored between messages."""
RECORD_KEY = "secagg"
"""Content key of the protocol message in every secure-aggregation message and reply."""
INPUT_KEY = "secagg-input"
"""Content key of the round's settings (threshold, bits, clip norm, ...; and the client's
aggregation weight with the TRAIN message)."""
NEXT_INPUT_KEY = "secagg-next-input"
"""With stage folding, a TRAIN message's request for the next round's keys: that round's
settings, as in `INPUT_KEY` (the reply holds the keys in `NEXT_RECORD_KEY` and the example count
in `NEXT_METRICS_KEY`)."""
NEXT_RECORD_KEY = "secagg-next"
"""With stage folding, the next round's protocol message riding in this round's message or reply
(its advertised keys with the TRAIN reply; its key broadcast, and the shares it sends in answer,
with the unmask request and reply)."""
NEXT_METRICS_KEY = "secagg-next-metrics"
"""With stage folding, the metrics of the next round's advertised keys (the example count)."""

ROUND_KEY = "secagg-round"
THRESHOLD_KEY = "secagg-threshold"
BITS_KEY = "secagg-bits"
LEVELS_KEY = "secagg-levels"
CLIENTS_KEY = "secagg-clients"
LENGTH_KEY = "secagg-length"
REQUEST_KEYS = (ROUND_KEY, THRESHOLD_KEY, BITS_KEY, LEVELS_KEY, CLIENTS_KEY, LENGTH_KEY)
"""The round's settings in the `INPUT_KEY` record (`encode_request`), in their wire order."""


def round_of(values: Mapping[str, object]) -> int | None:
    """The round id a stage message or a settings record names (None when it names none)."""
    for key in ("round-id", ROUND_KEY):
        value = values.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


WireValue = int | bytes | str | list[int] | list[bytes]
WireMessage = dict[str, WireValue]

Message = TypeVar(
    "Message",
    AdvertiseKeys,
    KeysBroadcast,
    ShareKeys,
    SharesDelivery,
    MaskedInput,
    UnmaskRequest,
    UnmaskShares,
    Refusal,
)

_KINDS = {
    "int": int,
    "bytes": bytes,
    "str": str,
    "tuple[int, ...]": int,
    "tuple[bytes, ...]": bytes,
}
_REFUSAL_KEYS = frozenset(f.name.replace("_", "-") for f in dataclasses.fields(Refusal))


def _key(name: str) -> str:
    return name.replace("_", "-")


def to_wire(
    message: AdvertiseKeys
    | KeysBroadcast
    | ShareKeys
    | SharesDelivery
    | MaskedInput
    | UnmaskRequest
    | UnmaskShares
    | Refusal,
) -> WireMessage:
    """The message as a flat mapping (tuples become lists)."""
    out: WireMessage = {}
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        out[_key(field.name)] = list(value) if isinstance(value, tuple) else value
    return out


def from_wire(cls: type[Message], data: Mapping[str, object]) -> Message:
    """Rebuild a message of type ``cls``; any missing, extra or mistyped key is an error."""
    name = cls.__name__
    fields = dataclasses.fields(cls)
    expected = {_key(f.name) for f in fields}
    extra = sorted(set(map(str, data)) - expected)
    if extra:
        raise SecAggProtocolError(f"{name} message has an unexpected key {extra[0][:40]!r}")
    values: dict[str, Any] = {}  # each value's type is checked against its field's below
    for field in fields:
        key = _key(field.name)
        if key not in data:
            raise SecAggProtocolError(f"{name} message lacks the key '{key}'")
        value = data[key]
        kind = _KINDS[str(field.type)]
        if str(field.type).startswith("tuple"):
            if not isinstance(value, (list, tuple)) or not all(_is(v, kind) for v in value):
                raise SecAggProtocolError(
                    f"{name} message key '{key}' must be a list of {kind.__name__}"
                )
            value = tuple(value)
        elif not _is(value, kind):
            raise SecAggProtocolError(f"{name} message key '{key}' must be {kind.__name__}")
        values[field.name] = value
    return cls(**values)


def _is(value: object, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def is_refusal(data: Mapping[str, object]) -> bool:
    """Whether a client's reply is a `Refusal` (its keys are exactly a refusal's)."""
    return set(map(str, data)) == _REFUSAL_KEYS


def read_reply(cls: type[Message], data: Mapping[str, object]) -> Message | Refusal:
    """A client's reply to the stage whose message type is ``cls``: that message or a `Refusal`."""
    if is_refusal(data):
        return from_wire(Refusal, data)
    return from_wire(cls, data)


def encode_request(config: SecAggConfig, spec: QuantizationSpec) -> dict[str, int]:
    """The round's settings as the ``secagg-*`` keys (the clip norm travels beside them)."""
    return {
        ROUND_KEY: config.round_id,
        THRESHOLD_KEY: config.threshold,
        BITS_KEY: config.bits,
        LEVELS_KEY: spec.levels,
        CLIENTS_KEY: spec.num_clients,
        LENGTH_KEY: config.vector_length,
    }


def decode_request(
    values: Mapping[str, object], clip_norm: float | None
) -> tuple[SecAggConfig, QuantizationSpec] | None:
    """Parse the ``secagg-*`` keys; None when there are none (the round is not secure)."""
    present = [key for key in REQUEST_KEYS if key in values]
    if not present:
        return None
    missing = [key for key in REQUEST_KEYS if key not in values]
    if missing:
        raise SecAggProtocolError(f"train config lacks the secure-aggregation key {missing[0]}")
    ints = {}
    for key in REQUEST_KEYS:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise SecAggProtocolError(f"train config key {key} must be an int")
        ints[key] = value
    if clip_norm is None:
        raise SecAggProtocolError("secure aggregation needs the clip-norm key in train config")
    spec = QuantizationSpec(
        clip_norm=clip_norm,
        num_clients=ints[CLIENTS_KEY],
        levels=ints[LEVELS_KEY],
        bits=ints[BITS_KEY],
    )
    config = SecAggConfig(
        round_id=ints[ROUND_KEY],
        threshold=ints[THRESHOLD_KEY],
        bits=ints[BITS_KEY],
        vector_length=ints[LENGTH_KEY],
    )
    return config, spec
