"""The Flower ServerApp: a thin adapter that runs Privet's FedAvg on Flower's Grid.

`privet simulate` builds its own instance with `make_server_app(config, on_round)`; `flwr run .`
uses the module-level `app`, configured from Flower's run config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from server.evaluation import ServerEvaluator
from server.federation_privacy import FederationPrivacy
from server.results import RoundCallback, RoundRecord, RunResults, write_model, write_results
from server.strategy import PrivetFedAvg
from task.config import RunConfig

logger = logging.getLogger(__name__)

ROUND_TIMEOUT_S = 3600.0


def run_federated_training(
    grid: Grid,
    config: RunConfig,
    engine: str,
    on_round: RoundCallback | None = None,
) -> RunResults:
    """Run all rounds of private FedAvg and write results.json and the model to `config.output`."""
    evaluator = ServerEvaluator(config)
    privacy = FederationPrivacy()
    results = RunResults(config=config, engine=engine)
    output_dir = Path(config.output)
    strategy = PrivetFedAvg(
        privacy,
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=config.clients,
        min_evaluate_nodes=config.clients,
        min_available_nodes=config.clients,
    )

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = evaluator(arrays.to_numpy_ndarrays())
        if server_round == 0:
            results.initial_accuracy, results.initial_loss = accuracy, loss
        else:
            record = RoundRecord(
                round=server_round,
                accuracy=accuracy,
                loss=loss,
                epsilon_max=privacy.epsilon_max(),
                epsilon_by_client=privacy.epsilon_by_client(server_round),
                clients_trained=privacy.clients_trained(server_round),
                local_accuracy=strategy.last_local_accuracy,
            )
            results.rounds.append(record)
            results.clients = privacy.clients()
            write_model(output_dir, evaluator.model, arrays.to_numpy_ndarrays())
            write_results(output_dir, results)
            if on_round is not None:
                on_round(record)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    outcome = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(evaluator.initial_weights()),
        num_rounds=config.rounds,
        timeout=ROUND_TIMEOUT_S,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=evaluate_global,
    )
    results.clients = privacy.clients()
    results.finished = len(results.rounds) == config.rounds
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

    return app


app = make_server_app(engine="flwr-run")
