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
from flwr.clientapp.typing import Mod

from client.node_data import NodeData, load_node_data
from client.secure_aggregation import (
    PendingInput,
    SecAggRequest,
    answer,
    begin,
)
from client.training_round import (
    ClientDecline,
    round_seed,
    run_local_evaluation,
    run_training_round,
    torch_threads_for_client,
)
from privacy import ClientPrivacy, PrivacyLedger
from privacy.secagg.wire import INPUT_KEY, RECORD_KEY, STAGE_ACTIONS
from task.config import RunConfig

STATE_KEY = "privet-ledger"
LEDGER_DIR = "ledgers"
SECAGG_STATE_KEY = "privet-secagg"
SECAGG_UPDATE_KEY = "privet-secagg-update"
SECAGG_INPUT_KEY = "privet-secagg-input"


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


def forget_secagg(context: Context) -> None:
    """Drop the node's secure-aggregation state and pending update (the round is over)."""
    for key in (SECAGG_STATE_KEY, SECAGG_INPUT_KEY):
        context.state.config_records.pop(key, None)
    context.state.array_records.pop(SECAGG_UPDATE_KEY, None)


def start_secagg(
    context: Context,
    request: SecAggRequest,
    client_id: int,
    update: list,
    within_clip: bool,
    dither_seed: int,
) -> ConfigRecord:
    """Stage 0 after training: keep the round's keys and the update; return the public keys."""
    forget_secagg(context)
    num_params = sum(int(part.size) for part in update)
    state, advertised = begin(client_id, request, num_params)
    context.state.config_records[SECAGG_STATE_KEY] = ConfigRecord(state)
    context.state.array_records[SECAGG_UPDATE_KEY] = ArrayRecord(update)
    context.state.config_records[SECAGG_INPUT_KEY] = ConfigRecord(
        {
            **request.to_train_config(),
            "clip-norm": float(request.spec.clip_norm),
            "within-clip": bool(within_clip),
            "dither-seed": int(dither_seed) % 2**62,
        }
    )
    return ConfigRecord(advertised)


def pending_input(context: Context) -> PendingInput | None:
    """The update kept since training, if any."""
    if SECAGG_INPUT_KEY not in context.state.config_records:
        return None
    kept = context.state.config_records[SECAGG_INPUT_KEY]
    request = SecAggRequest.from_train_config(kept, float(kept["clip-norm"]))  # type: ignore[arg-type]
    assert request is not None
    return PendingInput(
        update=context.state.array_records[SECAGG_UPDATE_KEY].to_numpy_ndarrays(),
        within_clip=bool(kept["within-clip"]),
        spec=request.spec,
        dither_seed=int(kept["dither-seed"]),  # type: ignore[arg-type]
    )


def answer_secagg(stage: str, msg: Message, context: Context) -> Message:
    """One secure-aggregation stage on this node; any failure ends its part in the round."""
    if SECAGG_STATE_KEY not in context.state.config_records:
        raise RuntimeError(
            f"secure aggregation stage '{stage}' requested, but this node has no round in progress"
        )
    state = dict(context.state.config_records[SECAGG_STATE_KEY])
    weight = None
    if stage == "masked_input":
        weight = float(msg.content.config_records[INPUT_KEY]["weight"])  # type: ignore[arg-type]
    try:
        new_state, reply, clipped = answer(
            stage,
            state,
            dict(msg.content.config_records[RECORD_KEY]),
            pending_input(context) if stage == "masked_input" else None,
            weight,
        )
    except Exception:
        forget_secagg(context)
        raise
    context.state.config_records[SECAGG_STATE_KEY] = ConfigRecord(new_state)
    content = RecordDict({RECORD_KEY: ConfigRecord(reply)})
    if stage == "masked_input":
        # The update has been masked and sent; keep nothing of it.
        context.state.array_records.pop(SECAGG_UPDATE_KEY, None)
        context.state.config_records.pop(SECAGG_INPUT_KEY, None)
        content["metrics"] = MetricRecord({"quantization-clipped": clipped})
    if stage == "unmask":
        forget_secagg(context)
    return Message(content=content, reply_to=msg)


def make_client_app(
    fixed_config: RunConfig | None = None, mods: list[Mod] | None = None
) -> ClientApp:
    """A ClientApp; `fixed_config` (used by `privet simulate`) overrides Flower's run config.

    `mods` are Flower client mods wrapped around every handler (tests use them to inject faults).
    """
    app = ClientApp(mods=mods)

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
        request = SecAggRequest.from_train_config(train_config, clip_norm)
        ledger = load_ledger(context, config, data)
        outcome = run_training_round(config, data, global_weights, ledger, server_round, clip_norm)
        store_ledger(context, ledger)
        if isinstance(outcome, ClientDecline):
            forget_secagg(context)
            metrics = MetricRecord(status_metrics(outcome.status, declined=True))
            return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
        values = status_metrics(outcome.status, declined=False)
        if request is not None:
            # The update stays on the node until it is masked; the server gets only keys now.
            advertised = start_secagg(
                context,
                request,
                data.client_id,
                outcome.update,
                bool(outcome.within_clip),
                round_seed(config.seed, server_round, data.client_id) + 1,
            )
            content = RecordDict({"metrics": MetricRecord(values), RECORD_KEY: advertised})
            return Message(content=content, reply_to=msg)
        if outcome.within_clip is not None:
            values["within-clip"] = int(outcome.within_clip)
        content = RecordDict(
            {"arrays": ArrayRecord(outcome.update), "metrics": MetricRecord(values)}
        )
        return Message(content=content, reply_to=msg)

    @app.query(STAGE_ACTIONS["share_keys"])
    def secagg_share_keys(msg: Message, context: Context) -> Message:
        return answer_secagg("share_keys", msg, context)

    @app.query(STAGE_ACTIONS["masked_input"])
    def secagg_masked_input(msg: Message, context: Context) -> Message:
        return answer_secagg("masked_input", msg, context)

    @app.query(STAGE_ACTIONS["unmask"])
    def secagg_unmask(msg: Message, context: Context) -> Message:
        return answer_secagg("unmask", msg, context)

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
