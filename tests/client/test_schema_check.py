"""A node refuses a run whose tabular schema is not the one it encodes its own file with."""

import csv
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from privet.client.app import make_client_app
from privet.client.schema_check import check_same_schema
from privet.task.config import ConfigError, RunConfig
from privet.task.datasets import FeatureColumn, TabularSchema, save_schema_file, schema_digest
from privet.task.messages import SCHEMA_DIGEST, IdentityQuery, MessageError

SCHEMA = TabularSchema(
    label_column="label",
    classes=("no", "yes"),
    columns=(FeatureColumn("age", "numeric", range=(0.0, 100.0)),),
)


@pytest.fixture(autouse=True)
def task_identity():
    """Flower stamps replies with the identity of the running task; give it one."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def node_context(tmp_path: Path) -> Context:
    """A CSV node with its own file and its copy of SCHEMA, in a csv run."""
    data = tmp_path / "node.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["age", "label"])
        writer.writerows([[str(20 + i), "yes" if i % 2 else "no"] for i in range(20)])
    save_schema_file(SCHEMA, tmp_path / "schema.json")
    node_config = {
        "client-id": 3,
        "data-file": str(data),
        "schema-file": str(tmp_path / "schema.json"),
    }
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def query(digest: str | None) -> Message:
    config = IdentityQuery(digest).to_config()
    content = RecordDict({"config": ConfigRecord(dict(config))}) if config else RecordDict()
    return Message(content=content, dst_node_id=7, message_type="query")


def test_a_node_answers_a_run_with_its_schema_and_refuses_one_with_another(tmp_path):
    context = node_context(tmp_path)
    run = RunConfig(
        dataset="csv",
        schema_file=str(tmp_path / "schema.json"),
        test_file=str(tmp_path / "node.csv"),
        output=str(tmp_path / "out"),
    )
    app = make_client_app(run)
    reply = app(query(schema_digest(SCHEMA)), context)
    assert reply.content["metrics"]["client-id"] == 3
    other = replace(SCHEMA, classes=("yes", "no"))  # same columns, labels coded the other way
    with pytest.raises(ConfigError, match="is not the run's") as refused:
        app(query(schema_digest(other)), context)
    assert schema_digest(other)[:12] in str(refused.value)
    with pytest.raises(ConfigError, match="run has no tabular schema"):
        app(query(None), context)


def test_a_node_without_a_schema_of_its_own_follows_the_run():
    check_same_schema("a" * 64, None, {})  # a simulation shard: the run's own encoding


def test_the_query_digest_is_checked_on_the_wire():
    assert IdentityQuery.from_config({}).schema_digest is None
    digest = schema_digest(SCHEMA)
    assert IdentityQuery.from_config({SCHEMA_DIGEST: digest}).schema_digest == digest
    for bad in ("abc", 5, "g" * 64):
        with pytest.raises(MessageError, match=SCHEMA_DIGEST):
            IdentityQuery.from_config({SCHEMA_DIGEST: bad})
