"""Server-side evaluation of the global model on the run's test set, and what that set is.

The test set is exactly what the run names: the whole `test-file` when one is given, else the
data set's held-out split. `source` says which, with its size, so results.json and the console
never report an accuracy without saying what it was measured on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from privet.task.config import RunConfig
from privet.task.datasets import ArrayDataset, MissingValues, TrainTest
from privet.task.models import (
    STATE_FILE_IN_FOLDER,
    ModelError,
    frozen_digest,
    get_weights,
    load_initial_state,
    load_state_file,
    set_weights,
    weight_keys,
)
from privet.task.tabular import schema_digest
from privet.task.task import Task, build_task_model, task_named, trainable_names


class ServerEvaluator:
    """Evaluates global weights on the test split; the server never sees client training data.

    The run's task loads the data, builds the model and computes the metrics; the weights it
    takes and gives are the tensors that travel (`travelling`, in state-dict order).
    """

    def __init__(self, config: RunConfig, data: TrainTest | None = None) -> None:
        self.task: Task = task_named(config.task)
        data = data or self.task.load_data(config.dataset, config.dataset_options())
        self.test: ArrayDataset = data.test
        self.source: str = data.test_source or f"the test split of {config.dataset}"
        """What the model is scored on, with its size (results.json's `evaluation`)."""
        self.schema_digest: str | None = None if data.schema is None else schema_digest(data.schema)
        """The run's tabular schema, as nodes must have it (None for image data)."""
        # Tabular data: the missing values of the file and what the run's policy did with them.
        self.missing: MissingValues | None = data.missing
        self.feature_shape: tuple[int, ...] = data.train.feature_shape
        self.num_classes: int = data.train.num_classes
        self.model = build_task_model(
            self.task,
            config.model,
            self.feature_shape,
            self.num_classes,
            config.seed,
            lora=config.lora,
        )
        self.backbone_digest: str | None = frozen_digest(self.model)
        """SHA-256 of the tensors that never travel (a frozen backbone), as nodes must have them."""
        self.init_from: dict[str, str] | None = None
        """Where the first global model came from (run setting init-from): path and SHA-256."""
        if config.init_from:
            path = Path(config.init_from)
            state = load_state_file(path)
            load_initial_state(self.model, state, str(path))
            if frozen_digest(self.model) != self.backbone_digest:
                raise ModelError(
                    f"init-from: {path} changes the model's frozen backbone, which never "
                    "travels, so the clients would train another model; put those weights in "
                    "the model folder instead (save_pretrained) and start from it"
                )
            file = path / STATE_FILE_IN_FOLDER if path.is_dir() else path
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            self.init_from = {"file": str(file), "sha256": digest}
        self.travelling: tuple[str, ...] = weight_keys(self.model)
        """The state-dict keys of the weights this evaluator takes and gives, in order."""
        trains = set(trainable_names(self.task, self.model))
        self.total_parameters = sum(p.numel() for p in self.model.parameters())
        self.trainable_parameters = sum(
            p.numel() for name, p in self.model.named_parameters() if name in trains
        )
        self.device = torch.device("cpu")
        self.extra: dict[str, float] = {}
        """The task's other metrics (`Metrics.extra`) of the weights last scored."""

    def initial_weights(self) -> list[np.ndarray]:
        """The first global model's travelling tensors.

        The seeded model every client builds, or the weights of init-from (sent to the clients
        with round 1's TRAIN messages).
        """
        return get_weights(self.model)

    def __call__(self, weights: list[np.ndarray]) -> tuple[float, float]:
        """(loss, accuracy) of `weights` (the travelling tensors) on the test split."""
        set_weights(self.model, weights)
        metrics = self.task.evaluate(self.model, self.test, self.device)
        self.extra = dict(metrics.extra)
        return metrics.loss, metrics.accuracy
