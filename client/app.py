"""The Flower ClientApp: a thin adapter from Flower messages to `client.training_round`.

The client's example-level privacy ledger lives in its per-node state (`Context.state`), so ε is
cumulative over every round it took part in, and is mirrored, write-ahead, to its file before any
update leaves the client. A training round holds the ledger's lock from reading it to its last
record, so a second process training as the same client is refused instead of overwriting this
one's releases.

Where the file is (`ledger_path`). A deployment node names a `ledger-dir` in its node config; its
ledger belongs to its *data*: with a `data-file` it is `ledger-dir/data-<first 16 hex digits of
the file's SHA-256>.json`, so a node that changes its client-id, or a run that writes to another
output folder, still continues the node's lifetime record, while another data file gets a ledger
of its own. The ledger then composes every run the node took part in (its lifetime ε), and each
entry carries the run's token (`privacy.ledger`, "Runs"), so each run reports its own ε too.
Without a `data-file` the ledger-dir file is `client-<id>.json`; a simulation (no ledger-dir)
keeps `OUTPUT/ledgers/client-<id>.json`.

A node may cap its lifetime spending: node config `node-epsilon-budget` (a positive number; see
`client.training_round.run_training_round` for when the node declines).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import ConfigRecordValues, MetricRecordValues
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from privet.client.deployment_wording import deployment_wording
from privet.client.node_data import NodeData, load_node_data, with_node_model_folder
from privet.client.schema_check import check_same_backbone, check_same_schema
from privet.client.secure_aggregation import (
    PendingInput,
    SecAggRequest,
    answer,
    begin,
    is_done,
)
from privet.privacy import ClientPrivacy, PrivacyLedger
from privet.privacy.ledger import LEDGER_DIR, ledger_lock, remove_stale_ledger_temporaries
from privet.privacy.secagg.protocol import ClientState
from privet.privacy.secagg.wire import (
    INPUT_KEY,
    NEXT_INPUT_KEY,
    NEXT_METRICS_KEY,
    NEXT_RECORD_KEY,
    RECORD_KEY,
    STAGE_ACTIONS,
    round_of,
)
from privet.task.config import ConfigError, RunConfig
from privet.task.messages import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    LINK_CHECK_ACTION,
    METRICS_RECORD,
    AdvertiseReply,
    EvaluateReply,
    IdentityQuery,
    IdentityReply,
    SecAggInput,
    TrainInstructions,
    TrainReply,
)

if TYPE_CHECKING:  # torch and Opacus stay unimported until a node trains
    from privet.client.trainer import StepObservers

UpdateOverride = Callable[[int, list[np.ndarray]], list[np.ndarray] | None]
"""`privet audit`'s canary clients: (client id, the update it would send) -> the update to send
instead, or None to send its own."""

STATE_KEY = "privet-ledger"
SECAGG_STATE_KEY = "privet-secagg"
"""Prefix of the node-state records that hold a secure-aggregation round's client state, one per
round (``privet-secagg:<round id>``)."""
LEDGER_DIR_KEY = "ledger-dir"
DATA_FILE_KEY = "data-file"
NODE_EPSILON_BUDGET_KEY = "node-epsilon-budget"  # training_round.NODE_BUDGET_NAME
DATA_LEDGER_PREFIX = "data-"
"""A data-keyed ledger's file name is this, 16 hex digits of the data's SHA-256, and ".json"."""
_HASH_CHUNK = 1 << 20

logger = logging.getLogger(__name__)
_data_hashes: dict[str, tuple[int, int, str]] = {}


def data_file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a node's data file, read in 1 MiB chunks.

    Remembered per path while the file's modification time and size stay the same, so a node
    hashes a large file once, not every round. A file that cannot be read is a ConfigError.
    """
    key = os.path.abspath(path)
    try:
        info = os.stat(key)
        cached = _data_hashes.get(key)
        if cached is not None and cached[:2] == (info.st_mtime_ns, info.st_size):
            return cached[2]
        digest = hashlib.sha256()
        with open(key, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise ConfigError(
            f"cannot read the node's data-file {path} to find its privacy ledger "
            f"({error.strerror or error}); fix the node config's data-file"
        ) from None
    _data_hashes[key] = (info.st_mtime_ns, info.st_size, digest.hexdigest())
    return digest.hexdigest()


def _node_text(node_config: Mapping[str, object] | None, key: str) -> str | None:
    value = (node_config or {}).get(key)
    return value if isinstance(value, str) and value else None


def ledger_owner(client_id: int, node_config: Mapping[str, object] | None = None) -> str:
    """Whose ledger this node writes: "data-<SHA-256 of its data file>", or "client-<id>".

    The data-keyed owner applies in a deployment with a `ledger-dir` and a `data-file`.
    """
    data_file = _node_text(node_config, DATA_FILE_KEY)
    if _node_text(node_config, LEDGER_DIR_KEY) and data_file:
        return DATA_LEDGER_PREFIX + data_file_sha256(Path(data_file).expanduser())
    return f"client-{client_id}"


def ledger_path(
    config: RunConfig, client_id: int, node_config: Mapping[str, object] | None = None
) -> Path:
    """Where a client's example-level ledger is saved: the node's `ledger-dir`, else the run's.

    In a deployment each node should name a folder of its own (`--node-config
    "ledger-dir='/var/lib/privet'"`): the ledger is the node's record of what it released, kept
    on the node across restarts and runs. With a `data-file` the file is named after the data
    (`data-<16 hex digits of its SHA-256>.json`, see the module's notes); without one, after the
    client id.
    """
    folder = _node_text(node_config, LEDGER_DIR_KEY)
    if folder:
        owner = ledger_owner(client_id, node_config)
        if owner.startswith(DATA_LEDGER_PREFIX):
            return Path(folder) / f"{owner[: len(DATA_LEDGER_PREFIX) + 16]}.json"
        return Path(folder) / f"{owner}.json"
    return Path(config.output) / LEDGER_DIR / f"client-{client_id}.json"


def node_epsilon_budget(node_config: Mapping[str, object] | None) -> float | None:
    """The node's lifetime ε budget, node config `node-epsilon-budget` (None: none set).

    A positive, finite number (numeric text is accepted); anything else is a one-line ConfigError.
    """
    raw = (node_config or {}).get(NODE_EPSILON_BUDGET_KEY)
    if raw is None:
        return None
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"node config {NODE_EPSILON_BUDGET_KEY} must be a positive number (this node's "
            f"lifetime epsilon budget), got {str(raw)[:40]!r}; e.g. --node-config "
            f'"{NODE_EPSILON_BUDGET_KEY}=8"'
        )
    return value


def _adopt_client_ledger(folder: Path, client_id: int, owner: str, path: Path) -> bool:
    """Continue a node's older `client-<id>.json` in `ledger-dir` as its data-keyed ledger.

    Ledgers in a ledger-dir were once named by client id; the node's spending recorded there is
    carried over (as earlier runs), so upgrading never resets a node's lifetime ε. The old file is
    left as it is. Returns whether there was one to adopt.
    """
    old = folder / f"client-{client_id}.json"
    if path.exists() or not old.exists():
        return False
    with ledger_lock(old).acquire():
        earlier = PrivacyLedger.load(old)
    if earlier.owner != f"client-{client_id}" or earlier.level != "example":
        return False
    earlier.copy_as(owner, path).save()
    logger.warning(
        "continuing the releases of %s in the data file's ledger %s (the old file is kept)",
        old,
        path,
    )
    return True


def _owner_problem(path: Path, found: str, owner: str) -> str:
    """Why a ledger file of another owner is refused, and what to do (one line)."""
    return (
        f"{path} is the ledger of {found}, not of {owner}: it holds another party's releases and "
        "is never overwritten; move it back where it came from (or restore this node's own "
        "ledger there) and train again"
    )


def load_ledger(context: Context, config: RunConfig, data: NodeData) -> PrivacyLedger:
    """The node's ledger: from its file, else its per-node state, else new (first round).

    Call it holding `ledger_lock(path)` (as `train` does). The file must extend the copy in the
    node's state: a file that lost entries the node recorded is refused (ConfigError). The
    ledger reports at the run's δ from now on (`PrivacyLedger.use_delta`): earlier runs at
    another δ compose with this one, since their events are δ-free.
    """
    path = ledger_path(config, data.client_id, context.node_config)
    owner = ledger_owner(data.client_id, context.node_config)
    remove_stale_ledger_temporaries(path)  # of writes cut short; we hold the ledger's lock
    kept = None
    if STATE_KEY in context.state.config_records:
        text = str(context.state.config_records[STATE_KEY]["json"])
        kept = PrivacyLedger.from_json(json.loads(text))
        kept.use_delta(config.delta)
    if owner.startswith(DATA_LEDGER_PREFIX) and kept is None:
        _adopt_client_ledger(path.parent, data.client_id, owner, path)
    if path.exists():
        # The file is written ahead of every release, so it is never behind the node's state;
        # after a restart of the node (or a resumed run) it is the only record: never reset it.
        ledger = PrivacyLedger.load(path)
        if ledger.owner != owner or ledger.level != "example":
            raise ConfigError(_owner_problem(path, f"{ledger.owner} ({ledger.level} level)", owner))
        ledger.use_delta(config.delta)
        if kept is not None and not ledger.extends(len(kept.entries), kept.digest()):
            raise ConfigError(
                f"{path} lost or changed releases this node recorded ({len(kept.entries)} "
                f"entries in the node's state, {len(ledger.entries)} in the file); restore the "
                "ledger file — training on would under-report epsilon"
            )
        ledger.path = path
        return ledger
    if kept is not None:
        kept.path = path
        return kept
    ledger = PrivacyLedger(owner=owner, level="example", delta=config.delta, path=path)
    ledger.save()  # an empty ledger on disk says "this client took part and released nothing"
    return ledger


def store_ledger(context: Context, ledger: PrivacyLedger) -> None:
    """Keep the ledger in the node's state for the next round."""
    context.state.config_records[STATE_KEY] = ConfigRecord({"json": json.dumps(ledger.to_json())})


def _backbone_of(config: RunConfig, data: NodeData) -> str | None:
    """`frozen_digest` of the model this node builds for the run (imports torch: text runs)."""
    from privet.client.training_round import node_model
    from privet.task.models import frozen_digest

    return frozen_digest(node_model(config, data))


def _config_of(context: Context, fixed: RunConfig | None) -> RunConfig:
    """The run config, with this node's own model folder when its node config names one."""
    config = fixed if fixed is not None else RunConfig.from_mapping(context.run_config)
    return with_node_model_folder(config, context.node_config)


def status_metrics(status: ClientPrivacy, declined: bool) -> dict[str, int | float | list[int]]:
    """The privacy part of a train reply's metrics."""
    return TrainReply(status.to_metrics(), declined).to_metrics()


def config_record(values: Mapping[str, ConfigRecordValues]) -> ConfigRecord:
    """A ConfigRecord of `values` (a mapping, so a dict of narrower value types is accepted)."""
    return ConfigRecord(dict(values))


def metric_record(values: Mapping[str, MetricRecordValues]) -> MetricRecord:
    """A MetricRecord of `values` (a mapping, so a dict of narrower value types is accepted)."""
    return MetricRecord(dict(values))


def _state_key(round_id: object) -> str:
    return f"{SECAGG_STATE_KEY}:{round_id}"


def forget_secagg(context: Context, keep: Iterable[int] = ()) -> None:
    """Drop the node's secure-aggregation states, except those of the rounds in ``keep``.

    A node holds at most two: the round in progress, and with stage folding the next round's,
    whose keys go out with this round's TRAIN reply (`server.secure_aggregation.KeysAhead`).
    """
    kept = {_state_key(round_id) for round_id in keep}
    records = context.state.config_records
    for key in list(records):
        if (key == SECAGG_STATE_KEY or key.startswith(f"{SECAGG_STATE_KEY}:")) and key not in kept:
            records.pop(key, None)


def _secagg_state(context: Context, stage: str, round_id: int | None) -> dict[str, object]:
    key = _state_key(round_id)
    if round_id is None or key not in context.state.config_records:
        raise RuntimeError(
            f"secure aggregation stage '{stage}' requested, but this node has no such round in "
            "progress"
        )
    return dict(context.state.config_records[key])


def _begin_secagg(
    settings: ConfigRecord, context: Context, client_id: int, num_examples: int
) -> RecordDict:
    """Fresh keys for the round ``settings`` name: the advertised keys and the example count."""
    values = SecAggInput.from_config(settings)
    request = SecAggRequest.from_train_config(values.settings, values.clip_norm)
    if request is None:
        raise RuntimeError("secure aggregation keys requested without the round's settings")
    state, advertised = begin(client_id, request, None)
    _keep_secagg(context, state)
    return RecordDict(
        {
            RECORD_KEY: config_record(advertised),
            METRICS_RECORD: metric_record(AdvertiseReply(num_examples).to_metrics()),
        }
    )


def advertise_secagg(msg: Message, context: Context, client_id: int, num_examples: int) -> Message:
    """Stage 0: fresh keys for this round; the reply also says how many examples will train."""
    forget_secagg(context)
    content = _begin_secagg(msg.content.config_records[INPUT_KEY], context, client_id, num_examples)
    return Message(content=content, reply_to=msg)


def advertise_ahead(
    msg: Message, context: Context, client_id: int, num_examples: int, current: int | None
) -> dict[str, ConfigRecord | MetricRecord]:
    """The next round's keys, asked for with this round's TRAIN message (stage folding).

    Returns the reply's extra records, or none if the request cannot be answered (logged): the
    client then sits out the next round's fold, and this round's reply still goes back.
    """
    forget_secagg(context, keep=() if current is None else (current,))
    try:
        content = _begin_secagg(
            msg.content.config_records[NEXT_INPUT_KEY], context, client_id, num_examples
        )
    except Exception as error:  # the next round's keys must never cost this round's update
        logger.warning("client %d: no keys for the next round: %s", client_id, error)
        return {}
    return {
        NEXT_RECORD_KEY: content.config_records[RECORD_KEY],
        NEXT_METRICS_KEY: content.metric_records[METRICS_RECORD],
    }


def _keep_secagg(context: Context, state: ClientState) -> None:
    """Store the state for the next stage, or drop it if the round is over (answered or refused)."""
    key = _state_key(state.get("round_id"))
    if is_done(state):
        context.state.config_records.pop(key, None)
    else:
        context.state.config_records[key] = config_record(state)


def _answer_stage(stage: str, context: Context, message: Mapping[str, object]) -> ConfigRecord:
    """The share-keys or unmask answer of the round ``message`` names; a failure drops it."""
    round_id = round_of(message)
    state = _secagg_state(context, stage, round_id)
    try:
        new_state, reply, _ = answer(stage, state, dict(message))
    except Exception:
        context.state.config_records.pop(_state_key(round_id), None)
        raise
    _keep_secagg(context, new_state)
    return config_record(reply)


def answer_secagg(stage: str, msg: Message, context: Context) -> Message:
    """The share-keys or unmask stage on this node; any failure ends its part in the round.

    A refusal (the client's own checks, e.g. a threshold that is not a strict majority of its
    neighbourhood) is a normal reply holding a `Refusal`, so the server can count it. An unmask
    request may carry the next round's key broadcast (stage folding): its shares go back in
    `NEXT_RECORD_KEY`, or nothing if that part fails (logged), so this round still unmasks.
    """
    records = msg.content.config_records
    content = RecordDict({RECORD_KEY: _answer_stage(stage, context, records[RECORD_KEY])})
    if stage == "unmask" and NEXT_RECORD_KEY in records:
        try:
            content[NEXT_RECORD_KEY] = _answer_stage(
                "share_keys", context, records[NEXT_RECORD_KEY]
            )
        except Exception as error:  # the next round's shares must never cost this unmask
            logger.warning("no key shares for the next round: %s", error)
    return Message(content=content, reply_to=msg)


def mask_update(
    msg: Message,
    context: Context,
    update: list[np.ndarray],
    within_clip: bool,
    dither_seed: int,
    client_level: bool = False,
    noise_seed: bytes | None = None,
    min_noise_multiplier: float | None = None,
) -> tuple[ConfigRecord, int]:
    """Stage 2, right after training: the masked update (the plain one never leaves memory).

    The record holds the `MaskedInput`, or a `Refusal` if the client's checks refused the share
    delivery; then the node's secure-aggregation state is dropped. Under client-level DP
    (`client_level`) the rounding keeps the update's norm within the clip norm the server's noise
    is calibrated to (`privacy.secagg.quantization`, conditional rounding). Under distributed DP
    the client adds its noise share here, from the operating system's randomness unless a
    reproducible simulation passes ``noise_seed``.
    """
    values = SecAggInput.from_config(msg.content.config_records[INPUT_KEY])
    request = SecAggRequest.from_train_config(values.settings, values.clip_norm)
    assert request is not None
    round_id = request.config.round_id
    state = _secagg_state(context, "masked_input", round_id)
    bound = float(request.spec.clip_norm) if client_level else None
    pending = PendingInput(
        update,
        within_clip,
        request.spec,
        dither_seed,
        bound,
        request.distributed,
        noise_seed,
        min_noise_multiplier,
    )
    try:
        new_state, reply, clipped = answer(
            "masked_input",
            state,
            dict(msg.content.config_records[RECORD_KEY]),
            pending,
            values.weight,
        )
    except Exception:
        context.state.config_records.pop(_state_key(round_id), None)
        raise
    _keep_secagg(context, new_state)
    return config_record(reply), clipped


def _sent_update(
    override: UpdateOverride | None, client_id: int, update: list[np.ndarray]
) -> list[np.ndarray]:
    """The update this client sends: its own, unless an audit's override replaces it."""
    if override is None:
        return update
    replaced = override(client_id, update)
    return update if replaced is None else replaced


def make_client_app(
    fixed_config: RunConfig | None = None,
    mods: list[Mod] | None = None,
    step_observers: StepObservers | None = None,
    update_override: UpdateOverride | None = None,
) -> ClientApp:
    """A ClientApp; `fixed_config` (used by `privet simulate`) overrides Flower's run config.

    `mods` are Flower client mods wrapped around every handler (tests use them to inject faults).
    `step_observers` gives, for a client id, what watches that client's DP-SGD steps (None for
    most): only `privet audit` passes it, in this process; a deployed ClientApp never has one.
    `update_override` (also the audit's only) replaces the update a canary client sends, before
    it is masked, so canary clients work under secure aggregation and distributed DP too.
    """
    wording: list[Mod] = [deployment_wording] if fixed_config is None else []
    app = ClientApp(mods=[*wording, *(mods or [])])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Say which client (data shard) this node is, so the server can sample reproducibly."""
        config = _config_of(context, fixed_config)
        data = load_node_data(config, context.node_config)
        records = msg.content.config_records
        query = IdentityQuery.from_config(records.get(CONFIG_RECORD, {}))
        check_same_schema(query.schema_digest, data.schema_digest, context.node_config)
        if query.backbone_digest is not None:
            check_same_backbone(query.backbone_digest, _backbone_of(config, data), config.model)
        identity = IdentityReply(data.client_id, data.classes_present)
        metrics = metric_record(identity.to_metrics())
        return Message(content=RecordDict({METRICS_RECORD: metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        # Imported here: in a deployment every message starts a fresh ClientApp process, and
        # the key-exchange queries must not pay for importing torch and Opacus.
        from privet.client.training_round import (
            ClientDecline,
            distributed_noise_seed,
            planned_client_noise,
            round_seed,
            run_training_round,
            torch_threads_for_client,
        )

        torch_threads_for_client()
        config = _config_of(context, fixed_config)
        data = load_node_data(config, context.node_config)
        global_weights = msg.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays()
        instructions = TrainInstructions.from_config(msg.content.config_records[CONFIG_RECORD])
        server_round, clip_norm = instructions.server_round, instructions.clip_norm
        secure = RECORD_KEY in msg.content.config_records
        # One writer per ledger: held from reading the ledger to its last record (write-ahead),
        # so a second process training as this client is refused, naming this one's PID.
        node_budget = node_epsilon_budget(context.node_config)
        with ledger_lock(ledger_path(config, data.client_id, context.node_config)).acquire():
            ledger = load_ledger(context, config, data)
            outcome = run_training_round(
                config,
                data,
                global_weights,
                ledger,
                server_round,
                clip_norm,
                run_token=instructions.run_token,
                node_epsilon_budget=node_budget,
                step_observer=step_observers(data.client_id) if step_observers else None,
            )
            store_ledger(context, ledger)
        if isinstance(outcome, ClientDecline):
            forget_secagg(context)
            declined = TrainReply(outcome.status.to_metrics(), declined=True)
            metrics = metric_record(declined.to_metrics())
            return Message(content=RecordDict({METRICS_RECORD: metrics}), reply_to=msg)
        if secure:
            masked, clipped = mask_update(
                msg,
                context,
                _sent_update(update_override, data.client_id, outcome.update),
                bool(outcome.within_clip),
                round_seed(config, server_round, data.client_id, purpose=1),
                client_level=config.client_level_dp,
                noise_seed=distributed_noise_seed(config, server_round, data.client_id),
                min_noise_multiplier=planned_client_noise(config),
            )
            reply = TrainReply(
                outcome.status.to_metrics(),
                quantization_clipped=clipped,
                train_seconds=outcome.train_seconds,
                round_steps=outcome.steps,
                gpu_peak_bytes=outcome.gpu_peak_bytes,
            )
            content = RecordDict(
                {METRICS_RECORD: metric_record(reply.to_metrics()), RECORD_KEY: masked}
            )
            if NEXT_INPUT_KEY in msg.content.config_records:
                current = round_of(msg.content.config_records[INPUT_KEY])
                ahead = advertise_ahead(msg, context, data.client_id, len(data.train), current)
                for key, record in ahead.items():
                    content[key] = record
            return Message(content=content, reply_to=msg)
        reply = TrainReply(
            outcome.status.to_metrics(),
            within_clip=outcome.within_clip,
            train_seconds=outcome.train_seconds,
            round_steps=outcome.steps,
            gpu_peak_bytes=outcome.gpu_peak_bytes,
        )
        content = RecordDict(
            {
                ARRAYS_RECORD: ArrayRecord(
                    _sent_update(update_override, data.client_id, outcome.update)
                ),
                METRICS_RECORD: metric_record(reply.to_metrics()),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.query(STAGE_ACTIONS["advertise_keys"])
    def secagg_advertise_keys(msg: Message, context: Context) -> Message:
        config = _config_of(context, fixed_config)
        data = load_node_data(config, context.node_config)
        return advertise_secagg(msg, context, data.client_id, len(data.train))

    @app.query(STAGE_ACTIONS["share_keys"])
    def secagg_share_keys(msg: Message, context: Context) -> Message:
        return answer_secagg("share_keys", msg, context)

    @app.query(STAGE_ACTIONS["unmask"])
    def secagg_unmask(msg: Message, context: Context) -> Message:
        return answer_secagg("unmask", msg, context)

    @app.query(LINK_CHECK_ACTION)
    def link_check(msg: Message, context: Context) -> Message:
        """What the server sent, back at once: no data read, no ledger (server.link_check)."""
        del context
        arrays = msg.content.array_records.get(ARRAYS_RECORD)
        return Message(
            content=RecordDict({ARRAYS_RECORD: arrays}) if arrays is not None else RecordDict(),
            reply_to=msg,
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from privet.client.training_round import run_local_evaluation, torch_threads_for_client

        torch_threads_for_client()
        config = _config_of(context, fixed_config)
        data = load_node_data(config, context.node_config)
        weights = msg.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays()
        count, loss, accuracy = run_local_evaluation(config, data, weights)
        reply = EvaluateReply(count, accuracy, loss=loss, client_id=data.client_id)
        metrics = metric_record(reply.to_metrics())
        return Message(content=RecordDict({METRICS_RECORD: metrics}), reply_to=msg)

    return app


app = make_client_app()
