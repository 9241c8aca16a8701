"""The Flower ServerApp: a thin adapter that runs Privet's FedAvg strategy on Flower's Grid.

`privet simulate` builds its own instance with `make_server_app(config, on_round, ...)`;
`flwr run .` uses the module-level `app`, configured from Flower's run config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from privet.privacy import PrivacyLedger
from privet.server.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    ServerCheckpoint,
    check_same_run,
    load_checkpoint,
    lock_run_folder,
    save_checkpoint,
    set_aside_run,
)
from privet.server.client_dp import make_aggregator, plan_client_level
from privet.server.evaluation import ServerEvaluator
from privet.server.federation_privacy import FederationPrivacy
from privet.server.results import (
    RoundCallback,
    RoundRecord,
    RunResults,
    write_model,
    write_results,
)
from privet.server.run_output import LEDGER_DIR, RESULTS_FILE, SERVER_LEDGER_OWNER, RunFolder
from privet.server.secure_aggregation import SecAggSettings, conditional_rounding_ratio
from privet.server.strategy import PrivetFedAvg
from privet.task.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)


class RunFailedError(RuntimeError):
    """A run that ended without training, or stopped on a failure (see results.json)."""


def server_rng(config: RunConfig, purpose: int) -> np.random.Generator:
    """The server's randomness for client sampling and client-level noise.

    Seeded from the run's seed when it is reproducible (simulations), else from the operating
    system's randomness.
    """
    if config.reproducible:
        return np.random.default_rng([config.seed, purpose, 0x5EED])
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


def prepare_output(output_dir: Path) -> None:
    """Refuse to mix two runs in one folder: results and ledgers of another run are kept."""
    for name in (RESULTS_FILE, CHECKPOINT_FILE):
        if (output_dir / name).exists():
            raise ConfigError(
                f"{output_dir / name} already exists; use a new output folder for each run, "
                "or resume that run"
            )
    if (output_dir / LEDGER_DIR).exists():
        raise ConfigError(f"{output_dir / LEDGER_DIR} already exists; use a new output folder")
    output_dir.mkdir(parents=True, exist_ok=True)


def run_federated_training(
    grid: Grid,
    config: RunConfig,
    engine: str,
    on_round: RoundCallback | None = None,
) -> RunResults:
    """Run private FedAvg and write results.json, the ledgers and the model to `config.output`.

    The run holds its folder's lock throughout (`server.checkpoint.lock_run_folder`): a second
    writer is refused, naming this process.
    """
    with lock_run_folder(Path(config.output)):
        return _run_federated_training(grid, config, engine, on_round)


def _run_federated_training(
    grid: Grid,
    config: RunConfig,
    engine: str,
    on_round: RoundCallback | None = None,
) -> RunResults:
    output_dir = Path(config.output)
    evaluator = ServerEvaluator(config)
    num_params = sum(int(np.asarray(w).size) for w in evaluator.initial_weights())
    conditional_rounding_ratio(config, num_params)  # a grid too coarse is refused before work
    checkpoint = None
    if config.resume:
        checkpoint = load_checkpoint(output_dir)
        check_same_run(checkpoint, config)
    else:
        prepare_output(output_dir)
    privacy = FederationPrivacy()
    results = RunResults(config=config, engine=engine, missing_values=evaluator.missing)
    client_level = plan_client_level(config)
    aggregator = server_ledger = None
    if client_level is not None:
        aggregator = make_aggregator(client_level, config, server_rng(config, 2))
        ledger_file = RunFolder(output_dir).ledger(SERVER_LEDGER_OWNER)
        if checkpoint is not None and ledger_file.exists():
            server_ledger = PrivacyLedger.load(ledger_file)  # never reset by a restart
            server_ledger.path = ledger_file
            for correction in server_ledger.corrections:
                logger.warning(
                    "%s: %s; the client-level epsilon so far is %.6g",
                    ledger_file,
                    correction,
                    server_ledger.epsilon(config.accountant),
                )
        else:
            server_ledger = PrivacyLedger(
                owner=SERVER_LEDGER_OWNER, level="client", delta=config.delta, path=ledger_file
            )
    strategy = PrivetFedAvg(
        privacy,
        client_sample_rate=config.client_sample_rate,
        sampling_rng=server_rng(config, 1),
        client_sampling=config.client_sampling,
        clients_per_round=config.clients_per_round,
        client_level=client_level,
        aggregator=aggregator,
        server_ledger=server_ledger,
        client_epsilon_budget=config.client_epsilon_budget,
        accountant=config.accountant,
        secagg=SecAggSettings.from_config(config),
        update_clip_norm=config.update_clip_norm,
    )
    if checkpoint is not None:
        try:
            strategy.restore_state(checkpoint.strategy)
            results.restore_state(checkpoint.results)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise CheckpointError(
                f"{output_dir / CHECKPOINT_FILE} holds a state this run cannot restore "
                f"({type(error).__name__}: {error}); restore it from a backup or start a new run"
            ) from None
        results.resumed_after.append(checkpoint.round)
        logger.warning("resuming after round %d from %s", checkpoint.round, output_dir)
    try:
        return _train(grid, config, strategy, results, evaluator, checkpoint, on_round)
    except Exception as error:
        # Failure is never success, and never silent: a run that breaks after its folder is set
        # up leaves results.json saying so (finished: false, a one-line reason), then fails.
        results.conclude(_crash_reason(error))
        try:
            write_results(output_dir, results)
        except OSError:
            logger.exception("could not record the failure in %s", output_dir / RESULTS_FILE)
        raise


def _crash_reason(error: BaseException) -> str:
    """One line naming what broke the run (the exception's type and its first line)."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"the run stopped on an error: {type(error).__name__}" + (
        f": {first_line}" if first_line else ""
    )


def _train(
    grid: Grid,
    config: RunConfig,
    strategy: PrivetFedAvg,
    results: RunResults,
    evaluator: ServerEvaluator,
    checkpoint: ServerCheckpoint | None,
    on_round: RoundCallback | None,
) -> RunResults:
    """Discover the clients, run the rounds, and write the final results and model."""
    output_dir = Path(config.output)
    privacy = strategy.privacy
    client_level, server_ledger, aggregator = (
        strategy.client_level,
        strategy.server_ledger,
        strategy.aggregator,
    )
    first_round, initial_weights = 1, None
    if checkpoint is not None:
        first_round, initial_weights = checkpoint.round + 1, checkpoint.weights
    strategy.discover_clients(
        grid, config.clients, config.round_timeout, node_clients=config.node_client_map
    )

    def client_level_summary() -> dict[str, Any] | None:
        if client_level is None or server_ledger is None or aggregator is None:
            return None
        return {
            "epsilon": server_ledger.epsilon(config.accountant),
            "delta": config.delta,
            "noise_multiplier": client_level.total_noise_multiplier,
            "update_noise_multiplier": client_level.update_noise_multiplier,
            "sample_rate": client_level.sample_rate,
            "expected_clients_per_round": client_level.expected_clients,
            "adaptive_clipping": client_level.adaptive_summary(),
            "clip_norm_final": aggregator.clip_norm,
            "rounds": len(server_ledger.rounds()),
        }

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = evaluator(arrays.to_numpy_ndarrays())
        if server_round == 0:
            results.initial_accuracy, results.initial_loss = accuracy, loss
            return MetricRecord({"accuracy": accuracy, "loss": loss})
        outcome = strategy.outcomes[server_round]
        record = RoundRecord(
            round=server_round,
            accuracy=accuracy,
            loss=loss,
            epsilon_max=privacy.epsilon_max(),
            epsilon_by_client=privacy.epsilon_by_client(server_round),
            clients_trained=len(outcome.trained),
            local_accuracy=strategy.last_local_accuracy,
            sampled=outcome.sampled,
            declined=outcome.declined,
            failed=outcome.failed,
            rejected=outcome.rejected,
            epsilon_client_level=outcome.epsilon_client_level,
            clip_norm=outcome.clip_norm,
            noised_within_fraction=outcome.noised_within_fraction,
            secure_aggregation=outcome.secure_aggregation,
            bad_replies=outcome.bad_replies,
            excluded=outcome.excluded,
            no_update=outcome.no_update,
        )
        results.rounds.append(record)
        results.clients = privacy.clients()
        results.declines = dict(strategy.declined_at)
        results.excluded = dict(strategy.excluded)
        results.epsilon_unknown = privacy.unknown()
        results.client_level = client_level_summary()
        weights = arrays.to_numpy_ndarrays()
        write_model(output_dir, evaluator.model, weights)
        write_results(output_dir, results)
        save_checkpoint(
            output_dir,
            ServerCheckpoint(
                round=server_round,
                config=config.to_json_dict(),
                weights=weights,
                strategy=strategy.checkpoint_state(),
                results=results.checkpoint_state(),
            ),
        )
        if on_round is not None:
            on_round(record)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    outcome = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(
            evaluator.initial_weights() if initial_weights is None else initial_weights
        ),
        num_rounds=config.rounds,
        first_round=first_round,
        timeout=config.round_timeout,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=evaluate_global,
    )
    results.clients = privacy.clients()
    results.declines = dict(strategy.declined_at)
    results.client_level = client_level_summary()
    results.excluded = dict(strategy.excluded)
    results.epsilon_unknown = privacy.unknown()
    results.stop_reason = strategy.stop_reason
    # Failure is never success: a run that stopped on a failure, or trained nothing, is
    # finished: false with a one-line failure_reason (and `privet simulate` exits non-zero).
    results.conclude(strategy.failure_reason)
    if results.failure_reason is not None:
        logger.error("the run failed: %s", results.failure_reason)
    write_model(output_dir, evaluator.model, outcome.arrays.to_numpy_ndarrays())
    write_results(output_dir, results)
    return results


def make_server_app(
    fixed_config: RunConfig | None = None,
    on_round: RoundCallback | None = None,
    engine: str = "flower-simulation",
    on_finish: Callable[[RunResults], None] | None = None,
) -> ServerApp:
    """A ServerApp; `fixed_config` (used by `privet simulate`) overrides Flower's run config.

    `on_round` is called after every round and `on_finish` with the results at the end, so an
    in-process caller can show progress and read the outcome.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = fixed_config or RunConfig.from_mapping(context.run_config)
        results = run_federated_training(grid, config, engine, on_round)
        if on_finish is not None:
            on_finish(results)
        elif not results.finished:
            # A deployed run (`flwr run`) that failed must not end as a successful Flower run.
            raise RunFailedError(results.failure_reason or "the run did not finish")

    return app


app = make_server_app(engine="flwr-run")


def clear_output(output_dir: Path) -> Path | None:
    """Make room for a new run (the CLI's --overwrite): nothing is deleted, ledgers included.

    The earlier run's files move to `OUTPUT/replaced/<time>/` (`server.checkpoint.set_aside_run`);
    returns that folder, or None when there was nothing to move.
    """
    return set_aside_run(output_dir)
