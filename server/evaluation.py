"""Server-side evaluation of the global model on the data set's held-out test split."""

from __future__ import annotations

import numpy as np
import torch

from privet.task.config import RunConfig
from privet.task.datasets import ArrayDataset, MissingValues, TrainTest, load_dataset
from privet.task.evaluation import evaluate_model
from privet.task.models import build_model, set_weights


class ServerEvaluator:
    """Evaluates global weights on the test split; the server never sees client training data."""

    def __init__(self, config: RunConfig, data: TrainTest | None = None) -> None:
        data = data or load_dataset(
            config.dataset,
            data_dir=config.data_dir,
            data_file=config.data_file,
            label_column=config.label_column,
            partition_column=config.partition_column,
            seed=config.seed,
            missing=config.missing,
        )
        self.test: ArrayDataset = data.test
        # Tabular data: the missing values of the file and what the run's policy did with them.
        self.missing: MissingValues | None = data.missing
        self.feature_shape: tuple[int, ...] = data.train.feature_shape
        self.num_classes: int = data.train.num_classes
        self.model = build_model(config.model, self.feature_shape, self.num_classes, config.seed)
        self.device = torch.device("cpu")

    def initial_weights(self) -> list[np.ndarray]:
        """The seeded initial global model, identical to what every client would build."""
        return [value.detach().numpy().copy() for value in self.model.state_dict().values()]

    def __call__(self, weights: list[np.ndarray]) -> tuple[float, float]:
        """(loss, accuracy) of `weights` on the test split."""
        set_weights(self.model, weights)
        return evaluate_model(self.model, self.test, self.device)
