"""A pretrained Hugging Face classifier from a local folder, trained by Privet's own DP-SGD
(issue 15): built from a config here and saved with save_pretrained, never downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from privet.client.local_plan import plan_local_training
from privet.client.trainer import train_locally
from privet.privacy import epsilon_for
from privet.task.hf_models import load_sequence_classifier
from privet.task.models import ModelError
from privet.task.text import label_index, load_tokenizer, read_text_file, text_dataset
from tests.reference_accounting import opacus_epsilon
from tests.task.test_text import SMS, save_tokenizer, sms_lines

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated"),
]
DELTA = 1e-5


def save_tiny_bert(folder: Path, vocab_size: int, num_labels: int = 2) -> Path:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,  # the same function in train mode (Opacus) and by hand
        attention_probs_dropout_prob=0.0,
    )
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder))
    return folder


def sms_folder(tmp_path: Path, count: int) -> tuple[Path, Path]:
    """A model folder (tokenizer and tiny BERT) and a CSV of the first ``count`` SMS messages."""
    rows = sms_lines(count)
    folder = save_tokenizer(tmp_path / "model", [text for _, text in rows])
    save_tiny_bert(folder, len(load_tokenizer(folder)))
    data = tmp_path / "sms.jsonl"
    import json

    data.write_text("".join(json.dumps({"text": b, "label": a}) + "\n" for a, b in rows))
    return folder, data


def test_the_local_model_gives_the_hf_models_logits_and_trains_with_dp(tmp_path):
    assert SMS.is_file()
    folder, path = sms_folder(tmp_path, 120)
    tokenizer = load_tokenizer(folder)
    table = read_text_file(path, "text", "label")
    data = text_dataset(table, tokenizer, 24, label_index(table.labels))
    model = load_sequence_classifier(folder, 2)
    direct = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True
    )
    model.eval()
    direct.eval()
    features = torch.from_numpy(data.features[:8])
    encoded = tokenizer(list(table.texts[:8]), padding="max_length", truncation=True, max_length=24)
    with torch.no_grad():
        expected = direct(
            input_ids=torch.tensor(encoded["input_ids"]),
            attention_mask=torch.tensor(encoded["attention_mask"]),
        ).logits
        torch.testing.assert_close(model(features), expected)
    # Privet's DP-SGD trains it: every parameter moves, and ε is Opacus' for the steps that ran.
    plan = plan_local_training(
        num_examples=len(data),
        batch_size=16,
        local_epochs=1,
        rounds=1,
        delta=DELTA,
        noise_multiplier=1.0,
        target_epsilon=None,
    )
    before = [p.detach().clone() for p in model.parameters()]
    result = train_locally(
        model,
        data,
        plan,
        batch_size=16,
        max_grad_norm=1.0,
        learning_rate=0.1,
        local_epochs=1,
        seed=3,
        device=torch.device("cpu"),
    )
    assert result.steps == plan.steps_per_round > 0
    assert len(result.weights) == len(model.state_dict())
    moved = [not np.allclose(w, b.numpy()) for w, b in zip(result.weights, before, strict=False)]
    assert any(moved)
    assert epsilon_for(result.events, DELTA, "rdp") == pytest.approx(
        opacus_epsilon(plan.sample_rate, 1.0, result.steps, DELTA), rel=1e-9
    )


def test_a_folder_without_what_a_model_needs_is_a_one_line_error(tmp_path):
    def error_of(folder: Path, classes: int = 2) -> str:
        with pytest.raises(ModelError) as info:
            load_sequence_classifier(folder, classes)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "does not exist" in error_of(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in error_of(tmp_path / "empty")
    folder = save_tiny_bert(tmp_path / "model", 50)
    (folder / "model.safetensors").unlink()
    assert "has no weights" in error_of(folder)
    three = save_tiny_bert(tmp_path / "three", 50, num_labels=3)
    assert "classifies into 3 labels, the run's data has 2 classes" in error_of(three)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_each_texts_gradient_is_clipped_on_its_own_in_the_whole_model(tmp_path, mode):
    """Full fine-tuning (embeddings included): one DP-SGD step at noise 0 equals the mean of the
    per-text gradients clipped one by one by hand, so one text is one example."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    folder, path = sms_folder(tmp_path, 8)
    table = read_text_file(path, "text", "label")
    data = text_dataset(table, load_tokenizer(folder), 16, label_index(table.labels))
    features, labels = torch.from_numpy(data.features), torch.from_numpy(data.labels)
    model = load_sequence_classifier(folder, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    criterion = torch.nn.CrossEntropyLoss()
    clip = 0.01
    by_hand = {n: torch.zeros_like(p) for n, p in before.items()}
    for i in range(len(labels)):
        one = load_sequence_classifier(folder, 2)
        criterion(one(features[i : i + 1]), labels[i : i + 1]).backward()
        grads = {n: p.grad for n, p in one.named_parameters()}
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        assert norm > clip
        for name, grad in grads.items():
            by_hand[name] += grad * (clip / (norm + 1e-6)) / len(labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(features, labels), batch_size=len(labels))
    settings = dict(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        poisson_sampling=False,
        grad_sample_mode=mode,
    )
    engine = PrivacyEngine()
    if mode == "ghost":
        wrapped, optimizer, criterion, loader = engine.make_private(criterion=criterion, **settings)
    else:
        wrapped, optimizer, loader = engine.make_private(**settings)
    for x, y in loader:
        optimizer.zero_grad()
        criterion(wrapped(x), y).backward()
        optimizer.step()
    for name, parameter in wrapped._module.named_parameters():
        torch.testing.assert_close(
            before[name] - parameter.detach(), by_hand[name], rtol=1e-4, atol=1e-7
        )
