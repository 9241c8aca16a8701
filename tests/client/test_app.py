"""The ClientApp adapter, driven through Flower's Message API without a runtime."""

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants.analysis import rdp

from privet.client.app import ledger_path, make_client_app
from privet.privacy import PrivacyLedger
from privet.server.evaluation import ServerEvaluator
from privet.task.config import ConfigError, RunConfig
from tests.lock_holders import ledger_held_elsewhere

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@pytest.fixture(autouse=True)
def task_identity():
    """Flower stamps replies with the identity of the running task; give it one."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def train_message(weights, server_round):
    content = RecordDict(
        {"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": server_round})}
    )
    return Message(content=content, dst_node_id=7, message_type="train")


def node_context(partition_id, run_config=None):
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": partition_id, "num-partitions": 5},
        state=RecordDict(),
        run_config=run_config or {},
    )


def test_epsilon_accumulates_across_rounds_in_node_state(tmp_path):
    config = RunConfig(output=str(tmp_path), rounds=3)
    app = make_client_app(config)
    weights = ServerEvaluator(config).initial_weights()
    context = node_context(2)
    reported = []
    for server_round in (1, 2, 3):
        reply = app(train_message(weights, server_round), context)
        assert not reply.has_error()
        reported.append(dict(reply.content["metrics"]))
    n = reported[0]["num-examples"]
    batches = math.ceil(n / config.batch_size)
    for server_round, metrics in enumerate(reported, start=1):
        steps = server_round * config.local_epochs * batches
        assert metrics["steps"] == steps
        assert metrics["sample-rate"] == 1 / batches
        assert metrics["client-id"] == 2
        expected, _ = rdp.get_privacy_spent(
            orders=ORDERS,
            rdp=rdp.compute_rdp(
                q=1 / batches,
                noise_multiplier=metrics["noise-multiplier"],
                steps=steps,
                orders=ORDERS,
            ),
            delta=config.delta,
        )
        assert metrics["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert reported[0]["epsilon"] < reported[1]["epsilon"] < reported[2]["epsilon"] <= 8.0
    on_disk = PrivacyLedger.load(ledger_path(config, 2))
    assert on_disk.steps() == reported[-1]["steps"] and on_disk.rounds() == [1, 2, 3]
    assert on_disk.epsilon("rdp") == pytest.approx(reported[-1]["epsilon"], rel=1e-12)


def test_module_level_app_reads_flowers_run_config(tmp_path):
    from privet.client.app import app

    config = RunConfig(output=str(tmp_path), rounds=2, noise_multiplier=1.5)
    weights = ServerEvaluator(config).initial_weights()
    context = node_context(0, run_config=config.to_mapping())
    reply = app(train_message(weights, 1), context)
    assert not reply.has_error()
    assert reply.content["metrics"]["noise-multiplier"] == 1.5
    update = reply.content["arrays"].to_numpy_ndarrays()
    assert [u.shape for u in update] == [w.shape for w in weights]
    assert any(np.any(u != 0) for u in update)


def train_message_with(weights, server_round, **extra):
    message = train_message(weights, server_round)
    for key, value in extra.items():
        message.content["config"][key] = value
    return message


def test_client_declines_a_round_that_would_exceed_its_budget(tmp_path):
    probe = RunConfig(output=str(tmp_path / "p"), rounds=4, noise_multiplier=1.0)
    weights = ServerEvaluator(probe).initial_weights()
    first = make_client_app(probe)(train_message(weights, 1), node_context(0))
    one_round = first.content["metrics"]["epsilon"]
    config = RunConfig(
        output=str(tmp_path / "r"), rounds=4, noise_multiplier=1.0, epsilon_budget=one_round * 1.01
    )
    app, context = make_client_app(config), node_context(0)
    trained = app(train_message(weights, 1), context)
    declined = app(train_message(weights, 2), context)
    assert trained.content["metrics"]["declined"] == 0
    metrics = declined.content["metrics"]
    assert metrics["declined"] == 1 and "arrays" not in declined.content
    assert metrics["epsilon"] == pytest.approx(one_round, rel=1e-12)  # nothing more was spent
    assert PrivacyLedger.load(ledger_path(config, 0)).rounds() == [1]


def test_update_is_clipped_to_the_servers_clip_norm(tmp_path):
    config = RunConfig(output=str(tmp_path), client_noise_multiplier=1.0)
    weights = ServerEvaluator(config).initial_weights()
    reply = make_client_app(config)(
        train_message_with(weights, 1, **{"clip-norm": 0.01}), node_context(3)
    )
    update = reply.content["arrays"].to_numpy_ndarrays()
    norm = np.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in update))
    assert norm == pytest.approx(0.01, rel=1e-4)
    assert reply.content["metrics"]["within-clip"] == 0


def test_evaluation_reply_uses_held_out_examples_only(tmp_path):
    config = RunConfig(output=str(tmp_path))
    app = make_client_app(config)
    weights = ServerEvaluator(config).initial_weights()
    message = Message(
        content=RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord()}),
        dst_node_id=7,
        message_type="evaluate",
    )
    reply = app(message, node_context(1))
    metrics = reply.content["metrics"]
    assert 0 <= metrics["accuracy"] <= 1
    # 10% of a shard of 1437 / 5 examples is held out for local validation.
    assert metrics["num-examples"] == int(288 * 0.1) or metrics["num-examples"] == int(287 * 0.1)


def test_node_without_partition_is_refused_with_a_hint(tmp_path):
    config = RunConfig(output=str(tmp_path))
    app = make_client_app(config)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ConfigError, match="partition-id"):
        app(train_message(ServerEvaluator(config).initial_weights(), 1), context)


def test_node_count_must_match_the_run_config(tmp_path):
    config = RunConfig(output=str(tmp_path), clients=4)
    with pytest.raises(ConfigError, match="5 nodes but the run config says clients=4"):
        make_client_app(config)(
            train_message(ServerEvaluator(config).initial_weights(), 1), node_context(0)
        )


def test_a_restarted_node_continues_its_ledger_from_its_ledger_dir(tmp_path):
    config = RunConfig(output=str(tmp_path / "out"), rounds=3, noise_multiplier=1.0)
    weights = ServerEvaluator(config).initial_weights()
    app = make_client_app(config)
    folder = tmp_path / "node-ledger"

    def node(partition_id):  # a fresh Context: the node process restarted
        context = node_context(partition_id)
        context.node_config["ledger-dir"] = str(folder)
        return context

    first = app(train_message(weights, 1), node(1)).content["metrics"]["epsilon"]
    second = app(train_message(weights, 2), node(1)).content["metrics"]["epsilon"]
    assert second > first  # continued from the file, not from zero
    assert PrivacyLedger.load(folder / "client-1.json").rounds() == [1, 2]
    assert not (tmp_path / "out" / "ledgers").exists()  # the node's own folder was used
    # Another client's ledger in that folder is refused, never overwritten.
    (folder / "client-2.json").write_text((folder / "client-1.json").read_text())
    with pytest.raises(ConfigError, match="is the ledger of client-1"):
        app(train_message(weights, 1), node(2))
    assert PrivacyLedger.load(folder / "client-2.json").owner == "client-1"


def test_a_ledger_file_that_lost_what_the_node_recorded_is_refused(tmp_path):
    """In a deployment the server cannot see a node's ledger-dir: the node checks its own file
    against the copy in its state, and a file that went backwards stops the round."""
    import json

    config = RunConfig(output=str(tmp_path / "out"), rounds=3, noise_multiplier=1.0)
    weights = ServerEvaluator(config).initial_weights()
    app = make_client_app(config)
    context = node_context(1)
    context.node_config["ledger-dir"] = str(tmp_path / "node")
    app(train_message(weights, 1), context)
    app(train_message(weights, 2), context)
    path = tmp_path / "node" / "client-1.json"
    data = json.loads(path.read_text())
    data["entries"].pop()  # the file loses round 2 (restored from an old backup, say)
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="lost or changed releases this node recorded"):
        app(train_message(weights, 3), context)
    data["entries"] = []  # emptied entirely: refused as well, never a fresh start
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="lost or changed"):
        app(train_message(weights, 3), context)
    path.unlink()  # deleted: the node's state still has every release, and writes it back
    reply = app(train_message(weights, 3), context)
    assert not reply.has_error()
    assert PrivacyLedger.load(path).rounds() == [1, 2, 3]


def test_a_second_process_training_as_the_same_client_is_refused(tmp_path):

    from privet.privacy.storage import InUseError

    config = RunConfig(output=str(tmp_path / "out"), rounds=3, noise_multiplier=1.0)
    weights = ServerEvaluator(config).initial_weights()
    app = make_client_app(config)
    app(train_message(weights, 1), node_context(1))
    path = ledger_path(config, 1)
    before = path.read_bytes()
    with (
        ledger_held_elsewhere(path) as holder,
        pytest.raises(InUseError, match=f"in use by process {holder.pid}"),
    ):
        app(train_message(weights, 2), node_context(1))
    assert path.read_bytes() == before
    assert not app(train_message(weights, 2), node_context(1)).has_error()
