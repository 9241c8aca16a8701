"""The Flower ServerApp: a thin adapter that runs Privet's FedAvg strategy on Flower's Grid.

`privet simulate` builds its own instance with `make_server_app(config, on_round, ...)`;
`flwr run .` uses the module-level `app`, configured from Flower's run config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from privet.server.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    ServerCheckpoint,
    check_same_run,
    load_checkpoint,
    lock_run_folder,
    set_aside_run,
)
from privet.server.evaluation import ServerEvaluator
from privet.server.link_check import check_links
from privet.server.prompt_grid import PromptGrid, is_http_grid
from privet.server.results import (
    RoundCallback,
    RoundRecord,
    RunResults,
    progress_line,
    write_results,
)
from privet.server.run_output import LEDGER_DIR, RESULTS_FILE
from privet.server.run_recorder import RunRecorder
from privet.server.secure_aggregation import conditional_rounding_ratio
from privet.server.strategy import PrivetFedAvg
from privet.server.strategy_parts import build_strategy
from privet.task.config import ConfigError, RunConfig
from privet.task.flower_pulls import FLOWER_VERSION as FLOWER
from privet.task.flower_pulls import prompt_object_pulls
from privet.task.wording import for_deployment, reworded

logger = logging.getLogger(__name__)


FLWR_RUN_ENGINE = "flwr-run"
"""The engine name of a run started by `flwr run` (a deployment, or Flower's own simulation)."""


class RunFailedError(RuntimeError):
    """A run that ended without training, or stopped on a failure (see results.json)."""


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
    results = RunResults(
        config=config,
        engine=engine,
        missing_values=evaluator.missing,
        evaluation=evaluator.source,
        test_examples=len(evaluator.test),
        init_from=evaluator.init_from,
        trainable_parameters=evaluator.trainable_parameters,
        total_parameters=evaluator.total_parameters,
    )
    if engine == FLWR_RUN_ENGINE:  # `flwr run --stream` shows it before the first round
        print(f"The server scores the model on {evaluator.source}.", flush=True)
    strategy = build_strategy(config, resuming=checkpoint is not None)
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
        reason = _crash_reason(error)
        results.conclude(in_words_of(engine, reason))
        try:
            write_results(output_dir, results)
        except OSError:
            logger.exception("could not record the failure in %s", output_dir / RESULTS_FILE)
        raise


def in_words_of(engine: str, text: str) -> str:
    """`text` as the user of `engine` sets things: run-config keys under `flwr run`, else flags."""
    return for_deployment(text, RunConfig.key_names()) if engine == FLWR_RUN_ENGINE else text


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
    first_round, initial_weights = 1, None
    if checkpoint is not None:
        first_round, initial_weights = checkpoint.round + 1, checkpoint.weights
    strategy.discover_clients(
        grid,
        config.clients,
        config.round_timeout,
        node_clients=config.node_client_map,
        schema_digest=evaluator.schema_digest,
        backbone_digest=evaluator.backbone_digest,
    )
    start_weights = evaluator.initial_weights() if initial_weights is None else initial_weights
    if config.link_check:
        results.link_check = check_links(
            grid,
            sorted(strategy.book.client_of_node),
            ArrayRecord(start_weights),
            config.link_check,
            config.round_timeout,
        )
        if results.engine == FLWR_RUN_ENGINE:  # `flwr run --stream` shows it
            print(results.link_check.line(), flush=True)
    recorder = RunRecorder(config, strategy, results, evaluator, on_round)
    outcome = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(start_weights),
        num_rounds=config.rounds,
        first_round=first_round,
        timeout=config.round_timeout,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=recorder,
    )
    results = recorder.finish(outcome.arrays)
    if results.failure_reason is not None:
        logger.error("the run failed: %s", results.failure_reason)
    return results


class ProgressPrinter:
    """Prints one line per finished round (what `flwr run --stream` shows while a run goes on)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def __call__(self, record: RoundRecord) -> None:
        print(progress_line(record, self.rounds), flush=True)


def prompt(grid: Grid) -> Grid:
    """A `flwr run` grid (Flower's HttpGrid) that picks replies up as they come (`PromptGrid`).

    Flower's object pulls are made prompt too (`task.flower_pulls`). Other grids (the in-process
    engine's, Flower's in-memory simulation grid) are returned as they are: they hand replies
    over without a fixed poll.
    """
    if not is_http_grid(grid):
        return grid
    if not prompt_object_pulls():
        logger.warning("this flwr is not %s: replies are pulled with Flower's back-off", FLOWER)
    return PromptGrid(grid)


def make_server_app(
    fixed_config: RunConfig | None = None,
    on_round: RoundCallback | None = None,
    engine: str = "flower-simulation",
    on_finish: Callable[[RunResults], None] | None = None,
) -> ServerApp:
    """A ServerApp; `fixed_config` (used by `privet simulate`) overrides Flower's run config.

    `on_round` is called after every round and `on_finish` with the results at the end, so an
    in-process caller can show progress and read the outcome. Without `on_round` (`flwr run`),
    each round prints one line, which `flwr run --stream` shows as it happens.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            config = fixed_config or RunConfig.from_mapping(context.run_config)
            progress = on_round if on_round is not None else ProgressPrinter(config.rounds)
            results = run_federated_training(prompt(grid), config, engine, progress)
        except Exception as error:
            # Under `flwr run` the fix is a run-config key, not a `privet simulate` flag.
            raise reworded(error, in_words_of(engine, str(error))) from error
        if on_finish is not None:
            on_finish(results)
        elif not results.finished:
            # A deployed run (`flwr run`) that failed must not end as a successful Flower run.
            raise RunFailedError(results.failure_reason or "the run did not finish")

    return app


app = make_server_app(engine=FLWR_RUN_ENGINE)


def clear_output(output_dir: Path) -> Path | None:
    """Make room for a new run (the CLI's --overwrite): nothing is deleted, ledgers included.

    The earlier run's files move to `OUTPUT/replaced/<time>/` (`server.checkpoint.set_aside_run`);
    returns that folder, or None when there was nothing to move.
    """
    return set_aside_run(output_dir)
