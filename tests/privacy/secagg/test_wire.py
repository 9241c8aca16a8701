"""Protocol messages as flat plain data: exact round trips and strict rejection."""

import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from privet.privacy.secagg import (
    AdvertiseKeys,
    KeysBroadcast,
    MaskedInput,
    Refusal,
    SecAggProtocolError,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskShares,
)
from privet.privacy.secagg.wire import from_wire, read_reply, to_wire

ROUND = 2**64 - 1  # round ids are 64 random bits: the largest must survive Flower's records
EXAMPLES = [
    AdvertiseKeys(3, ROUND, "advertise_keys", b"c" * 32, b"s" * 32),
    KeysBroadcast(ROUND, 3, (1, 2), (b"a" * 32, b"b" * 32), (b"x" * 32, b"y" * 32)),
    ShareKeys(3, ROUND, "share_keys", (1, 2), (b"ct1", b"ct2")),
    SharesDelivery(7, 3, (1,), (b"ct",)),
    MaskedInput(3, 2**63, "masked_input", b"\x00\x01" * 8),
    UnmaskRequest(7, 3, (1, 3), ()),
    UnmaskShares(3, 0, "unmask", (1, 3), (b"s1", b"s3"), (), ()),
    Refusal(3, ROUND, "share_keys", "client 3 refuses: threshold 2 of 4"),
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
    masked = to_wire(EXAMPLES[4])
    with pytest.raises(SecAggProtocolError, match="'masked' must be bytes"):
        from_wire(MaskedInput, {**masked, "masked": "text"})
    with pytest.raises(SecAggProtocolError, match="'stage' must be str"):
        from_wire(MaskedInput, {**masked, "stage": b"masked_input"})
    with pytest.raises(SecAggProtocolError, match="lacks the key 'round-id'"):
        from_wire(MaskedInput, {k: v for k, v in masked.items() if k != "round-id"})


def test_a_reply_is_the_stages_message_or_a_refusal():
    refusal = EXAMPLES[-1]
    assert read_reply(ShareKeys, to_wire(refusal)) == refusal
    assert read_reply(ShareKeys, to_wire(EXAMPLES[2])) == EXAMPLES[2]
    with pytest.raises(SecAggProtocolError, match="unexpected key"):
        read_reply(ShareKeys, {**to_wire(refusal), "masked": b""})
