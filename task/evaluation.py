"""Evaluating a model: by the server on the test split, by clients on local validation data."""

from __future__ import annotations

import torch
from torch import nn

from privet.task.datasets import ArrayDataset

EVAL_BATCH = 1024


def evaluate_model(
    model: nn.Module, data: ArrayDataset, device: torch.device
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of `model` on `data`; (0, 0) for no data."""
    if len(data) == 0:
        return 0.0, 0.0
    model = model.to(device)
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    features = torch.tensor(data.features, dtype=torch.float32)
    labels = torch.tensor(data.labels, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(data), EVAL_BATCH):
            x = features[start : start + EVAL_BATCH].to(device)
            y = labels[start : start + EVAL_BATCH].to(device)
            logits = model(x)
            total_loss += float(loss_fn(logits, y))
            correct += int((logits.argmax(dim=1) == y).sum())
    return total_loss / len(data), correct / len(data)
