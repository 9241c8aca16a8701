"""A small pretrained-style model folder made locally: a tokenizer and a BERT classifier.

``privet model-folder`` writes one, so that text fine-tuning can be tried (and tested, and
benchmarked) with no download: a WordPiece tokenizer trained with Hugging Face ``tokenizers`` on
a text file's texts, and a ``BertForSequenceClassification`` of the size asked (random, or
trained without DP on that file's labelled texts), both saved with ``save_pretrained`` exactly
as a downloaded model folder is. Its
``id2label`` holds the file's labels, so every party numbers the classes the same way
(`privet.task.text.text_classes`).

The tokenizer's vocabulary is a release of facts about the texts it was trained on: make the
folder from public text (the server's own, say), never from a partner's private data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from privet.task.containers import DataError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerFast

ModelT = TypeVar("ModelT")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class BertSize:
    """The shape of the BERT encoder a model folder holds."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 2
    intermediate_size: int = 256
    max_positions: int = 512
    vocab_size: int = 8000

    def check(self) -> None:
        """One-line DataErrors for sizes that cannot make a BERT."""
        for name in ("hidden_size", "layers", "heads", "intermediate_size", "max_positions"):
            if int(getattr(self, name)) < 1:
                raise DataError(f"{name.replace('_', '-')} must be at least 1")
        if self.hidden_size % self.heads:
            raise DataError(
                f"hidden-size {self.hidden_size} must be a multiple of heads {self.heads}"
            )
        if self.vocab_size < len(SPECIAL_TOKENS) + 2:
            raise DataError(f"vocab-size must be at least {len(SPECIAL_TOKENS) + 2}")


def make_text_model_folder(
    folder: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    size: BertSize = BertSize(),
    seed: int = 0,
    train_epochs: int = 0,
    max_length: int = 64,
) -> Path:
    """Write a tokenizer trained on ``texts`` and a BERT for ``labels`` into ``folder``.

    The BERT is random, or, with ``train_epochs``, trained that many epochs on the labelled
    texts without DP (`train_without_dp`, texts cut to ``max_length`` tokens): the texts are
    public by assumption, so this is the pretrained starting point a federation fine-tunes.
    The folder is written next to its final place and renamed into it, so a failure leaves
    nothing half-written; an existing folder is refused.
    """
    if train_epochs < 0:
        raise DataError(f"train-epochs must be 0 or more, got {train_epochs}")
    size.check()
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"the labels hold {len(classes)} distinct value(s); a classifier needs 2")
    import transformers

    def write(staging: Path) -> None:
        fast = _word_piece_tokenizer(texts, size)
        fast.save_pretrained(str(staging))
        config = transformers.BertConfig(
            vocab_size=len(fast),
            hidden_size=size.hidden_size,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            intermediate_size=size.intermediate_size,
            max_position_embeddings=size.max_positions,
            num_labels=len(classes),
            id2label=dict(enumerate(classes)),
            label2id={name: index for index, name in enumerate(classes)},
            pad_token_id=fast.pad_token_id,
        )
        model = _seeded(lambda: transformers.BertForSequenceClassification(config), seed)
        if train_epochs:
            from privet.task.text import encode_texts

            features = encode_texts(fast, texts, max_length)
            numbered = [classes.index(label) for label in labels]
            train_without_dp(model, features, numbered, train_epochs, seed=seed)
        model.save_pretrained(str(staging))

    return _written(folder, write)


def make_causal_lm_folder(
    folder: Path, texts: Sequence[str], size: BertSize = BertSize(), seed: int = 0
) -> Path:
    """Write a tokenizer trained on ``texts`` and a random small Llama language model.

    The same tokenizer as `make_text_model_folder` (its ``[SEP]`` ends a text); the model has
    ``size``'s width, layers and heads. For ``--task causal-lm`` runs on this machine.
    """
    size.check()
    import transformers

    def write(staging: Path) -> None:
        fast = _word_piece_tokenizer(texts, size)
        fast.save_pretrained(str(staging))
        config = transformers.LlamaConfig(
            vocab_size=len(fast),
            hidden_size=size.hidden_size,
            intermediate_size=size.intermediate_size,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.heads,
            max_position_embeddings=size.max_positions,
            pad_token_id=fast.pad_token_id,
            bos_token_id=fast.cls_token_id,
            eos_token_id=fast.sep_token_id,
            tie_word_embeddings=False,
        )
        _seeded(lambda: transformers.LlamaForCausalLM(config), seed).save_pretrained(str(staging))

    return _written(folder, write)


def _written(folder: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` into a staging folder beside ``folder``, then rename it into place."""
    if folder.exists():
        raise DataError(f"{folder} already exists; choose a new folder for the model")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(staging)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _seeded(build: Callable[[], ModelT], seed: int) -> ModelT:
    """``build()`` under torch's generator seeded with ``seed``, which is then put back."""
    import torch

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build()
    finally:
        torch.random.set_rng_state(state)


def _word_piece_tokenizer(texts: Sequence[str], size: BertSize) -> PreTrainedTokenizerFast:
    """A lowercasing WordPiece tokenizer trained on ``texts``: [CLS] text [SEP], [PAD] pads."""
    import transformers
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=size.vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=size.max_positions,
    )


def train_without_dp(
    model: nn.Module,
    features: np.ndarray,
    labels: Sequence[int],
    epochs: int,
    *,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> None:
    """Train a Hugging Face classifier's trainable parameters on token features, without DP.

    ``features`` are `privet.task.text.encode_texts`' (ids and masks); AdamW, shuffled batches
    drawn under ``seed``. For public data only: nothing here is private.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.from_numpy(np.asarray(features)).long()
    targets = torch.as_tensor(list(labels), dtype=torch.long)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=generator)
        for start in range(0, len(targets), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            out = model(input_ids=tokens[index, 0], attention_mask=tokens[index, 1])
            torch.nn.functional.cross_entropy(out.logits, targets[index]).backward()
            optimizer.step()
