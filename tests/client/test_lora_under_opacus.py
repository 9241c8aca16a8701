"""LoRA adapters (PEFT) under Opacus update exactly what they should (issue 15; opacus issue 820).

Opacus users found DP-LoRA silently corrupted with some PEFT versions: per-example gradient hooks
missing on the adapters, training that looked normal and models that were not. Privet pins PEFT
(pyproject) to a version for which this test holds, in both of Opacus' per-example modes:

- with noise 0 and a clip norm no gradient reaches, one DP-SGD step moves every adapter and the
  task head by exactly what non-private SGD moves them, and leaves the frozen backbone untouched;
- with a clip norm every example's gradient exceeds, the step is the mean of the per-example
  gradients clipped one by one by hand, so the per-example gradients themselves are right.

The model is a tiny random BERT built from a config (no download); the adapters' B matrices are
made non-zero so that their A matrices get gradients too.
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
import transformers
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated"),
]

BATCH = 8
NEVER_CLIPS = 1e9  # Opacus needs a finite norm (inf × noise 0 is NaN); no gradient comes near


def tiny_lora_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    model = peft.get_peft_model(transformers.BertForSequenceClassification(config), lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 100, (BATCH, 12), generator=generator)
    return tokens, torch.randint(0, 2, (BATCH,), generator=generator)


def dp_step(model: torch.nn.Module, clip: float, mode: str, lr: float) -> torch.nn.Module:
    """One DP-SGD step at noise 0 over the whole batch; returns the trained copy."""
    private = copy.deepcopy(model)
    optimizer = torch.optim.SGD([p for p in private.parameters() if p.requires_grad], lr=lr)
    loader = DataLoader(TensorDataset(*batch()), batch_size=BATCH)
    engine = PrivacyEngine()
    criterion = torch.nn.CrossEntropyLoss()
    settings = dict(
        module=private,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        poisson_sampling=False,
        grad_sample_mode=mode,
    )
    if mode == "ghost":
        wrapped, optimizer, criterion, loader = engine.make_private(criterion=criterion, **settings)
    else:
        wrapped, optimizer, loader = engine.make_private(**settings)
    for tokens, labels in loader:
        optimizer.zero_grad()
        criterion(wrapped(input_ids=tokens).logits, labels).backward()
        optimizer.step()
    return wrapped._module


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_lora_under_opacus_without_noise_or_clipping_is_plain_sgd(mode):
    model = tiny_lora_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = list(trainable(model))
    assert sum("lora_" in n for n in names) == 8 and sum("classifier" in n for n in names) == 2
    plain = copy.deepcopy(model)
    optimizer = torch.optim.SGD([p for p in plain.parameters() if p.requires_grad], lr=0.5)
    tokens, labels = batch()
    plain(input_ids=tokens, labels=labels).loss.backward()
    optimizer.step()
    private = dp_step(model, NEVER_CLIPS, mode, lr=0.5)
    expected, got = trainable(plain), trainable(private)
    for name in names:
        moved = expected[name] - before[name]
        assert moved.abs().max() > 0, name  # every adapter and the head really trains
        torch.testing.assert_close(got[name] - before[name], moved, rtol=1e-5, atol=1e-8)
    for name, parameter in private.named_parameters():
        if not parameter.requires_grad:
            assert torch.equal(parameter, before[name]), name  # the backbone stays frozen


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_lora_under_opacus_clips_each_examples_gradient(mode):
    model = tiny_lora_bert()
    before = trainable(model)
    tokens, labels = batch()
    clip = 0.05
    by_hand = {name: torch.zeros_like(value) for name, value in before.items()}
    for i in range(BATCH):
        one = copy.deepcopy(model)
        one(input_ids=tokens[i : i + 1], labels=labels[i : i + 1]).loss.backward()
        grads = {n: p.grad for n, p in one.named_parameters() if p.requires_grad}
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        assert norm > clip  # every example is clipped: the per-example norms matter
        for name, grad in grads.items():
            by_hand[name] += grad * (clip / (norm + 1e-6)) / BATCH
    after = trainable(dp_step(model, clip, mode, lr=1.0))
    for name in before:
        torch.testing.assert_close(before[name] - after[name], by_hand[name], rtol=1e-4, atol=1e-7)
