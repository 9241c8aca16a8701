"""Baseline: the round time and upload size of Flower's own SecAgg+ next to Flower's plain FedAvg.

What it measures, with the same workload in both modes:

- ``secure=False``: Flower's legacy ``ServerApp`` running ``DefaultWorkflow`` (plain FedAvg fit
  round, no evaluation) over legacy ``NumPyClient`` clients.
- ``secure=True``: the same, with ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` on the
  server and ``secaggplus_mod`` on the clients (4 message exchanges per round: setup, share keys,
  collect masked vectors, unmask).

Each client's ``fit`` does no training: it returns one fixed float32 vector of ``num_params``
values drawn from N(0, 0.01²) by a numpy generator seeded with ``(seed, partition id)``, and
``num_examples=1``. The global model is one float32 array of zeros. Everything runs in-process with
``flwr.simulation.run_simulation`` and the Ray backend (1 CPU per client, no GPU).

Why: this is the baseline a secure-aggregation implementation is compared against; the ratio
secure / plain is what Flower's SecAgg+ costs per round on the same machine and workload.

Measured quantities:

- ``round_seconds``: wall time of one fit round only (a wrapper around the fit workflow, from
  ``configure_fit`` up to the stored aggregate), never the Ray / simulation start-up; the median
  over ``rounds`` timed rounds. One extra warm-up round runs first and is not timed: Flower's
  simulation starts the ServerApp while Ray is still starting, so the first round's wall time
  includes Ray's start-up and the actors' imports (about 3-5 s on a 2-CPU machine).
- ``bytes_sent_per_client``: for every reply a client sends in a round, the protobuf
  ``ByteSize()`` of ``flwr.common.serde.recorddict_to_proto(reply.content)``, summed over the
  round's messages (all four SecAgg+ stages), averaged over clients and the timed rounds. A client
  mod placed *outside* ``secaggplus_mod`` (first in ``mods``) sees the final replies. The clients
  run in Ray actor processes, so each mod appends ``"node_id round bytes"`` lines to a per-node
  file in a temporary directory that the driver reads back after the run. Only the reply content
  is counted (no message metadata, no transport framing). Serializing a reply to count it costs
  the client a few milliseconds per megabyte, in both modes alike.

SecAgg+ parameters. ``SecAggPlusWorkflow`` has no defaults for ``num_shares`` and
``reconstruction_threshold`` (both are required arguments in flwr 1.42); this module uses the
values of Flower's own secure-aggregation example (``examples/flower-secure-aggregation``):
``num_shares=3`` and ``reconstruction_threshold=2``, i.e. each client is masked with its 2 ring
neighbours and a secret is recoverable from 2 shares. Everything else is Flower's default:
``clipping_range=8.0``, ``quantization_range=2**22``, ``modulus_range=2**32``,
``max_weight=1000.0``, ``timeout=None``. Pass ``num_shares=1.0`` (a float: a fraction of the
sampled clients) for classic all-pairs SecAgg.

Correctness check: after every run the final global model is compared with the mean of the
clients' vectors, recomputed in the driver, and a mismatch raises, so a broken run is never
reported. Plain FedAvg must match to 1e-6. SecAgg+ scales each update by
``round(num_examples / max_weight * quantization_range) / quantization_range`` (≈ 1e-3 with the
defaults) before quantizing with step ``2 * clipping_range / quantization_range``, so the effective
step on the update is ``2 * clipping_range / q_ratio`` ≈ 3.8e-3, and stochastic rounding leaves an
error below one step per client. The check therefore demands a max abs error below one effective
step and an RMS error below ``0.5 * step / sqrt(num_clients)`` (stochastic rounding's RMS is about
``0.41 * step / sqrt(num_clients)``); a broken mask or overflow gives errors of order 1 or more.

Run from the repository root::

    .venv/bin/python -m benchmarks.flower_secaggplus --clients 10 --params 100000
    .venv/bin/python -m benchmarks.flower_secaggplus --clients 50 --params 1000000 --secure
"""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, Message, MessageType, NDArrays, Scalar, ndarrays_to_parameters
from flwr.common.serde import recorddict_to_proto
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.simulation import run_simulation

__all__ = [
    "CLIPPING_RANGE",
    "MAX_WEIGHT",
    "MODULUS_RANGE",
    "NUM_SHARES",
    "QUANTIZATION_RANGE",
    "RECONSTRUCTION_THRESHOLD",
    "WARMUP_ROUNDS",
    "FlowerRoundTiming",
    "client_vector",
    "main",
    "run_flower_round",
]

NUM_SHARES: int | float = 3
"""Shares per client secret (Flower's secure-aggregation example; Flower has no default)."""
RECONSTRUCTION_THRESHOLD: int | float = 2
"""Shares needed to reconstruct a secret (Flower's example; Flower has no default)."""
CLIPPING_RANGE = 8.0
"""Flower's default: values are clipped to ±8 before quantization."""
QUANTIZATION_RANGE = 2**22
"""Flower's default quantization range."""
MODULUS_RANGE = 2**32
"""Flower's default modulus of the masked integers."""
MAX_WEIGHT = 1000.0
"""Flower's default largest client weight (``num_examples``) SecAgg+ can carry."""
VALUE_STD = 0.01
"""Standard deviation of the clients' fixed update values."""
WARMUP_ROUNDS = 1
"""Untimed rounds run first: the first round overlaps Ray's start-up (see the module docstring)."""
PARTITION_ID_KEY = "partition-id"
"""The ``node_config`` key Flower's simulation gives each virtual SuperNode's index."""


@dataclass(frozen=True)
class FlowerRoundTiming:
    """One measured configuration: round time and per-client upload of Flower's aggregation."""

    num_clients: int
    num_params: int
    secure: bool
    """True: Flower's legacy SecAgg+; False: Flower's legacy plain FedAvg."""
    round_seconds: float
    """Wall time of one fit round (median over the rounds), excluding simulation start-up."""
    bytes_sent_per_client: float
    """Mean over clients of the serialized size of all reply contents a client sent in a round."""


def client_vector(partition_id: int, num_params: int, seed: int) -> np.ndarray:
    """The fixed update of client ``partition_id``: float32 values from N(0, 0.01²).

    Deterministic in ``(seed, partition_id)`` so the driver can recompute the expected mean.
    """
    rng = np.random.default_rng([seed, partition_id])
    return rng.normal(0.0, VALUE_STD, size=num_params).astype(np.float32)


class _FixedVectorClient(NumPyClient):
    """A legacy NumPyClient whose ``fit`` does no training and returns its fixed vector."""

    def __init__(self, partition_id: int, num_params: int, seed: int) -> None:
        self.partition_id = partition_id
        self.num_params = num_params
        self.seed = seed

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Return the client's fixed vector with weight 1 and no metrics."""
        return [client_vector(self.partition_id, self.num_params, self.seed)], 1, {}


@dataclass(frozen=True)
class _ClientFactory:
    """``client_fn`` for the ClientApp; a module-level class so Ray actors unpickle it by name."""

    num_params: int
    seed: int

    def __call__(self, context: Context) -> Client:
        """Build the client of the virtual SuperNode this context belongs to."""
        partition_id = int(context.node_config[PARTITION_ID_KEY])
        return _FixedVectorClient(partition_id, self.num_params, self.seed).to_client()


@dataclass(frozen=True)
class _ReplyByteCounter:
    """Client mod that records the serialized size of every TRAIN reply a node sends.

    It must be the outermost mod (first in ``mods``) so that it sees the replies that actually
    leave the node, after ``secaggplus_mod`` replaced the plain FitRes with its stage payloads. It
    appends ``"node_id round bytes"`` to ``<log_dir>/<node_id>.txt``: the ClientApp runs in Ray
    actor processes, so a file is how the counts get back to the driver. One node is never served
    by two actors at once, so per-node files need no locking.
    """

    log_dir: str

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        """Pass the message on, then log the reply's serialized content size."""
        reply = call_next(msg, context)
        if msg.metadata.message_type == MessageType.TRAIN and reply.has_content():
            size = recorddict_to_proto(reply.content).ByteSize()
            path = Path(self.log_dir) / f"{context.node_id}.txt"
            with path.open("a", encoding="ascii") as out:
                out.write(f"{context.node_id} {msg.metadata.group_id} {size}\n")
        return reply


@dataclass
class _ServerRecord:
    """What the ServerApp thread hands back to the driver (same process, shared object)."""

    round_seconds: list[float] = field(default_factory=list)
    final_model: list[np.ndarray] | None = None
    error: BaseException | None = None


@dataclass
class _TimedFitWorkflow:
    """Wraps a fit workflow to time each round and keep the global model it produced."""

    inner: Callable[[Grid, Context], None]
    record: _ServerRecord

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run one fit round, recording its wall time and the resulting global model."""
        start = time.perf_counter()
        self.inner(grid, context)
        self.record.round_seconds.append(time.perf_counter() - start)
        self.record.final_model = context.state.array_records[
            MAIN_PARAMS_RECORD
        ].to_numpy_ndarrays()


def _skip_evaluation(grid: Grid, context: Context) -> None:
    """Evaluate workflow that does nothing: the benchmark times fit rounds only."""


def _prepare_environment() -> None:
    """Keep Flower and Ray offline, quiet, bound to 127.0.0.1, and writing to temporary folders.

    The same settings as the project's ``tests/conftest.py``; values already set are kept.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds to 127.0.0.1 only
    if "RAY_TMPDIR" not in os.environ or "FLWR_HOME" not in os.environ:
        # Ray puts Unix sockets under its temp dir, whose path must stay short (< 108 bytes).
        scratch = Path(tempfile.mkdtemp(prefix="fsa-", dir="/tmp"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # Ray's logs and sockets
        os.environ.setdefault("RAY_TMPDIR", str(scratch / "ray"))
        os.environ.setdefault("FLWR_HOME", str(scratch / "flwr"))
    Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    Path(os.environ["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)


def _read_byte_logs(log_dir: Path, num_clients: int, timed_rounds: Sequence[int]) -> float:
    """Mean bytes one client sent in one of ``timed_rounds``, from the mods' per-node log files.

    Raises if any client is missing for any of those rounds: the count must cover every client.
    """
    wanted = {str(r) for r in timed_rounds}
    per_client_round: dict[tuple[int, str], int] = {}
    for path in log_dir.glob("*.txt"):
        for line in path.read_text(encoding="ascii").splitlines():
            node_id, group_id, size = line.split()
            if group_id not in wanted:
                continue
            key = (int(node_id), group_id)
            per_client_round[key] = per_client_round.get(key, 0) + int(size)
    expected = num_clients * len(wanted)
    if len(per_client_round) != expected:
        raise RuntimeError(
            f"byte counts cover {len(per_client_round)} (client, round) pairs, expected {expected}"
        )
    return statistics.fmean(per_client_round.values())


def _check_aggregate(
    model: list[np.ndarray] | None,
    num_clients: int,
    num_params: int,
    seed: int,
    *,
    secure: bool,
    clipping_range: float,
    quantization_range: int,
    max_weight: float,
) -> None:
    """Raise unless the final global model equals the clients' mean (up to SecAgg+ quantization)."""
    if model is None or len(model) != 1 or model[0].shape != (num_params,):
        raise RuntimeError("the run produced no global model of the expected shape")
    expected = np.zeros(num_params, dtype=np.float64)
    for partition_id in range(num_clients):
        expected += client_vector(partition_id, num_params, seed)
    expected /= num_clients
    error = np.asarray(model[0], dtype=np.float64) - expected
    max_error = float(np.max(np.abs(error)))
    rms_error = float(np.sqrt(np.mean(error**2)))
    if secure:
        # Effective quantization step on a weight-1 update: see the module docstring.
        q_ratio = round(1.0 / max_weight * quantization_range)
        step = 2.0 * clipping_range / q_ratio
        max_allowed = step + 1e-6
        # 0.5 * step bounds the per-value standard deviation of stochastic rounding; the factor
        # covers the sampling spread of an RMS over few values (negligible for large models).
        rms_allowed = 0.5 * step / math.sqrt(num_clients) * (1 + 4 / math.sqrt(num_params)) + 1e-6
    else:
        max_allowed = rms_allowed = 1e-6
    if max_error > max_allowed or rms_error > rms_allowed:
        raise RuntimeError(
            f"{'SecAgg+' if secure else 'FedAvg'} aggregate is wrong: "
            f"max abs error {max_error:.3g} "
            f"(allowed {max_allowed:.3g}), RMS error {rms_error:.3g} (allowed {rms_allowed:.3g})"
        )


def run_flower_round(
    num_clients: int,
    num_params: int,
    *,
    secure: bool,
    rounds: int = 2,
    seed: int = 0,
    num_shares: int | float = NUM_SHARES,
    reconstruction_threshold: int | float = RECONSTRUCTION_THRESHOLD,
) -> FlowerRoundTiming:
    """Run Flower fit rounds in simulation; return the median time and bytes of ``rounds`` rounds.

    One untimed warm-up round runs first (:data:`WARMUP_ROUNDS`).

    ``secure=True`` uses Flower's legacy SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``),
    ``secure=False`` Flower's legacy plain FedAvg fit round; the workload is identical. The final
    global model is checked against the clients' mean and a mismatch raises ``RuntimeError``.
    ``num_shares`` / ``reconstruction_threshold`` go to ``SecAggPlusWorkflow`` unchanged.
    """
    if num_clients < 2 or num_params < 1 or rounds < 1:
        raise ValueError("need num_clients >= 2, num_params >= 1 and rounds >= 1")
    _prepare_environment()
    record = _ServerRecord()
    total_rounds = WARMUP_ROUNDS + rounds
    log_dir = Path(tempfile.mkdtemp(prefix="fsa-bytes-"))

    def server_main(grid: Grid, context: Context) -> None:
        """The ServerApp body: FedAvg over all clients, with or without SecAgg+."""
        try:
            strategy = FedAvg(
                fraction_fit=1.0,
                fraction_evaluate=0.0,
                min_fit_clients=num_clients,
                min_evaluate_clients=num_clients,
                min_available_clients=num_clients,
                initial_parameters=ndarrays_to_parameters([np.zeros(num_params, np.float32)]),
            )
            legacy = LegacyContext(
                context=context, config=ServerConfig(num_rounds=total_rounds), strategy=strategy
            )
            inner: Callable[[Grid, Context], None] = default_fit_workflow
            if secure:
                inner = SecAggPlusWorkflow(
                    num_shares=num_shares,
                    reconstruction_threshold=reconstruction_threshold,
                    clipping_range=CLIPPING_RANGE,
                    quantization_range=QUANTIZATION_RANGE,
                    modulus_range=MODULUS_RANGE,
                    max_weight=MAX_WEIGHT,
                )
            workflow = DefaultWorkflow(
                fit_workflow=_TimedFitWorkflow(inner, record), evaluate_workflow=_skip_evaluation
            )
            workflow(grid, legacy)
        except BaseException as exc:  # handed to the driver, which re-raises it
            record.error = exc
            raise

    server_app = ServerApp()
    server_app.main()(server_main)
    counter = _ReplyByteCounter(str(log_dir))
    mods: list[Any] = [counter, secaggplus_mod] if secure else [counter]
    client_app = ClientApp(client_fn=_ClientFactory(num_params, seed), mods=mods)

    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_clients,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
        if record.error is not None:
            raise RuntimeError("the Flower ServerApp failed") from record.error
        if len(record.round_seconds) != total_rounds:
            raise RuntimeError(
                f"{len(record.round_seconds)} of {total_rounds} fit rounds completed; "
                "see Flower's log"
            )
        _check_aggregate(
            record.final_model,
            num_clients,
            num_params,
            seed,
            secure=secure,
            clipping_range=CLIPPING_RANGE,
            quantization_range=QUANTIZATION_RANGE,
            max_weight=MAX_WEIGHT,
        )
        timed_rounds = range(WARMUP_ROUNDS + 1, total_rounds + 1)  # Flower counts from 1
        bytes_per_client = _read_byte_logs(log_dir, num_clients, timed_rounds)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)

    return FlowerRoundTiming(
        num_clients=num_clients,
        num_params=num_params,
        secure=secure,
        round_seconds=statistics.median(record.round_seconds[WARMUP_ROUNDS:]),
        bytes_sent_per_client=bytes_per_client,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: time Flower's SecAgg+ and/or plain FedAvg rounds and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10, help="number of clients (default 10)")
    parser.add_argument("--params", type=int, default=100_000, help="model size (default 100000)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="timed fit rounds after 1 warm-up; median reported"
    )
    parser.add_argument("--seed", type=int, default=0)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--secure", action="store_true", help="only SecAgg+")
    mode.add_argument("--plain", action="store_true", help="only plain FedAvg")
    parser.add_argument(
        "--num-shares", type=float, default=None, help="default 3 (an int >= 3 or a fraction)"
    )
    parser.add_argument("--reconstruction-threshold", type=float, default=None, help="default 2")
    parser.add_argument("--verbose", action="store_true", help="keep Flower's INFO log")
    args = parser.parse_args(argv)

    def as_shares(value: float | None, default: int | float) -> int | float:
        """An integral flag value is a count, anything else a fraction (Flower's convention)."""
        if value is None:
            return default
        return int(value) if value.is_integer() and value > 1 else value

    num_shares = as_shares(args.num_shares, NUM_SHARES)
    threshold = as_shares(args.reconstruction_threshold, RECONSTRUCTION_THRESHOLD)
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    modes = [True] if args.secure else [False] if args.plain else [False, True]
    print(
        f"Flower {_flwr_version()} legacy simulation, median of {args.rounds} rounds "
        f"after {WARMUP_ROUNDS} warm-up, "
        f"SecAgg+ num_shares={num_shares} reconstruction_threshold={threshold} "
        f"clipping_range={CLIPPING_RANGE} quantization_range={QUANTIZATION_RANGE} "
        f"max_weight={MAX_WEIGHT}, {os.cpu_count()} CPUs",
        flush=True,
    )
    for secure in modes:
        start = time.perf_counter()
        result = run_flower_round(
            args.clients,
            args.params,
            secure=secure,
            rounds=args.rounds,
            seed=args.seed,
            num_shares=num_shares,
            reconstruction_threshold=threshold,
        )
        total = time.perf_counter() - start
        print(
            f"clients={result.num_clients} params={result.num_params} "
            f"mode={'secaggplus' if result.secure else 'plain'} "
            f"round_seconds={result.round_seconds:.3f} "
            f"bytes_sent_per_client={result.bytes_sent_per_client:.0f} "
            f"total_seconds={total:.1f}",
            flush=True,
        )


def _flwr_version() -> str:
    """The installed Flower version, for the report header."""
    from importlib.metadata import version

    return version("flwr")


if __name__ == "__main__":
    main()
