"""Evaluating a model: by the server on the test split, by clients on local validation data.

What the metrics are is the run's task's business (:meth:`privet.task.task.Task.evaluate`);
`evaluate_model` is the classification task's loss and accuracy, for callers that have no task.
"""

from __future__ import annotations

import torch
from torch import nn

from privet.task.datasets import ArrayDataset
from privet.task.task import DEFAULT_TASK, EVAL_BATCH, Metrics, Task, task_named

__all__ = ["EVAL_BATCH", "evaluate", "evaluate_model"]


def evaluate(
    model: nn.Module, data: ArrayDataset, device: torch.device, task: Task | None = None
) -> Metrics:
    """`task`'s metrics (default: classification's) of `model` on `data`; zeros for no data."""
    return (task if task is not None else task_named(DEFAULT_TASK)).evaluate(model, data, device)


def evaluate_model(
    model: nn.Module, data: ArrayDataset, device: torch.device
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of `model` on `data`; (0, 0) for no data."""
    metrics = evaluate(model, data, device)
    return metrics.loss, metrics.accuracy
