"""What the server writes after every round: the round's record, the model, the checkpoint.

`RunRecorder` is the round loop's `evaluate_fn`: it scores the global model on the server's test
split, appends the round to `RunResults` from the strategy's round book, and writes results.json,
the model and the checkpoint (in that order, each atomically) so that a crash after any round can
be resumed. It reads the strategy through its public state; nothing is shared through closures.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, MetricRecord

from privet.server.checkpoint import ServerCheckpoint, save_checkpoint
from privet.server.evaluation import ServerEvaluator
from privet.server.results import RoundCallback, RoundRecord, RunResults, write_model, write_results
from privet.server.strategy import PrivetFedAvg
from privet.task.config import RunConfig


class RunRecorder:
    """Scores each round's global model and records the round in the run's folder."""

    def __init__(
        self,
        config: RunConfig,
        strategy: PrivetFedAvg,
        results: RunResults,
        evaluator: ServerEvaluator,
        on_round: RoundCallback | None = None,
    ) -> None:
        self.config = config
        self.output_dir = Path(config.output)
        self.strategy = strategy
        self.results = results
        self.evaluator = evaluator
        self.on_round = on_round

    def collect(self) -> None:
        """Copy the strategy's run-wide state (clients' ε, declines, exclusions) to the results."""
        strategy, results = self.strategy, self.results
        results.clients = strategy.privacy.clients()
        results.declines = dict(strategy.declined_at)
        results.excluded = dict(strategy.excluded)
        results.epsilon_unknown = strategy.privacy.unknown()
        results.left_out = strategy.left_out()
        results.data_notes = dict(strategy.data_notes)
        results.client_level = strategy.release.summary()
        results.run_token = strategy.privacy.run_token

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate the model after `server_round` (0: the initial model) and record the round."""
        loss, accuracy = self.evaluator(arrays.to_numpy_ndarrays())
        metrics = MetricRecord({"accuracy": accuracy, "loss": loss})
        results = self.results
        if server_round == 0:
            results.initial_accuracy, results.initial_loss = accuracy, loss
            self.collect()  # who was left out at the start is known now
            return metrics
        strategy = self.strategy
        outcome = strategy.outcomes[server_round]
        record = RoundRecord(
            round=server_round,
            accuracy=accuracy,
            loss=loss,
            epsilon_max=strategy.privacy.epsilon_max(),
            epsilon_by_client=strategy.privacy.epsilon_by_client(server_round),
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
            failures=outcome.failures,
            cost=outcome.cost(),
            metrics=dict(self.evaluator.extra) or None,
        )
        results.rounds.append(record)
        self.collect()
        weights = arrays.to_numpy_ndarrays()
        write_model(self.output_dir, self.evaluator.model, weights)
        write_results(self.output_dir, results)
        save_checkpoint(
            self.output_dir,
            ServerCheckpoint(
                round=server_round,
                config=self.config.to_json_dict(),
                weights=weights,
                strategy=strategy.checkpoint_state(),
                results=results.checkpoint_state(),
            ),
        )
        if self.on_round is not None:
            self.on_round(record)
        return metrics

    def finish(self, arrays: ArrayRecord) -> RunResults:
        """The run ended: conclude (failed or finished), write the final results and model."""
        self.collect()
        self.results.stop_reason = self.strategy.stop_reason
        # Failure is never success: a run that stopped on a failure, or trained nothing, is
        # finished: false with a one-line failure_reason (and `privet simulate` exits non-zero).
        self.results.conclude(self.strategy.failure_reason)
        write_model(self.output_dir, self.evaluator.model, arrays.to_numpy_ndarrays())
        write_results(self.output_dir, self.results)
        return self.results
