"""The ``causal-lm`` task: fine-tune a causal language model on prompts and responses.

``--task causal-lm --dataset prompts --model hf:FOLDER`` trains a Hugging Face causal language
model (`privet.task.hf_models.load_causal_lm`) to continue each prompt with its response. The
loss of one example is the mean cross-entropy of its response tokens (the prompt is context,
never a target), so one prompt–response pair is one DP example whose gradient is clipped as a
whole. The metrics are that loss, the fraction of response tokens predicted exactly (reported
as ``accuracy``) and the perplexity, exp(mean negative log-likelihood per response token).

Registered when `privet.task.task` is imported, like the classification task.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from privet.task.models import model_folder
from privet.task.task import EVAL_BATCH, Metrics, Task, TaskError, register_task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from privet.task.datasets import ArrayDataset

CAUSAL_LM_TASK = "causal-lm"
IGNORED = -100
"""The target of a token that is not learned (prompt and padding): cross-entropy skips it."""


def response_targets(features: torch.Tensor) -> torch.Tensor:
    """Token ids where the response mask (channel 2) is 1, `IGNORED` elsewhere; (n, length)."""
    import torch

    ids = features[:, 0].long()
    return torch.where(features[:, 2] > 0, ids, torch.full_like(ids, IGNORED))


def _response_loss_module() -> nn.Module:
    from torch import nn

    class ResponseLoss(nn.Module):
        """Per-example mean cross-entropy of each next response token (reduction: mean/sum/none).

        Opacus' ghost clipping sets ``reduction`` to "none" to get one loss per example.
        """

        def __init__(self) -> None:
            super().__init__()
            self.reduction = "mean"

        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            per_example = response_nll(logits, targets, mean=True)
            if self.reduction == "none":
                return per_example
            return per_example.sum() if self.reduction == "sum" else per_example.mean()

    return ResponseLoss()


def response_nll(logits: torch.Tensor, targets: torch.Tensor, mean: bool) -> torch.Tensor:
    """Each example's summed (or, with ``mean``, averaged) NLL of its next response tokens."""
    import torch

    shifted = targets[:, 1:]
    token = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), shifted, ignore_index=IGNORED, reduction="none"
    )
    total = token.sum(dim=1)
    if not mean:
        return total
    return total / (shifted != IGNORED).sum(dim=1).clamp(min=1)


@register_task(CAUSAL_LM_TASK)
class CausalLanguageModelTask(Task):
    """Prompt → response fine-tuning of a causal language model (loss on the response only)."""

    def build_model(
        self, name: str, feature_shape: tuple[int, ...], num_classes: int, seed: int
    ) -> nn.Module:
        """The causal language model of ``hf:FOLDER`` (loaded, so the same on every party)."""
        from pathlib import Path

        from privet.task.hf_models import load_causal_lm

        folder = model_folder(name)
        if folder is None:
            raise TaskError(
                f"task {CAUSAL_LM_TASK!r} fine-tunes a pretrained language model; give --model "
                f"hf:FOLDER, not {name}"
            )
        del num_classes, seed  # a language model predicts tokens; its weights are the folder's
        return load_causal_lm(Path(folder).expanduser(), max_length=feature_shape[-1])

    def criterion(self) -> nn.Module:
        """Mean cross-entropy of the response tokens, per example, then over the batch."""
        return _response_loss_module()

    def tensors(self, data: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (n, 3, length) as given, and the response tokens as targets (n, length)."""
        import torch

        if data.features.ndim != 3 or data.features.shape[1] != 3:
            raise TaskError(
                f"task {CAUSAL_LM_TASK!r} needs prompt-response features (n, 3, length), got "
                f"shape {data.features.shape}; use --dataset prompts"
            )
        features = torch.tensor(data.features, dtype=torch.float32)
        return features, response_targets(features)

    def evaluate(self, model: nn.Module, data: ArrayDataset, device: torch.device) -> Metrics:
        """Mean NLL per response token, next-token accuracy on them, and perplexity."""
        import torch

        if len(data) == 0:
            return Metrics(0.0, 0.0, {"perplexity": 1.0})
        model = model.to(device)
        model.eval()
        features, targets = self.tensors(data)
        nll, correct, tokens = 0.0, 0, 0
        with torch.no_grad():
            for start in range(0, len(data), EVAL_BATCH):
                x = features[start : start + EVAL_BATCH].to(device)
                y = targets[start : start + EVAL_BATCH].to(device)
                logits = model(x)
                nll += float(response_nll(logits, y, mean=False).sum())
                shifted = y[:, 1:]
                counted = shifted != IGNORED
                tokens += int(counted.sum())
                correct += int(((logits[:, :-1].argmax(dim=2) == shifted) & counted).sum())
        loss = nll / max(tokens, 1)
        return Metrics(loss, correct / max(tokens, 1), {"perplexity": math.exp(min(loss, 700.0))})
