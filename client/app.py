"""The Flower ClientApp: a thin adapter from Flower messages to `client.training_round`.

The client's example-level privacy ledger lives in its per-node state (`Context.state`), so ε is
cumulative over every round it took part in, and is mirrored, write-ahead, to
`OUTPUT/ledgers/client-<id>.json` before any update leaves the client.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node_data import NodeData, load_node_data
from client.training_round import (
    ClientDecline,
    run_local_evaluation,
    run_training_round,
    torch_threads_for_client,
)
from privacy import ClientPrivacy, PrivacyLedger
from task.config import RunConfig

STATE_KEY = "privet-ledger"
LEDGER_DIR = "ledgers"


def ledger_path(config: RunConfig, client_id: int) -> Path:
    """Where a client's example-level ledger is saved in a run's output."""
    return Path(config.output) / LEDGER_DIR / f"client-{client_id}.json"


def load_ledger(context: Context, config: RunConfig, data: NodeData) -> PrivacyLedger:
    """The node's ledger from its per-node state, or a new one for its first round."""
    path = ledger_path(config, data.client_id)
    if STATE_KEY in context.state.config_records:
        text = str(context.state.config_records[STATE_KEY]["json"])
        ledger = PrivacyLedger.from_json(json.loads(text))
        ledger.path = path
        return ledger
    ledger = PrivacyLedger(
        owner=f"client-{data.client_id}", level="example", delta=config.delta, path=path
    )
    ledger.save()  # an empty ledger on disk says "this client took part and released nothing"
    return ledger


def store_ledger(context: Context, ledger: PrivacyLedger) -> None:
    """Keep the ledger in the node's state for the next round."""
    context.state.config_records[STATE_KEY] = ConfigRecord({"json": json.dumps(ledger.to_json())})


def _config_of(context: Context, fixed: RunConfig | None) -> RunConfig:
    return fixed if fixed is not None else RunConfig.from_mapping(context.run_config)


def status_metrics(status: ClientPrivacy, declined: bool) -> dict[str, int | float]:
    """The privacy part of a train reply's metrics."""
    return {**status.to_metrics(), "declined": int(declined)}


def make_client_app(fixed_config: RunConfig | None = None) -> ClientApp:
    """A ClientApp; `fixed_config` (used by `privet simulate`) overrides Flower's run config."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Say which client (data shard) this node is, so the server can sample reproducibly."""
        config = _config_of(context, fixed_config)
        data = load_node_data(config, context.node_config)
        metrics = MetricRecord({"client-id": data.client_id})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch_threads_for_client()
        config = _config_of(context, fixed_config)
        data = load_node_data(config, context.node_config)
        global_weights = msg.content["arrays"].to_numpy_ndarrays()
        train_config = msg.content["config"]
        server_round = int(train_config["server-round"])  # type: ignore[arg-type]
        clip_norm = float(train_config["clip-norm"]) if "clip-norm" in train_config else None  # type: ignore[arg-type]
        ledger = load_ledger(context, config, data)
        outcome = run_training_round(config, data, global_weights, ledger, server_round, clip_norm)
        store_ledger(context, ledger)
        if isinstance(outcome, ClientDecline):
            metrics = MetricRecord(status_metrics(outcome.status, declined=True))
            return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
        values = status_metrics(outcome.status, declined=False)
        if outcome.within_clip is not None:
            values["within-clip"] = int(outcome.within_clip)
        content = RecordDict(
            {"arrays": ArrayRecord(outcome.update), "metrics": MetricRecord(values)}
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        torch_threads_for_client()
        config = _config_of(context, fixed_config)
        data = load_node_data(config, context.node_config)
        weights = msg.content["arrays"].to_numpy_ndarrays()
        count, loss, accuracy = run_local_evaluation(config, data, weights)
        metrics = MetricRecord(
            {"num-examples": count, "client-id": data.client_id, "loss": loss, "accuracy": accuracy}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


app = make_client_app()
