"""The in-process engine: the same apps as Flower's runtime, the same results, many clients."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from privet.simulations.faults import Dropout
from privet.simulations.flower_engine import run_flower_simulation
from privet.simulations.inprocess_engine import (
    RUN_ID,
    InProcessGrid,
    run_in_process,
    server_task_identity,
)
from privet.task.config import ConfigError, RunConfig
from tests.reference_accounting import opacus_epsilon

# Client-level DP with Poisson client sampling, adaptive clipping and secure aggregation: every
# source of randomness and every message stage the server and clients have.
SETTINGS = {
    "clients": 6,
    "clients_per_round": 4,
    "rounds": 3,
    "local_epochs": 1,
    "client_noise_multiplier": 0.8,
    "clip_count_stddev": 1.0,
    "adaptive_clipping": True,
    "delta": 1e-3,
    "secure_aggregation": True,
    "reproducible": True,
    "seed": 3,
}


def ledger_events(output: Path) -> dict[str, list]:
    """Every ledger's entries without their timestamps."""
    ledgers = {}
    for path in sorted((output / "ledgers").glob("*.json")):
        entries = json.loads(path.read_text())["entries"]
        ledgers[path.name] = [(e["round"], e["event"]) for e in entries]
    return ledgers


@pytest.mark.long
def test_both_engines_give_identical_results_for_the_same_seed(tmp_path):
    flower_out, local_out = tmp_path / "flower", tmp_path / "local"
    # Client 0 crashes while training in round 2 (an error reply on either engine): the secure
    # round goes on without it, identically. The other tests rely on this agreement to run
    # faults, secure aggregation and adaptive clipping in process only.
    crash = [Dropout.at("train", [0], rounds=[2])]
    flower = run_flower_simulation(RunConfig(**SETTINGS, output=str(flower_out)), client_mods=crash)
    local = run_in_process(RunConfig(**SETTINGS, output=str(local_out)), client_mods=crash)
    assert flower.engine == "flower-simulation" and local.engine == "in-process"
    assert len(local.rounds) == SETTINGS["rounds"]
    for a, b in zip(flower.rounds, local.rounds, strict=True):
        assert (b.accuracy, b.loss, b.epsilon_max) == (a.accuracy, a.loss, a.epsilon_max)
        assert b.epsilon_by_client == a.epsilon_by_client
        assert b.sampled == a.sampled and b.clients_trained == a.clients_trained
        assert b.epsilon_client_level == a.epsilon_client_level
        assert b.clip_norm == a.clip_norm
        assert b.noised_within_fraction == a.noised_within_fraction
        assert (b.secure_aggregation or {}).get("status") == "ok"
        for key in ("survivors", "bits", "threshold"):
            assert b.secure_aggregation[key] == a.secure_aggregation[key]
    assert flower.rounds[1].secure_aggregation["dropped"] == [0]
    assert local.rounds[1].secure_aggregation["dropped"] == [0]

    # Equal but for the ledgers' digests: each run tags its entries with its own run token.
    def untagged(clients):
        return [dataclasses.replace(client, ledger_digest=None) for client in clients]

    assert untagged(local.clients) == untagged(flower.clients)
    assert ledger_events(local_out) == ledger_events(flower_out)
    rounds = SETTINGS["rounds"]
    with (
        np.load(flower_out / f"checkpoint-model-{rounds}.npz") as a,
        np.load(local_out / f"checkpoint-model-{rounds}.npz") as b,
    ):
        for name in a.files:
            assert np.array_equal(a[name], b[name]), name
    written = json.loads((local_out / "results.json").read_text())
    assert written["engine"] == "in-process" and written["finished"] is True


@pytest.mark.long
def test_a_thousand_clients_with_a_hundred_per_round_on_mnist(tmp_path, mnist_dir):
    """The issue's scale, in one process: each client's ε is Opacus' for the steps it ran."""
    config = RunConfig(
        dataset="mnist",
        data_dir=str(mnist_dir),
        model="mlp",
        clients=1000,
        clients_per_round=100,
        rounds=3,
        local_epochs=1,
        batch_size=32,
        target_epsilon=8.0,
        reproducible=True,
        output=str(tmp_path / "big"),
    )
    results = run_in_process(config)
    assert [r.round for r in results.rounds] == [1, 2, 3]
    for record in results.rounds:
        # Poisson sampling at q = 0.1: 100 expected, far outside [50, 150] is a broken sampler.
        assert 50 <= len(record.sampled) <= 150
        assert record.clients_trained == len(record.sampled)
    participated = {c: sum(c in r.sampled for r in results.rounds) for c in range(1000)}
    assert results.rounds[-1].accuracy > 0.2  # learning happened (chance is 0.1)
    assert len(results.clients) == sum(1 for n in participated.values() if n)
    for client in results.clients:
        batches = math.ceil(client.num_examples / config.batch_size)
        steps = participated[client.client_id] * batches
        assert client.steps == steps
        expected = opacus_epsilon(1 / batches, client.noise_multiplier, steps, config.delta)
        assert client.epsilon == pytest.approx(expected, rel=1e-6)
    assert results.rounds[-1].epsilon_max == max(c.epsilon for c in results.clients)


def test_fixed_size_sampling_trains_exactly_k_clients_every_round(tmp_path):
    config = RunConfig(
        clients=20,
        clients_per_round=5,
        client_sampling="fixed",
        rounds=3,
        local_epochs=1,
        delta=1e-4,
        reproducible=True,
        output=str(tmp_path / "fixed"),
    )
    results = run_in_process(config)
    samples = [r.sampled for r in results.rounds]
    assert all(len(sample) == 5 and len(set(sample)) == 5 for sample in samples)
    assert len({tuple(sample) for sample in samples}) > 1  # a new draw each round
    participated = {c: sum(c in sample for sample in samples) for c in range(20)}
    for client in results.clients:
        batches = math.ceil(client.num_examples / config.batch_size)
        steps = participated[client.client_id] * batches
        expected = opacus_epsilon(1 / batches, client.noise_multiplier, steps, config.delta)
        assert client.epsilon == pytest.approx(expected, rel=1e-6)
    written = json.loads((tmp_path / "fixed" / "results.json").read_text())
    assert written["config"]["client_sampling"] == "fixed"


def test_a_failing_client_is_an_error_reply_and_the_round_goes_on(tmp_path):
    config = RunConfig(clients=3, rounds=2, local_epochs=1, reproducible=True, output=str(tmp_path))
    results = run_in_process(config, client_mods=[Dropout.at("train", [1], rounds=[1])])
    first, second = results.rounds
    assert first.failed == 1 and first.clients_trained == 2
    assert second.failed == 0 and second.clients_trained == 3
    ledger = json.loads((tmp_path / "ledgers" / "client-1.json").read_text())
    assert [entry["round"] for entry in ledger["entries"]] == [2]  # nothing charged in round 1
    assert first.epsilon_by_client.get(1, 0.0) < second.epsilon_by_client[1]


def counting_app() -> ClientApp:
    """A ClientApp that counts its messages in the node's state and tampers with its input."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        seen = int(context.state.config_records.get("seen", ConfigRecord({"n": 0}))["n"]) + 1
        context.state.config_records["seen"] = ConfigRecord({"n": seen})
        msg.content.config_records["payload"]["value"] = "changed by the client"
        reply = RecordDict({"out": ConfigRecord({"seen": seen, "node": context.node_id})})
        return Message(content=reply, reply_to=msg)

    return app


def test_each_node_keeps_its_own_state_and_cannot_touch_the_servers_message():
    grid = InProcessGrid(counting_app(), num_nodes=3)
    nodes = sorted(grid.get_node_ids())
    assert len(nodes) == 3
    with server_task_identity(1):
        content = RecordDict({"payload": ConfigRecord({"value": "from the server"})})
        for _ in range(2):
            messages = [Message(content, node, MessageType.QUERY) for node in nodes[:2]]
            replies = list(grid.send_and_receive(messages))
        assert content.config_records["payload"]["value"] == "from the server"
        seen = {r.metadata.src_node_id: r.content.config_records["out"]["seen"] for r in replies}
        assert seen == {nodes[0]: 2, nodes[1]: 2}  # state persisted across rounds, per node
        third = list(grid.send_and_receive([Message(content, nodes[2], MessageType.QUERY)]))
        assert third[0].content.config_records["out"]["seen"] == 1
        assert all(r.metadata.reply_to_message_id for r in replies)
        with pytest.raises(ValueError, match="unknown node"):
            list(grid.send_and_receive([Message(content, 7, MessageType.QUERY)]))


def test_an_unknown_message_type_is_an_error_reply_not_a_crash():
    grid = InProcessGrid(counting_app(), num_nodes=1)
    (node,) = grid.get_node_ids()
    with server_task_identity(1):
        (reply,) = grid.send_and_receive([Message(RecordDict(), node, MessageType.TRAIN)])
    assert reply.has_error()
    assert "No train function registered" in reply.error.reason


# ---------------------------------------------------------------------------------------------
# Bad replies and runs that train nothing (issue 12, items 5 and 9), through the real apps.


def strict_results(folder: Path) -> dict:
    """results.json, refusing the NaN / Infinity tokens that strict JSON does not have."""

    def refuse(token):
        raise AssertionError(f"results.json holds the non-JSON token {token}")

    return json.loads((folder / "results.json").read_text(), parse_constant=refuse)


def on_reply(message_type, clients, change, rounds=None):
    """A client mod that lets `change(reply)` rewrite the chosen clients' replies."""

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        client = int(context.node_config["partition-id"])
        if msg.metadata.message_type != message_type or client not in clients:
            return reply
        if rounds is None or int(msg.metadata.group_id) in rounds:
            change(reply)
        return reply

    return mod


def test_a_client_sending_bad_metrics_every_round_is_dropped_then_excluded(tmp_path):
    def infinite_examples(reply):
        reply.content.metric_records["metrics"]["num-examples"] = float("inf")

    def huge_accuracy(reply):
        reply.content.metric_records["metrics"]["accuracy"] = 1e300

    config = RunConfig(clients=3, rounds=4, local_epochs=1, reproducible=True, output=str(tmp_path))
    results = run_in_process(
        config,
        client_mods=[
            on_reply("train", [1], infinite_examples),
            on_reply("evaluate", [0], huge_accuracy, rounds=[1]),
        ],
    )
    data = strict_results(tmp_path)
    assert data["finished"] is True and data["failure_reason"] is None
    rounds = data["rounds"]
    for record in rounds[:3]:
        assert record["clients_trained"] == 2
        (bad,) = [b for b in record["bad_replies"] if b["stage"] == "train"]
        assert bad["client"] == 1 and "'num-examples' is not a whole number: inf" in bad["reason"]
    assert [b["stage"] for b in rounds[0]["bad_replies"]] == ["train", "evaluate"]
    assert "'accuracy' is not a number in [0, 1]: 1e+300" in rounds[0]["bad_replies"][1]["reason"]
    assert 0 <= rounds[0]["local_accuracy"] <= 1
    assert rounds[2]["excluded"] == [1] and rounds[3]["sampled"] == [0, 2]
    assert data["excluded"][0]["id"] == 1 and data["excluded"][0]["round"] == 3
    # Client 1 trained every round it was asked to, but its reports were unusable: its ε is
    # unknown and the federation's ε is infinite, never its last known value.
    assert data["privacy"]["epsilon_max"] == "inf"
    assert [e["id"] for e in data["privacy"]["epsilon_unknown"]] == [1]
    assert all(r["epsilon_by_client"]["1"] == "inf" for r in rounds)
    ledger = json.loads((tmp_path / "ledgers" / "client-1.json").read_text())
    assert [entry["round"] for entry in ledger["entries"]] == [1, 2, 3]
    assert any("client 1 was excluded" in w for w in data["warnings"])
    assert results.epsilon_unknown.keys() == {1}


def test_every_update_rejected_as_nan_fails_the_run_after_three_rounds(tmp_path):
    """Every update NaN while ε is spent: no longer exit 0 and finished: true."""

    def nan_update(reply):
        arrays = reply.content.array_records["arrays"]
        nan = [np.full_like(a, np.nan) for a in arrays.to_numpy_ndarrays()]
        reply.content.array_records["arrays"] = type(arrays)(nan)

    config = RunConfig(clients=3, rounds=5, local_epochs=1, reproducible=True, output=str(tmp_path))
    results = run_in_process(config, client_mods=[on_reply("train", [0, 1, 2], nan_update)])
    data = strict_results(tmp_path)
    assert results.finished is False and data["finished"] is False
    assert [r["round"] for r in data["rounds"]] == [1, 2, 3]
    assert data["failure_reason"].startswith(
        "nothing trained: no client update reached the model in any of the 3 rounds; round 3: "
        "3 train replies dropped (client 0: update rejected: the update contains NaN"
    )
    assert data["failure_reason"].endswith(
        "; no client is left to sample: 3 excluded for bad replies (clients 0, 1, 2)"
    )
    assert data["rounds_without_update"] == [1, 2, 3]
    assert all(r["accuracy"] == data["initial"]["accuracy"] for r in data["rounds"])
    assert float(data["privacy"]["epsilon_max"]) > 0  # what they spent is reported


class BreakingGrid(InProcessGrid):
    """An in-process grid whose network fails for good once round 1's training replies came."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train_exchanges = 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if any(m.metadata.message_type == MessageType.TRAIN for m in messages):
            self.train_exchanges += 1
            if self.train_exchanges == 2:
                raise ConnectionError("the federation's network went down\nsecond line")
        return super().send_and_receive(messages, timeout=timeout)


def test_a_run_that_breaks_after_it_started_says_so_in_results_json(tmp_path):
    """Failure is never silent: a crash mid-run leaves finished: false and a one-line reason."""
    from privet.client.app import make_client_app
    from privet.server.app import run_federated_training

    config = RunConfig(clients=2, rounds=3, local_epochs=1, output=str(tmp_path / "run"))
    grid = BreakingGrid(make_client_app(config), config.clients)
    with pytest.raises(ConnectionError), server_task_identity(RUN_ID):
        run_federated_training(grid, config, "in-process")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["finished"] is False
    assert results["failure_reason"] == (
        "the run stopped on an error: ConnectionError: the federation's network went down"
    )
    assert [r["round"] for r in results["rounds"]] == [1]  # round 1's record is kept


def test_a_client_that_fails_is_listed_with_its_reason_and_min_trained_fails_the_run(tmp_path):
    """A node that fails is never silent: its client, stage and reason are in the round, the
    warnings and the console; below `min-trained` the run ends with finished: false."""
    drop = Dropout.at("train", [1], rounds=[2])
    config = RunConfig(clients=3, rounds=3, local_epochs=1, reproducible=True, output=str(tmp_path))
    results = run_in_process(config, client_mods=[drop])
    data = strict_results(tmp_path)
    assert results.finished is True and data["failure_reason"] is None  # no minimum asked
    (failure,) = data["rounds"][1]["failures"]
    assert failure["client"] == 1 and failure["stage"] == "train"
    assert failure["reason"].startswith("InjectedDropoutError: ")
    assert data["rounds"][0]["failures"] == [] and data["rounds"][2]["failures"] == []
    assert any(
        w.startswith("client 1 failed in round 2 (last at train: InjectedDropoutError: ")
        for w in data["warnings"]
    ), data["warnings"]

    strict = tmp_path / "strict"
    config = RunConfig(
        clients=3, rounds=3, local_epochs=1, reproducible=True, min_trained=3, output=str(strict)
    )
    results = run_in_process(config, client_mods=[drop])
    data = strict_results(strict)
    assert results.finished is False and data["finished"] is False
    assert [r["round"] for r in data["rounds"]] == [1, 2]  # stopped before round 3
    assert data["failure_reason"].startswith(
        "round 2: 2 client updates reached the model, fewer than min-trained 3 "
        "(client 1 failed at train: InjectedDropoutError: "
    ), data["failure_reason"]


def test_min_trained_outside_one_to_clients_is_a_one_line_error():
    expected = r"min-trained must be between 1 and clients \(3\), got 4"
    with pytest.raises(ConfigError, match=expected):
        RunConfig(clients=3, min_trained=4)


@pytest.mark.parametrize(
    ("when", "evaluated_rounds"), [("every-round", [1, 2, 3]), ("last-round", [3]), ("never", [])]
)
def test_local_evaluation_sends_evaluate_messages_only_when_asked(tmp_path, when, evaluated_rounds):
    """Each local evaluation is an exchange with every node that trained: count the messages."""
    seen: list[tuple[str, int]] = []

    def count(msg, context, call_next):
        if msg.metadata.message_type == MessageType.EVALUATE:
            seen.append((msg.metadata.message_type, int(msg.metadata.group_id)))
        return call_next(msg, context)

    config = RunConfig(clients=2, rounds=3, local_evaluation=when, output=str(tmp_path))
    results = run_in_process(config, client_mods=[count])
    assert results.finished
    assert sorted({at for _, at in seen}) == evaluated_rounds
    assert len(seen) == 2 * len(evaluated_rounds)  # both clients trained in every round
    local = [r.round for r in results.rounds if r.local_accuracy is not None]
    assert local == evaluated_rounds
    assert all(r.accuracy > 0 for r in results.rounds)  # the server scores every round anyway


def test_an_unknown_local_evaluation_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="local-evaluation.*every-round.*last-round.*never"):
        RunConfig.from_mapping({"local-evaluation": "sometimes"})
