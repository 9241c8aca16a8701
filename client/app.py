"""The Flower ClientApp: a thin adapter from Flower messages to `client.training_round`.

Per-node state (`Context.state`) keeps the client's DP-SGD history across rounds, so the ε it
reports is cumulative over every round it took part in.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node_data import load_node_data
from client.training_round import (
    run_local_evaluation,
    run_training_round,
    torch_threads_for_client,
)
from privacy import PoissonGaussianSteps, compose
from task.config import RunConfig

STATE_KEY = "privet-dp-history"


def read_history(context: Context) -> list[PoissonGaussianSteps]:
    """The node's DP-SGD events so far, stored flat as [σ, q, steps, σ, q, steps, ...]."""
    if STATE_KEY not in context.state.config_records:
        return []
    flat = list(context.state.config_records[STATE_KEY]["events"])  # type: ignore[arg-type]
    return [PoissonGaussianSteps.from_list(flat[i : i + 3]) for i in range(0, len(flat), 3)]


def write_history(context: Context, history: list[PoissonGaussianSteps]) -> None:
    """Store the node's full DP-SGD history in its per-node state."""
    flat = [value for event in compose(history) for value in event.to_list()]
    context.state.config_records[STATE_KEY] = ConfigRecord({"events": flat})


def _config_of(context: Context, fixed: RunConfig | None) -> RunConfig:
    return fixed if fixed is not None else RunConfig.from_mapping(context.run_config)


def make_client_app(fixed_config: RunConfig | None = None) -> ClientApp:
    """A ClientApp; `fixed_config` (used by `privet simulate`) overrides Flower's run config."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch_threads_for_client()
        config = _config_of(context, fixed_config)
        data = load_node_data(config, context.node_config)
        global_weights = msg.content["arrays"].to_numpy_ndarrays()
        server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
        report = run_training_round(
            config, data, global_weights, read_history(context), server_round
        )
        # The history is stored before the reply leaves the ClientApp.
        write_history(context, report.history)
        metrics = MetricRecord(
            {
                "num-examples": report.num_examples,
                "client-id": report.client_id,
                "epsilon": report.epsilon,
                "delta": report.delta,
                "noise-multiplier": report.noise_multiplier,
                "sample-rate": report.sample_rate,
                "steps": report.steps,
                "rounds-participated": report.rounds_participated,
            }
        )
        content = RecordDict({"arrays": ArrayRecord(report.weights), "metrics": metrics})
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
