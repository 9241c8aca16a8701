"""The message contract (`task.messages`): the wire format is the one the literal keys built.

The expected records below are written out literally, as the client and server built them before
the contract existed: a node running the old code and one running the new must understand each
other, so the encoders must produce these records key for key, in order, type for type, and byte
for byte once serialized.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from privet.client.secure_aggregation import SecAggRequest
from privet.privacy.report import REPORT_KEYS, ClientPrivacy
from privet.privacy.secagg import SecAggConfig
from privet.privacy.secagg.quantization import QuantizationSpec
from privet.privacy.secagg.wire import INPUT_KEY, RECORD_KEY, REQUEST_KEYS, encode_request
from privet.task import messages
from privet.task.messages import (
    AdvertiseReply,
    EvaluateReply,
    IdentityReply,
    MessageError,
    SecAggInput,
    TrainInstructions,
    TrainReply,
)

REPO = Path(__file__).resolve().parents[2]

REPORT = ClientPrivacy(
    client_id=3,
    num_examples=120,
    epsilon=1.25,
    delta=1e-5,
    noise_multiplier=1.1,
    sample_rate=0.25,
    steps=8,
    rounds_participated=2,
)
OLD_REPORT_METRICS = {
    "client-id": 3,
    "num-examples": 120,
    "epsilon": 1.25,
    "delta": 1e-5,
    "noise-multiplier": 1.1,
    "sample-rate": 0.25,
    "steps": 8,
    "rounds-participated": 2,
}
OLD_SECAGG_SETTINGS = {
    "secagg-round": 987654321,
    "secagg-threshold": 3,
    "secagg-bits": 18,
    "secagg-levels": 65536,
    "secagg-clients": 3,
    "secagg-length": 11,
}


def same_on_the_wire(new: RecordDict, old: RecordDict) -> None:
    """Same records, keys in the same order, values of the same types, same serialized bytes."""
    assert list(new.keys()) == list(old.keys())
    for name in old:
        assert type(new[name]) is type(old[name])
        assert list(new[name].items()) == list(old[name].items())  # type: ignore[union-attr]
        assert [type(v) for v in new[name].values()] == [type(v) for v in old[name].values()]  # type: ignore[union-attr]
    assert (
        recorddict_to_proto(new).SerializeToString() == recorddict_to_proto(old).SerializeToString()
    )


# -- encoding: byte for byte what the literal keys built ---------------------------------------


def test_train_instructions_encode_as_the_old_train_config():
    new = ConfigRecord({"local-epochs": 1})
    new.update(TrainInstructions(4, 0.75).to_config())
    old = RecordDict(
        {"config": ConfigRecord({"local-epochs": 1, "server-round": 4, "clip-norm": 0.75})}
    )
    same_on_the_wire(RecordDict({messages.CONFIG_RECORD: new}), old)
    plain = ConfigRecord({})
    plain.update(TrainInstructions(1).to_config())
    same_on_the_wire(
        RecordDict({messages.CONFIG_RECORD: plain}),
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
    )


def test_secure_round_settings_encode_as_the_old_input_record():
    config = SecAggConfig(round_id=987654321, threshold=3, bits=18, vector_length=11)
    spec = QuantizationSpec(clip_norm=1.0, num_clients=3, levels=65536, bits=18)
    settings = encode_request(config, spec)
    assert settings == OLD_SECAGG_SETTINGS and list(settings) == list(OLD_SECAGG_SETTINGS)
    advertise = RecordDict({INPUT_KEY: ConfigRecord(SecAggInput(settings, 1.0).to_config())})
    train = RecordDict({INPUT_KEY: ConfigRecord(SecAggInput(settings, 1.0, 0.5).to_config())})
    same_on_the_wire(
        advertise,
        RecordDict({"secagg-input": ConfigRecord({**OLD_SECAGG_SETTINGS, "clip-norm": 1.0})}),
    )
    same_on_the_wire(
        train,
        RecordDict(
            {"secagg-input": ConfigRecord({**OLD_SECAGG_SETTINGS, "clip-norm": 1.0, "weight": 0.5})}
        ),
    )
    assert RECORD_KEY == "secagg"


def test_train_replies_encode_as_the_old_metrics():
    cases = [
        (TrainReply(REPORT.to_metrics(), declined=True), {"declined": 1}),
        (TrainReply(REPORT.to_metrics()), {"declined": 0}),
        (TrainReply(REPORT.to_metrics(), within_clip=True), {"declined": 0, "within-clip": 1}),
        (
            TrainReply(REPORT.to_metrics(), quantization_clipped=2),
            {"declined": 0, "quantization-clipped": 2},
        ),
    ]
    for reply, tail in cases:
        same_on_the_wire(
            RecordDict({messages.METRICS_RECORD: MetricRecord(reply.to_metrics())}),
            RecordDict({"metrics": MetricRecord({**OLD_REPORT_METRICS, **tail})}),
        )


def test_evaluate_identity_and_advertise_replies_encode_as_the_old_metrics():
    evaluated = EvaluateReply(40, 0.875, loss=0.5, client_id=2)
    same_on_the_wire(
        RecordDict({messages.METRICS_RECORD: MetricRecord(evaluated.to_metrics())}),
        RecordDict(
            {
                "metrics": MetricRecord(
                    {"num-examples": 40, "client-id": 2, "loss": 0.5, "accuracy": 0.875}
                )
            }
        ),
    )
    same_on_the_wire(
        RecordDict({messages.METRICS_RECORD: MetricRecord(IdentityReply(4).to_metrics())}),
        RecordDict({"metrics": MetricRecord({"client-id": 4})}),
    )
    same_on_the_wire(
        RecordDict({messages.METRICS_RECORD: MetricRecord(AdvertiseReply(17).to_metrics())}),
        RecordDict({"metrics": MetricRecord({"num-examples": 17})}),
    )


# -- decoding: round trips -----------------------------------------------------------------------


def test_every_message_survives_a_round_trip_through_flower_records():
    instructions = TrainInstructions(7, 2.5, {"local-epochs": 1})
    config = ConfigRecord({"local-epochs": 1, **instructions.to_config()})
    assert TrainInstructions.from_config(config) == instructions
    assert TrainInstructions.from_config(ConfigRecord({"server-round": 1})).clip_norm is None

    secure = SecAggInput(OLD_SECAGG_SETTINGS, 1.0, 0.25)
    decoded = SecAggInput.from_config(ConfigRecord(secure.to_config()))
    assert decoded == secure
    request = SecAggRequest.from_train_config(decoded.settings, decoded.clip_norm)
    assert request is not None and request.to_train_config() == OLD_SECAGG_SETTINGS

    for reply in (
        TrainReply(REPORT.to_metrics(), declined=True),
        TrainReply(REPORT.to_metrics(), within_clip=False),
        TrainReply(REPORT.to_metrics(), quantization_clipped=5),
        TrainReply(REPORT.to_metrics(), train_seconds=2.0, round_steps=4, gpu_peak_bytes=2**37),
    ):
        back = TrainReply.from_metrics(MetricRecord(reply.to_metrics()))
        assert back == reply
        assert ClientPrivacy.from_metrics(back.report) == REPORT

    evaluated = EvaluateReply(40, 0.875, loss=0.5, client_id=2)
    assert EvaluateReply.from_metrics(MetricRecord(evaluated.to_metrics())) == evaluated
    assert IdentityReply.from_metrics(MetricRecord(IdentityReply(4).to_metrics())).client_id == 4
    assert IdentityReply.from_metrics({"client-id": 4.0}) == IdentityReply(4)  # a float metric
    assert AdvertiseReply.from_metrics(MetricRecord({"num-examples": 17})).num_examples == 17


# -- decoding: a malformed value is one line naming its key -------------------------------------


@pytest.mark.parametrize(
    ("decode", "values", "key"),
    [
        (TrainInstructions.from_config, {}, "server-round"),
        (TrainInstructions.from_config, {"server-round": "one"}, "server-round"),
        (TrainInstructions.from_config, {"server-round": 1.5}, "server-round"),
        (TrainInstructions.from_config, {"server-round": -1}, "server-round"),
        (TrainInstructions.from_config, {"server-round": 1, "clip-norm": 0.0}, "clip-norm"),
        (TrainInstructions.from_config, {"server-round": 1, "clip-norm": math.nan}, "clip-norm"),
        (SecAggInput.from_config, {"clip-norm": -1.0}, "clip-norm"),
        (SecAggInput.from_config, {"clip-norm": 1.0, "weight": 2.0}, "weight"),
        (SecAggInput.from_config, {"clip-norm": 1.0, "weight": b"x"}, "weight"),
        (TrainReply.from_metrics, {**OLD_REPORT_METRICS, "declined": 2}, "declined"),
        (TrainReply.from_metrics, {**OLD_REPORT_METRICS, "within-clip": 0.5}, "within-clip"),
        (
            TrainReply.from_metrics,
            {**OLD_REPORT_METRICS, "quantization-clipped": -1},
            "quantization-clipped",
        ),
        (TrainReply.from_metrics, {**OLD_REPORT_METRICS, "epsilon": True}, "epsilon"),
        (EvaluateReply.from_metrics, {"accuracy": 0.5}, "num-examples"),
        (EvaluateReply.from_metrics, {"num-examples": math.inf, "accuracy": 0.5}, "num-examples"),
        (EvaluateReply.from_metrics, {"num-examples": 3, "accuracy": 1e300}, "accuracy"),
        (EvaluateReply.from_metrics, {"num-examples": 3}, "accuracy"),
        (IdentityReply.from_metrics, {"client-id": -2}, "client-id"),
        (IdentityReply.from_metrics, {"client-id": 1.5}, "client-id"),
        (IdentityReply.from_metrics, {}, "client-id"),
        (AdvertiseReply.from_metrics, {"num-examples": 2.5}, "num-examples"),
    ],
)
def test_a_malformed_value_is_a_one_line_error_naming_its_key(decode, values, key):
    with pytest.raises(MessageError) as caught:
        decode(values)
    text = str(caught.value)
    assert f"'{key}'" in text and "\n" not in text


def test_the_server_reads_each_part_of_a_train_reply_on_its_own():
    """A bad part drops the reply at its own step (see server.strategy), so each reads alone."""
    metrics = {**OLD_REPORT_METRICS, "declined": 0, "within-clip": 7}
    assert TrainReply.declined_in(metrics) is False
    assert TrainReply.quantization_clipped_in(metrics) == 0
    with pytest.raises(MessageError, match="'within-clip' is not 0 or 1: 7"):
        TrainReply.within_clip_in(metrics)


# -- one definition of every key -----------------------------------------------------------------


def test_the_contract_and_the_privacy_owned_key_families_agree_and_never_collide():
    assert REPORT_KEYS["client_id"] == messages.CLIENT_ID
    assert REPORT_KEYS["num_examples"] == messages.NUM_EXAMPLES
    reply_keys = {messages.DECLINED, messages.WITHIN_CLIP, messages.QUANTIZATION_CLIPPED}
    assert not reply_keys & set(REPORT_KEYS.values())
    assert not {messages.CLIP_NORM, messages.WEIGHT} & set(REQUEST_KEYS)


def test_client_server_and_simulations_spell_no_contract_key_themselves():
    """`grep '"clip-norm"\\|"num-examples"\\|"client-id"' client server simulations` is empty.

    Except client/node_data.py, whose "client-id" is a node-config key (`--node-config`), not a
    message key.
    """
    pattern = re.compile(r"\"(clip-norm|num-examples|client-id|server-round|within-clip)\"")
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("client", "server", "simulations")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path.name != "node_data.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_a_discovery_reply_with_a_bad_classes_present_count_names_the_key():
    assert IdentityReply.from_metrics({"client-id": 2, "classes-present": 1}).classes_present == 1
    assert IdentityReply.from_metrics({"client-id": 2}).classes_present is None
    for bad in (-1, 1.5, float("nan")):
        with pytest.raises(MessageError, match="classes-present"):
            IdentityReply.from_metrics({"client-id": 2, "classes-present": bad})


def test_a_train_reply_carries_its_step_time_and_a_bad_one_is_refused():
    reply = TrainReply(REPORT.to_metrics(), train_seconds=0.5, round_steps=5)
    metrics = reply.to_metrics()
    assert metrics["train-seconds"] == 0.5 and metrics["round-steps"] == 5
    assert TrainReply.step_seconds_in(metrics) == pytest.approx(0.1)
    assert TrainReply.from_metrics(metrics) == reply
    # Not said (an older node, a decline) or no step: no step time, and the report is unchanged.
    assert TrainReply.step_seconds_in(REPORT.to_metrics()) is None
    assert TrainReply.step_seconds_in({**metrics, "round-steps": 0}) is None
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(MessageError, match="'train-seconds' is not a duration"):
            TrainReply.step_seconds_in({**metrics, "train-seconds": bad})


def test_a_gpu_memory_peak_is_a_count_or_nothing():
    assert TrainReply.gpu_peak_bytes_in({}) is None  # a client on a CPU says nothing
    assert TrainReply.gpu_peak_bytes_in({"gpu-peak-bytes": 5 * 2**30}) == 5 * 2**30
    for bad in (-1, 1.5, "big", math.inf):
        with pytest.raises(MessageError, match="gpu-peak-bytes"):
            TrainReply.gpu_peak_bytes_in({"gpu-peak-bytes": bad})


def test_a_rounds_cost_names_each_clients_gpu_peak_and_the_largest():
    from privet.server.round_book import RoundOutcome

    outcome = RoundOutcome(bytes_down=100, gpu_peak_bytes={4: 3 * 2**30, 1: 2**30})
    cost = outcome.cost()
    assert cost is not None and cost["gpu_peak_bytes_max"] == 3 * 2**30
    assert cost["gpu_peak_bytes_by_client"] == {1: 2**30, 4: 3 * 2**30}
    on_cpus = RoundOutcome(bytes_down=100).cost()
    assert on_cpus is not None and on_cpus["gpu_peak_bytes_max"] is None
    assert on_cpus["gpu_peak_bytes_by_client"] is None
