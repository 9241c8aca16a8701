"""A deployment's errors name run-config and node-config keys, not `privet simulate` flags."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from privet.client.app import make_client_app
from privet.client.local_plan import PlanError
from privet.server.app import FLWR_RUN_ENGINE, in_words_of
from privet.server.evaluation import ServerEvaluator
from privet.task.config import RunConfig
from privet.task.wording import for_deployment, reworded


@pytest.fixture(autouse=True)
def task_identity():
    """Flower stamps replies with the identity of the running task; give it one."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def test_flags_that_are_run_config_keys_are_said_as_keys():
    keys = RunConfig.key_names()
    text = "delta=0.1 is too large; lower --delta, or add --no-reproducible and --superlink X"
    worded = for_deployment(text, keys)
    assert worded == (
        "delta=0.1 is too large; lower run-config key delta, or add run-config key "
        "reproducible=false and --superlink X"
    )
    # A simulation-only hint becomes what a node with its own file can do, only on such a node.
    hint = "lower --delta or use fewer clients"
    assert for_deployment(hint, keys, own_data=True) == (
        "lower run-config key delta or give this node more examples"
    )
    assert for_deployment(hint, keys) == "lower run-config key delta or use fewer clients"


def test_a_reworded_error_keeps_its_type_and_cause():
    error = PlanError("lower --delta")
    again = reworded(error, "lower run-config key delta")
    assert type(again) is PlanError and again.__cause__ is error
    assert reworded(error, str(error)) is error


def test_the_server_words_a_failure_for_flwr_run_only():
    text = "--min-trained 3 was not met"
    assert in_words_of(FLWR_RUN_ENGINE, text) == "run-config key min-trained 3 was not met"
    assert in_words_of("in-process", text) == text


def test_a_node_with_its_own_file_refuses_a_delta_too_large_in_deployment_words(tmp_path):
    """The user trial: δ too large for one partner named `--delta` and "use fewer clients"."""
    data_file = tmp_path / "node.npz"
    rng = np.random.default_rng(0)
    np.savez(data_file, x=rng.random((30, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 30))
    run_config = {"delta": 0.05, "output": str(tmp_path / "out"), "rounds": 1}
    weights = ServerEvaluator(RunConfig.from_mapping(run_config)).initial_weights()
    context = Context(
        run_id=1,
        node_id=7,
        node_config={
            "client-id": 0,
            "data-file": str(data_file),
            "ledger-dir": str(tmp_path / "ledger"),
        },
        state=RecordDict(),
        run_config=run_config,
    )
    content = RecordDict(
        {"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": 1})}
    )
    message = Message(content=content, dst_node_id=7, message_type="train")
    with pytest.raises(PlanError) as raised:
        make_client_app()(message, context)
    text = str(raised.value)
    assert "run-config key delta" in text and "give this node more examples" in text
    assert "--delta" not in text and "fewer clients" not in text
