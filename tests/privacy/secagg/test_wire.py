"""Protocol messages as flat plain data: exact round trips and strict rejection."""

import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from privacy.secagg import (
    AdvertiseKeys,
    KeysBroadcast,
    MaskedInput,
    SecAggProtocolError,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskShares,
)
from privacy.secagg.wire import from_wire, to_wire

EXAMPLES = [
    AdvertiseKeys(3, b"c" * 32, b"s" * 32),
    KeysBroadcast(7, 3, (1, 2), (b"a" * 32, b"b" * 32), (b"x" * 32, b"y" * 32)),
    ShareKeys(3, (1, 2), (b"ct1", b"ct2")),
    SharesDelivery(7, 3, (1,), (b"ct",)),
    MaskedInput(3, b"\x00\x01" * 8),
    UnmaskRequest(7, 3, (1, 3), ()),
    UnmaskShares(3, (1, 3), (b"s1", b"s3"), (), ()),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_flower_record_round_trip(message):
    record = RecordDict({"secagg": ConfigRecord(to_wire(message))})
    back = recorddict_from_proto(recorddict_to_proto(record))
    assert from_wire(type(message), dict(back.config_records["secagg"])) == message


def test_missing_extra_and_mistyped_keys_are_one_line_errors():
    wire = to_wire(EXAMPLES[1])
    with pytest.raises(SecAggProtocolError, match="lacks the key 'round-id'"):
        from_wire(KeysBroadcast, {k: v for k, v in wire.items() if k != "round-id"})
    with pytest.raises(SecAggProtocolError, match="unexpected key 'extra'"):
        from_wire(KeysBroadcast, {**wire, "extra": 1})
    with pytest.raises(SecAggProtocolError, match="'client-id' must be int"):
        from_wire(KeysBroadcast, {**wire, "client-id": True})
    with pytest.raises(SecAggProtocolError, match="'neighbour-ids' must be a list of int"):
        from_wire(KeysBroadcast, {**wire, "neighbour-ids": [1, b"2"]})
    with pytest.raises(SecAggProtocolError, match="'masked' must be bytes"):
        from_wire(MaskedInput, {"client-id": 1, "masked": "text"})
