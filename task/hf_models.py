"""Pretrained Hugging Face classifiers from a local folder, as models Privet can train (issue 15).

`load_sequence_classifier` opens a folder written by ``save_pretrained`` with
``local_files_only=True``, so it never downloads. It returns `TokenClassifier`, an ``nn.Module``
that takes the features `privet.task.text.encode_texts` makes and returns class logits. The
features are token ids and attention masks carried as exact float32, shape (n, 2, length).
Privet's trainer, evaluation and wire format then treat it like any other model.

A folder without a model configuration or weights is a one-line `ModelError` that names what is
missing. So is a model whose number of labels differs from the run's classes.

``--model hf:FOLDER`` (`privet.task.models`) builds it for text runs.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from privet.task.models import ModelError, check_model_folder


def load_sequence_classifier(
    folder: Path, num_classes: int, max_length: int | None = None
) -> nn.Module:
    """The folder's sequence classifier, wrapped to take token features (`TokenClassifier`).

    ``max_length``, when given, is the texts' token length: a model with fewer positions is
    refused in one line (it would fail inside its embeddings on the first batch).
    """
    check_model_folder(folder)
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per client message would drown the run's own
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), local_files_only=True
        )
    except (OSError, ValueError) as error:
        first = " ".join(str(error).split())[:200]
        raise ModelError(f"model folder {folder}: the model does not load ({first})") from None
    labels = int(model.config.num_labels)
    if labels != num_classes:
        raise ModelError(
            f"model folder {folder} classifies into {labels} labels, the run's data has "
            f"{num_classes} classes; save the model with num_labels={num_classes}"
        )
    positions = getattr(model.config, "max_position_embeddings", None)
    if max_length is not None and isinstance(positions, int) and positions < max_length:
        raise ModelError(
            f"model folder {folder} takes texts of at most {positions} tokens, and the run "
            f"tokenizes to --max-length {max_length}; lower --max-length"
        )
    # from_pretrained leaves the model in eval mode; Privet's models start in training mode
    # like any freshly built module (Opacus records per-example inputs only in training mode).
    return TokenClassifier(model).train()


class TokenModel(nn.Module):
    """A Hugging Face model that takes token features (n, 2 or more, length) and gives logits.

    ``features[:, 0]`` are token ids and ``features[:, 1]`` attention masks (further channels,
    such as a response mask, are for the loss and ignored here). Position and token-type ids are
    passed explicitly, one row per example (when the model takes them): a model that builds
    them itself broadcasts one row over the batch, and Opacus would then see its position
    embeddings' input without the batch dimension that per-example gradients need.
    ``peft_task_type`` is the PEFT task LoRA adapters are added for (`privet.task.lora`).
    """

    peft_task_type = "SEQ_CLS"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        accepted = inspect.signature(model.forward).parameters
        self._positions = "position_ids" in accepted
        self._token_types = "token_type_ids" in accepted

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The model's logits for the texts with ids ``features[:, 0]`` and masks ``[:, 1]``."""
        # Contiguous: Opacus' per-example norms of an embedding view the ids flat.
        ids = features[:, 0].long().contiguous()
        mask = features[:, 1].long().contiguous()
        extra: dict[str, torch.Tensor] = {}
        if self._positions:
            length = ids.shape[1]
            positions = torch.arange(length, device=ids.device).unsqueeze(0)
            extra["position_ids"] = positions.repeat(ids.shape[0], 1)
        if self._token_types:
            extra["token_type_ids"] = torch.zeros_like(ids)
        return self.model(input_ids=ids, attention_mask=mask, **extra).logits


class TokenClassifier(TokenModel):
    """A sequence classifier: logits (n, classes)."""

    peft_task_type = "SEQ_CLS"


class TokenLanguageModel(TokenModel):
    """A causal language model: logits (n, length, vocabulary), one per next token."""

    peft_task_type = "CAUSAL_LM"


def load_causal_lm(folder: Path, max_length: int | None = None) -> nn.Module:
    """The folder's causal language model, wrapped to take token features (`TokenLanguageModel`)."""
    check_model_folder(folder)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        first = " ".join(str(error).split())[:200]
        raise ModelError(
            f"model folder {folder}: no causal language model loads from it ({first})"
        ) from None
    positions = getattr(model.config, "max_position_embeddings", None)
    if max_length is not None and isinstance(positions, int) and positions < max_length:
        raise ModelError(
            f"model folder {folder} takes texts of at most {positions} tokens, and the run "
            f"tokenizes to --max-length {max_length}; lower --max-length"
        )
    return TokenLanguageModel(model).train()
