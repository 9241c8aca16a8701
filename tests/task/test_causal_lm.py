"""Prompt → response fine-tuning of a causal language model (issue 15, item 1's second form).

A tiny Llama and a tokenizer are made here (nothing downloaded). Checked: the response mask
marks exactly the response tokens; the loss never depends on the prompt's predictions and is one
number per pair (so one pair is one DP example); a LoRA run finishes with every ε equal to
Opacus' analysis and a perplexity that is exp of the loss; bad combinations are one line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import peft
import pytest
import torch
import transformers

from privet.cli import main
from privet.simulations.inprocess_engine import run_in_process
from privet.task.causal_lm import IGNORED, CausalLanguageModelTask, response_targets
from privet.task.config import ConfigError, RunConfig
from privet.task.text import encode_prompt_responses, load_tokenizer
from tests.reference_accounting import opacus_epsilon
from tests.task.test_text import sms_lines

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated"),
]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> tuple[Path, Path]:
    """(language model folder, JSONL of 'is this spam? TEXT' -> 'yes'/'no')."""
    root = tmp_path_factory.mktemp("lm")
    rows = [
        ("is this spam? " + text, "yes" if label == "spam" else "no")
        for label, text in sms_lines(240)
    ]
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in rows))
    folder = root / "lm"
    sizes = ["--hidden-size", "32", "--layers", "2", "--heads", "2", "--intermediate-size", "64"]
    flags = ["--data-file", str(data), "--text-column", "prompt", "--max-positions", "64"]
    assert main(["model-folder", "--causal-lm", *flags, *sizes, "--out", str(folder)]) == 0
    return folder, data


def test_the_response_mask_marks_exactly_the_response_and_its_end(prompts):
    folder, _ = prompts
    tokenizer = load_tokenizer(folder)
    features = encode_prompt_responses(tokenizer, ["is this spam? win now"], ["yes"], 16)
    ids, mask, response = (features[0, channel].astype(int) for channel in range(3))
    head = tokenizer("is this spam? win now")["input_ids"]
    tail = tokenizer("yes", add_special_tokens=False)["input_ids"]
    assert list(ids[: len(head)]) == head
    assert list(ids[len(head) : len(head) + len(tail) + 1]) == [*tail, tokenizer.sep_token_id]
    assert response.sum() == len(tail) + 1 and response[: len(head)].sum() == 0
    assert mask.sum() == len(head) + len(tail) + 1
    short = encode_prompt_responses(tokenizer, ["is this spam? win now"], ["yes"], 4)
    assert short.shape == (1, 3, 4) and short[0, 2].sum() == 0  # cut inside the prompt


def test_the_loss_is_on_the_response_and_one_number_per_pair():
    task = CausalLanguageModelTask()
    generator = torch.Generator().manual_seed(0)
    features = torch.zeros(3, 3, 6)
    features[:, 0] = torch.randint(0, 10, (3, 6), generator=generator).float()
    features[:, 1] = 1
    features[:, 2, 3:] = 1  # positions 3..5 are the response
    targets = response_targets(features)
    assert (targets[:, :3] == IGNORED).all()
    logits = torch.randn(3, 6, 10, generator=generator)
    criterion = task.criterion()
    criterion.reduction = "none"  # as Opacus' ghost clipping asks
    per_pair = criterion(logits, targets)
    assert per_pair.shape == (3,)
    for row in range(3):  # each pair's loss is its own: the mean NLL of its 3 response tokens
        by_hand = -torch.log_softmax(logits[row, 2:5], dim=1)[
            torch.arange(3), features[row, 0, 3:6].long()
        ]
        torch.testing.assert_close(per_pair[row], by_hand.mean())
    changed = logits.clone()
    changed[:, :2] = torch.randn(3, 2, 10, generator=generator)  # predictions of prompt tokens
    torch.testing.assert_close(criterion(changed, targets), per_pair)
    criterion.reduction = "mean"
    torch.testing.assert_close(criterion(logits, targets), per_pair.mean())


def test_a_lora_language_model_run_reports_perplexity_and_opacus_epsilon(prompts, tmp_path):
    folder, data = prompts
    config = RunConfig(
        dataset="prompts", task="causal-lm", data_file=str(data), model=f"hf:{folder}",
        max_length=48, lora_rank=4, clients=3, rounds=2, local_epochs=1, seed=1,
        local_evaluation="last-round", output=str(tmp_path / "run"),
    )  # fmt: skip
    results = run_in_process(config)
    assert results.finished
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for record in saved["rounds"]:
        assert record["metrics"]["perplexity"] == pytest.approx(math.exp(record["loss"]))
        assert 0 <= record["accuracy"] <= 1
    reference = peft.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(str(folder)),
        peft.LoraConfig(r=4, lora_alpha=8, task_type=peft.TaskType.CAUSAL_LM),
    )
    trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert saved["trainable_parameters"] == trainable < saved["total_parameters"] / 20
    for client in saved["clients"]:
        expected = opacus_epsilon(
            client["sample_rate"], client["noise_multiplier"], client["steps"], 1e-5
        )
        assert client["steps"] > 0 and client["epsilon"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dataset": "digits", "task": "causal-lm"}, "use --dataset prompts"),
        ({"task": "classification"}, "add --task causal-lm"),
        ({"response_column": " "}, "response-column is empty"),
        ({"model": "logreg"}, "give --model hf:FOLDER"),
    ],
)
def test_language_model_settings_that_cannot_work_are_one_line(prompts, settings, message):
    folder, data = prompts
    values = dict(dataset="prompts", task="causal-lm", data_file=str(data), model=f"hf:{folder}")
    values.update(settings)
    with pytest.raises(ConfigError, match=message) as error:
        RunConfig(**values)
    assert "\n" not in str(error.value)
