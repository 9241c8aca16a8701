"""Round time and upload size of Privet's secure aggregation, beside plaintext and Flower's SecAgg+.

Four aggregations of the same workload, measured in one run on Flower's simulation runtime
(in-process, Ray backend, one CPU per client):

- Privet plaintext: Privet's strategy and ClientApp handlers, updates sent in the clear;
- Privet SecAgg+: the same with ``--secure-aggregation`` (keys with the TRAIN reply, then the
  share-keys, masked-input and unmask queries); default settings (complete graph up to 32
  clients, else 2·⌈log2 n⌉ neighbours; t = 2/3 of each neighbourhood; 2^16 levels);
- Flower plaintext and Flower SecAgg+ (legacy ``SecAggPlusWorkflow`` + ``secaggplus_mod``), from
  `benchmarks.flower_secaggplus`, once with the settings of Flower's own example (3 shares,
  threshold 2) and once with all-pairs shares (``num_shares=1.0``), the security Privet's
  complete graph gives.

The workload: no training. Each client returns the same fixed float32 vector of ``num_params``
values from N(0, 0.01²) (`benchmarks.flower_secaggplus.client_vector`), so the figures isolate the
cost of aggregation. Privet's clients clip the vector to S = 2·0.01·√P (twice its expected norm:
nothing is clipped) as the product does. A round is timed in the ServerApp from sending the TRAIN
messages to holding the new model, after one untimed warm-up round (Ray start-up); the median of
the timed rounds is reported. Bytes: the protobuf size of every reply content a client sent in a
round (all stages), averaged over clients. Every run's final model is checked against the mean
of the clients' vectors; a wrong aggregate raises instead of being timed.

Run from the repository root::

    .venv/bin/python -m benchmarks.secagg_round                      # the full grid
    .venv/bin/python -m benchmarks.secagg_round --clients 10 --params 1000000
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from benchmarks.flower_secaggplus import (
    WARMUP_ROUNDS,
    _prepare_environment,
    _read_byte_logs,
    client_vector,
    run_flower_round,
)
from privet.client.app import advertise_secagg, answer_secagg, make_client_app, mask_update
from privet.client.training_round import clip_update
from privet.privacy import ClientPrivacy
from privet.privacy.secagg.wire import RECORD_KEY, STAGE_ACTIONS
from privet.server.evaluation import ServerEvaluator
from privet.server.federation_privacy import FederationPrivacy
from privet.server.sampling import ClientSampler
from privet.server.secure_aggregation import SecAggSettings
from privet.server.secure_round import SecureAggregation
from privet.server.strategy import PrivetFedAvg
from privet.server.update_steps import PlainAggregation
from privet.task.config import DEFAULT_SECAGG_LEVELS, DEFAULT_SECAGG_THRESHOLD, RunConfig

GRID = [(10, 100_000), (10, 1_000_000), (50, 100_000), (50, 1_000_000)]


def clip_for(num_params: int) -> float:
    """Update clip norm: twice the expected norm of a client's vector (0.01·√P)."""
    return 2 * 0.01 * math.sqrt(num_params)


@dataclass(frozen=True)
class _ReplyBytes:
    """Client mod: log the serialized size of every reply (all stages) to a per-node file."""

    log_dir: str

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        """Pass the message on, then log its reply's size under the round (the group id)."""
        reply = call_next(msg, context)
        if msg.metadata.message_type != "query" and reply.has_content():
            size = recorddict_to_proto(reply.content).ByteSize()
            with (Path(self.log_dir) / f"{context.node_id}.txt").open("a") as out:
                out.write(f"{context.node_id} {msg.metadata.group_id} {size}\n")
        return reply


def fixed_vector_client_app(num_params: int, seed: int, log_dir: str) -> ClientApp:
    """Privet's ClientApp handlers with training replaced by the fixed vector."""
    app = ClientApp(mods=[_ReplyBytes(log_dir)])

    @app.query()
    def who(msg: Message, context: Context) -> Message:
        cid = int(context.node_config["partition-id"])  # type: ignore[call-overload]
        return Message(
            content=RecordDict({"metrics": MetricRecord({"client-id": cid})}), reply_to=msg
        )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cid = int(context.node_config["partition-id"])  # type: ignore[call-overload]
        config = msg.content["config"]
        clip = float(config["clip-norm"]) if "clip-norm" in config else None  # type: ignore[arg-type]
        update = [client_vector(cid, num_params, seed)]
        within = True
        if clip is not None:
            update, within = clip_update(update, clip)
        status = ClientPrivacy(cid, 1, 0.0, 1e-5, 1.0, 1.0, 1, 1)
        metrics = MetricRecord({**status.to_metrics(), "declined": 0})
        if RECORD_KEY not in msg.content.config_records:
            content = RecordDict({"arrays": ArrayRecord(update), "metrics": metrics})
        else:
            masked, _ = mask_update(msg, context, update, within, seed + cid)
            content = RecordDict({"metrics": metrics, RECORD_KEY: masked})
        return Message(content=content, reply_to=msg)

    @app.query(STAGE_ACTIONS["advertise_keys"])
    def advertise(msg: Message, context: Context) -> Message:
        cid = int(context.node_config["partition-id"])  # type: ignore[call-overload]
        return advertise_secagg(msg, context, cid, 1)

    for stage in ("share_keys", "unmask"):
        action = STAGE_ACTIONS[stage]

        def handler(msg: Message, context: Context, stage: str = stage) -> Message:
            return answer_secagg(stage, msg, context)

        app.query(action)(handler)
    return app


@dataclass
class _Record:
    round_seconds: list[float] = field(default_factory=list)
    model: list[np.ndarray] | None = None
    secure_outcomes: list[dict[str, object] | None] = field(default_factory=list)
    error: BaseException | None = None


@dataclass(frozen=True)
class PrivetRoundTiming:
    """One measured Privet configuration."""

    num_clients: int
    num_params: int
    secure: bool
    round_seconds: float
    bytes_sent_per_client: float


def run_privet_round(
    num_clients: int, num_params: int, *, secure: bool, rounds: int = 2, seed: int = 0
) -> PrivetRoundTiming:
    """Time Privet rounds on the fixed-vector workload; check the aggregate; return the median."""
    log_dir = Path(tempfile.mkdtemp(prefix="psa-bytes-"))
    record = _run_rounds(
        fixed_vector_client_app(num_params, seed, str(log_dir)),
        [np.zeros(num_params, dtype=np.float32)],
        num_clients,
        clip_for(num_params),
        secure=secure,
        rounds=rounds,
        seed=seed,
    )
    try:
        _check(record, num_clients, num_params, seed, WARMUP_ROUNDS + rounds, secure)
        nbytes = _read_byte_logs(
            log_dir, num_clients, range(WARMUP_ROUNDS + 1, WARMUP_ROUNDS + rounds + 1)
        )
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    return PrivetRoundTiming(
        num_clients,
        num_params,
        secure,
        statistics.median(record.round_seconds[WARMUP_ROUNDS:]),
        nbytes,
    )


def run_training_round(config: RunConfig, *, rounds: int = 2) -> PrivetRoundTiming:
    """Time rounds of the real product: Privet's ClientApp with Opacus DP-SGD on ``config``.

    The server loop is the one above (no evaluation), so the figure is train + aggregation.
    """
    log_dir = Path(tempfile.mkdtemp(prefix="psa-bytes-"))
    initial = ServerEvaluator(config).initial_weights()
    try:
        record = _run_rounds(
            make_client_app(config, mods=[_ReplyBytes(str(log_dir))]),
            initial,
            config.clients,
            config.update_clip_norm,
            secure=config.secure_aggregation,
            rounds=rounds,
            seed=config.seed,
        )
        if config.secure_aggregation and any(
            o is None or o.get("status") != "ok" for o in record.secure_outcomes
        ):
            raise RuntimeError(f"a secure round failed: {record.secure_outcomes}")
        total = WARMUP_ROUNDS + rounds
        nbytes = _read_byte_logs(log_dir, config.clients, range(WARMUP_ROUNDS + 1, total + 1))
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    return PrivetRoundTiming(
        config.clients,
        sum(int(w.size) for w in initial),
        config.secure_aggregation,
        statistics.median(record.round_seconds[WARMUP_ROUNDS:]),
        nbytes,
    )


def _run_rounds(
    client_app: ClientApp,
    initial: list[np.ndarray],
    num_clients: int,
    clip_norm: float,
    *,
    secure: bool,
    rounds: int,
    seed: int,
) -> _Record:
    """Run WARMUP_ROUNDS + ``rounds`` Privet rounds on Flower's simulation runtime, timed."""
    _prepare_environment()
    record = _Record()
    total = WARMUP_ROUNDS + rounds
    settings = (
        SecAggSettings(DEFAULT_SECAGG_THRESHOLD, None, DEFAULT_SECAGG_LEVELS, 600.0)
        if secure
        else None
    )

    def server_main(grid: Grid, context: Context) -> None:
        try:
            strategy = PrivetFedAvg(
                FederationPrivacy(),
                sampler=ClientSampler(np.random.default_rng(seed), rate=1.0),
                aggregation=(
                    SecureAggregation(settings, clip_norm)
                    if settings is not None
                    else PlainAggregation()
                ),
            )
            strategy.discover_clients(grid, num_clients, 600)
            arrays = ArrayRecord(initial)
            for server_round in range(1, total + 1):
                start = time.perf_counter()
                arrays, _ = strategy.train_round(server_round, arrays, ConfigRecord(), grid, 600)
                record.round_seconds.append(time.perf_counter() - start)
                record.secure_outcomes.append(strategy.outcomes[server_round].secure_aggregation)
            record.model = arrays.to_numpy_ndarrays()
        except BaseException as exc:
            record.error = exc
            raise

    server_app = ServerApp()
    server_app.main()(server_main)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if record.error is not None:
        raise RuntimeError("the Privet ServerApp failed") from record.error
    return record


def _check(
    record: _Record, num_clients: int, num_params: int, seed: int, total: int, secure: bool
) -> None:
    """The model after ``total`` rounds must be ``total`` times the clients' mean vector."""
    if record.model is None or len(record.round_seconds) != total:
        raise RuntimeError("the Privet run did not complete every round")
    mean = sum(client_vector(k, num_params, seed).astype(np.float64) for k in range(num_clients))
    expected = total * mean / num_clients
    error = float(np.max(np.abs(record.model[0].astype(np.float64) - expected)))
    allowed = 1e-5
    if secure:
        outcomes = record.secure_outcomes
        if any(o is None or o.get("status") != "ok" for o in outcomes):
            raise RuntimeError(f"a secure round failed: {outcomes}")
        allowed += sum(float(o["error_bound"]) for o in outcomes if o is not None)  # type: ignore[arg-type]
    if error > allowed:
        raise RuntimeError(f"Privet aggregate is wrong: max error {error:.3g} > {allowed:.3g}")


def _row(name: str, seconds: float, nbytes: float, base: float, base_bytes: float) -> str:
    return (
        f"  {name:<32} {seconds:8.3f} s  {seconds / base:6.2f}x   "
        f"{nbytes / 1e6:8.2f} MB  {nbytes / base_bytes:5.2f}x"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the grid (or one configuration) and print times, bytes and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, help="one configuration: number of clients")
    parser.add_argument("--params", type=int, help="one configuration: model size")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (median reported)")
    parser.add_argument("--skip-flower", action="store_true", help="measure Privet only")
    parser.add_argument(
        "--data-dir", default="../shared/data/mnist", help="MNIST folder for the training rows"
    )
    parser.add_argument("--skip-training", action="store_true", help="no DP-training rows")
    parser.add_argument(
        "--models", default="mlp,mlp-large,cnn", help="models of the DP-training rows"
    )
    parser.add_argument("--skip-grid", action="store_true", help="only the DP-training rows")
    args = parser.parse_args(argv)
    if not args.skip_training:
        training_rows(args.data_dir, args.rounds, args.models.split(","))
    if args.skip_grid:
        return
    grid = GRID if args.clients is None else [(args.clients, args.params or 100_000)]
    print("Round time, fixed-vector clients (no training); ratios vs Privet plaintext")
    for clients, params in grid:
        plain = run_privet_round(clients, params, secure=False, rounds=args.rounds)
        secure = run_privet_round(clients, params, secure=True, rounds=args.rounds)
        base, base_bytes = plain.round_seconds, plain.bytes_sent_per_client
        print(f"{clients} clients, {params:,} parameters:")
        print(_row("Privet plaintext", base, base_bytes, base, base_bytes))
        print(
            _row(
                "Privet SecAgg+",
                secure.round_seconds,
                secure.bytes_sent_per_client,
                base,
                base_bytes,
            )
        )
        if args.skip_flower:
            continue
        for label, shares, threshold in (
            ("Flower plaintext", None, None),
            ("Flower SecAgg+ (3 shares, t=2)", 3, 2),
            ("Flower SecAgg+ (all pairs, t=2/3)", 1.0, 2 / 3),
        ):
            if shares is None:
                flower = run_flower_round(clients, params, secure=False, rounds=args.rounds)
            else:
                flower = run_flower_round(
                    clients,
                    params,
                    secure=True,
                    rounds=args.rounds,
                    num_shares=shares,
                    reconstruction_threshold=threshold,
                )
            print(_row(label, flower.round_seconds, flower.bytes_sent_per_client, base, base_bytes))
            if shares is not None:
                speedup = flower.round_seconds / secure.round_seconds
                print(f"  {'':<32} Privet SecAgg+ is {speedup:.2f}x faster than this")


def training_rows(data_dir: str, rounds: int, models: Sequence[str]) -> None:
    """Round time of the real product (DP-SGD on MNIST, 10 clients) with and without SecAgg+."""
    print("Rounds with Opacus DP-SGD (MNIST, 10 IID clients, 1 local epoch, batch 256):")
    for model in models:
        times = {}
        for secure in (False, True):
            config = RunConfig(
                dataset="mnist",
                data_dir=data_dir,
                clients=10,
                rounds=WARMUP_ROUNDS + rounds,
                local_epochs=1,
                batch_size=256,
                model=model,
                secure_aggregation=secure,
                output=tempfile.mkdtemp(prefix="psa-out-"),
            )
            times[secure] = run_training_round(config, rounds=rounds)
        plain, secure_t = times[False], times[True]
        print(f"{model} ({plain.num_params:,} parameters):")
        for label, t in (("Privet plaintext", plain), ("Privet SecAgg+", secure_t)):
            print(
                _row(
                    label,
                    t.round_seconds,
                    t.bytes_sent_per_client,
                    plain.round_seconds,
                    plain.bytes_sent_per_client,
                )
            )


if __name__ == "__main__":
    main()
