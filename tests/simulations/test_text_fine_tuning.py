"""Federated DP fine-tuning of a pretrained text classifier with LoRA (issue 15), end to end.

A model folder is made here (`privet model-folder`'s code: a WordPiece tokenizer trained on
public SMS messages and a tiny random BERT, saved with save_pretrained), and runs go through
the real ``--dataset text`` and ``--model hf:FOLDER`` paths. What is checked against an
independent computation: the trainable and total parameter counts (PEFT applied by the test
itself), every client's ε (Opacus' RDP analysis of the steps that ran), the client-level ε
(Opacus' analysis of the rounds), and that the frozen backbone neither changes nor travels.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers

from privet.cli import main
from privet.simulations.inprocess_engine import run_in_process
from privet.task.config import ConfigError, RunConfig
from privet.task.containers import DataError
from privet.task.model_folder import BertSize, make_text_model_folder
from privet.task.text import text_classes
from tests.reference_accounting import opacus_epsilon
from tests.task.test_text import SMS, sms_lines

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated"),
]
SIZE = BertSize(hidden_size=32, layers=2, heads=2, intermediate_size=64, max_positions=64)
RANK = 4


@pytest.fixture(scope="module")
def sms(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, CSV with a label,text header): public part 0..199, private 200..799."""
    assert SMS.is_file()
    root = tmp_path_factory.mktemp("sms")
    rows = sms_lines(800)
    public, private = rows[:200], rows[200:]
    folder = make_text_model_folder(
        root / "model", [text for _, text in public], [label for label, _ in public], SIZE
    )
    data = root / "sms.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        writer.writerows(private)
    return folder, data


def text_config(folder: Path, data: Path, output: Path, **settings) -> RunConfig:
    values = dict(
        dataset="text",
        data_file=str(data),
        label_column="label",
        model=f"hf:{folder}",
        max_length=32,
        lora_rank=RANK,
        clients=3,
        rounds=2,
        local_epochs=1,
        seed=1,
        reproducible=True,
        local_evaluation="never",
        output=str(output),
    )
    values.update(settings)
    return RunConfig(**values)


def peft_reference(folder: Path) -> torch.nn.Module:
    """The folder's classifier with adapters, as PEFT alone makes it (the test's own count)."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True
    )
    config = peft.LoraConfig(r=RANK, lora_alpha=2 * RANK, task_type=peft.TaskType.SEQ_CLS)
    return peft.get_peft_model(model, config)


def test_a_lora_run_trains_and_sends_only_adapters_and_head_with_opacus_epsilon(sms, tmp_path):
    folder, data = sms
    results = run_in_process(text_config(folder, data, tmp_path / "run"))
    assert results.finished
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    reference = peft_reference(folder)
    trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    total = sum(p.numel() for p in reference.parameters())
    assert saved["trainable_parameters"] == trainable and saved["total_parameters"] == total
    assert trainable < total / 10
    # Only the trainable tensors travel: float32 arrays, each way, plus a little framing.
    for record in saved["rounds"]:
        assert 4 * trainable <= record["cost"]["bytes_up_per_client"] < 4 * trainable + 4096
        assert record["cost"]["bytes_down_per_client"] < 4 * trainable + 4096
        assert record["cost"]["gpu_peak_bytes_max"] is None  # trained on the CPU
        assert record["cost"]["gpu_peak_bytes_by_client"] is None
    for client in saved["clients"]:
        expected = opacus_epsilon(
            client["sample_rate"], client["noise_multiplier"], client["steps"], 1e-5
        )
        assert client["steps"] > 0
        assert client["epsilon"] == pytest.approx(expected, rel=1e-9)
    # The backbone in the saved model is the folder's, bit for bit; the adapters trained.
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    original = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True
    ).state_dict()
    embeddings = "bert.embeddings.word_embeddings.weight"
    [saved_embeddings] = [value for key, value in state.items() if key.endswith(embeddings)]
    assert torch.equal(saved_embeddings, original[embeddings])
    adapters = [key for key in state if "lora_B" in key]
    assert adapters and any(state[key].abs().max() > 0 for key in adapters)  # B starts at 0


@pytest.mark.long
def test_lora_through_secure_aggregation_with_client_level_dp_on_flowers_runtime(
    sms, tmp_path, monkeypatch
):
    folder, data = sms
    output = tmp_path / "secure"
    monkeypatch.chdir(tmp_path)
    flags = [
        "--dataset", "text", "--data-file", str(data), "--label-column", "label",
        "--model", f"hf:{folder}", "--max-length", "32", "--lora-rank", str(RANK),
        "--clients", "3", "--rounds", "2", "--local-epochs", "1",
        "--secure-aggregation", "--client-target-epsilon", "8", "--clients-per-round", "3",
        "--local-evaluation", "never", "--engine", "flower", "--output", str(output),
    ]  # fmt: skip
    assert main(["simulate", *flags]) == 0
    saved = json.loads((output / "results.json").read_text())
    assert saved["finished"] and saved["engine"] == "flower-simulation"
    assert saved["secure_aggregation"] is not None
    level = saved["client_level"]
    expected = opacus_epsilon(
        level["sample_rate"], level["noise_multiplier"], level["rounds"], 1e-5
    )
    assert level["epsilon"] == pytest.approx(expected, rel=1e-9) and level["epsilon"] <= 8.0
    for client in saved["clients"]:
        reference = opacus_epsilon(
            client["sample_rate"], client["noise_multiplier"], client["steps"], 1e-5
        )
        assert client["epsilon"] == pytest.approx(reference, rel=1e-9)


def test_the_model_folder_command_writes_a_folder_that_numbers_labels_by_its_names(tmp_path):
    data = tmp_path / "public.csv"
    data.write_text("label,text\nspam,win a prize now\nham,see you at noon\nham,ok then\n")
    out = tmp_path / "folder"
    args = ["--data-file", str(data), "--label-column", "label", "--hidden-size", "16"]
    assert main(["model-folder", *args, "--layers", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["hidden_size"] == 16
    # A node whose file holds only spam still numbers spam as 1, as everyone else does.
    assert text_classes(out, ["spam", "spam"]) == {"ham": 0, "spam": 1}
    with pytest.raises(DataError, match="not among the 2 label names"):
        text_classes(out, ["spam", "eggs"])
    # --train-epochs trains the classifier on the (public) file without DP.
    trained = tmp_path / "trained"
    flags = ["--layers", "1", "--train-epochs", "2", "--max-length", "8", "--out", str(trained)]
    assert main(["model-folder", *args, *flags]) == 0
    weights = [
        transformers.AutoModelForSequenceClassification.from_pretrained(str(f)).state_dict()
        for f in (out, trained)
    ]
    assert not torch.equal(weights[0]["classifier.weight"], weights[1]["classifier.weight"])
    # An existing folder is refused, and nothing in it changes.
    before = (out / "config.json").read_bytes()
    assert main(["model-folder", *args, "--out", str(out)]) == 2
    assert (out / "config.json").read_bytes() == before


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": "logreg"}, "give --model hf:FOLDER"),
        ({"model": "hf:/no/such/folder"}, "model folder /no/such/folder does not exist"),
        ({"model": "hf:"}, "names no folder"),
        ({"lora_rank": 2000}, "lora-rank must be between 0"),
        ({"lora_rank": 4, "lora_alpha": -1.0}, "lora-alpha must be positive"),
        ({"lora_targets": "query;drop"}, "is not a module name"),
        ({"max_length": 1}, "max-length must be between 2"),
        ({"text_column": " "}, "text-column is empty"),
    ],
)
def test_bad_text_settings_are_one_line_errors(sms, settings, message):
    folder, data = sms
    values = dict(dataset="text", data_file=str(data), label_column="label", model=f"hf:{folder}")
    values.update(settings)
    with pytest.raises(ConfigError, match=message) as error:
        RunConfig(**values)
    assert "\n" not in str(error.value)


def test_text_and_lora_flags_without_their_feature_say_what_they_need(tmp_path, capsys):
    output = str(tmp_path / "x")
    assert main(["simulate", "--text-column", "body", "--output", output]) == 2
    assert "has no effect without text data; use --dataset text" in capsys.readouterr().err
    assert main(["simulate", "--lora-alpha", "16", "--output", output]) == 2
    assert "has no effect without LoRA adapters; add --lora-rank R" in capsys.readouterr().err
    assert main(["simulate", "--lora-rank", "8", "--model", "mlp", "--output", output]) == 2
    assert "--model mlp is not one; give --model hf:FOLDER" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_model_too_short_for_the_texts_is_refused_before_training(sms, tmp_path):
    folder, data = sms
    config = text_config(folder, data, tmp_path / "long", max_length=100)
    with pytest.raises(Exception, match="at most 64 tokens.*lower --max-length") as error:
        run_in_process(config)
    assert "\n" not in str(error.value)


def test_every_party_checks_it_holds_the_servers_frozen_backbone(sms, tmp_path):
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from safetensors.torch import load_file, save_file

    from privet.client.app import make_client_app
    from privet.server.evaluation import ServerEvaluator
    from privet.task.messages import IdentityQuery
    from privet.task.models import frozen_digest
    from privet.task.task import build_task_model, task_named

    folder, data = sms
    config = text_config(folder, data, tmp_path / "run")
    server = ServerEvaluator(config)
    assert server.backbone_digest is not None
    # Adapters and head change every round: the digest covers only what never travels.
    model = build_task_model(task_named("classification"), config.model, (2, 32), 2, 1, config.lora)
    assert frozen_digest(model) == server.backbone_digest
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_A" in n).add_(1.0)
    assert frozen_digest(model) == server.backbone_digest
    full = build_task_model(task_named("classification"), config.model, (2, 32), 2, 1)
    assert frozen_digest(full) is None  # full fine-tuning: every tensor travels
    # A node whose folder differs in one backbone weight refuses at discovery, naming both.
    other = tmp_path / "other"
    other.mkdir()
    for file in folder.iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    weights = load_file(str(other / "model.safetensors"))
    weights["bert.encoder.layer.0.attention.self.key.weight"][0, 0] += 1e-3
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    ask = IdentityQuery(None, server.backbone_digest).to_config()

    def query(node_config: RunConfig) -> Message:
        context = Context(
            run_id=1,
            node_id=7,
            node_config={"partition-id": 0, "num-partitions": 3},
            state=RecordDict(),
            run_config={},
        )
        message = Message(
            content=RecordDict({"config": ConfigRecord(dict(ask))}),
            dst_node_id=7,
            message_type="query",
        )
        return make_client_app(node_config)(message, context)

    assert query(config).content["metrics"]["client-id"] == 0
    with pytest.raises(ConfigError, match="frozen backbone .* is not the run's") as refused:
        query(text_config(other, data, tmp_path / "run"))
    assert server.backbone_digest[:12] in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_warm_start_that_changes_the_frozen_backbone_is_refused(sms, tmp_path):
    from privet.server.evaluation import ServerEvaluator
    from privet.task.models import ModelError

    folder, data = sms
    state = ServerEvaluator(text_config(folder, data, tmp_path / "a")).model.state_dict()
    adapters = {key: value.clone() for key, value in state.items()}
    for key in adapters:
        if "lora_B" in key:
            adapters[key] += 0.5  # adapters travel: a warm start may set them
    torch.save(adapters, tmp_path / "adapters.pt")
    warm = ServerEvaluator(
        text_config(folder, data, tmp_path / "b", init_from=str(tmp_path / "adapters.pt"))
    )
    assert warm.init_from is not None
    backbone = dict(adapters)
    key = next(k for k in backbone if k.endswith("word_embeddings.weight"))
    backbone[key] = backbone[key] + 1e-3
    torch.save(backbone, tmp_path / "backbone.pt")
    config = text_config(folder, data, tmp_path / "c", init_from=str(tmp_path / "backbone.pt"))
    with pytest.raises(ModelError, match="changes the model's frozen backbone"):
        ServerEvaluator(config)


def test_a_partner_node_reads_its_own_text_file_with_its_own_copy_of_the_folder(sms, tmp_path):
    from privet.client.node_data import load_node_data, with_node_model_folder
    from privet.server.evaluation import ServerEvaluator
    from privet.task.models import frozen_digest
    from privet.task.task import build_task_model, task_named
    from privet.task.text import encode_texts, load_tokenizer

    folder, data = sms
    config = text_config(folder, data, tmp_path / "run")
    copy = tmp_path / "partner-model"
    copy.mkdir()
    for file in folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    own = tmp_path / "partner.jsonl"  # another format and column names, and only spam
    rows = [row for row in sms_lines(800) if row[0] == "spam"][:30]
    own.write_text("".join(json.dumps({"body": t, "kind": label}) + "\n" for label, t in rows))
    node_config = {
        "client-id": 2,
        "data-file": str(own),
        "text-column": "body",
        "label-column": "kind",
        "model-folder": str(copy),
    }
    node_run = with_node_model_folder(config, node_config)
    assert node_run.model == f"hf:{copy}"
    node = load_node_data(node_run, node_config)
    assert node.client_id == 2 and node.classes_present == 1
    assert set(node.train.labels.tolist()) == {1}  # spam is 1, as the folder's id2label says
    everything = np.concatenate([node.train.features, node.validation.features])
    expected = encode_texts(load_tokenizer(folder), [t for _, t in rows], config.max_length)
    assert sorted(map(bytes, everything)) == sorted(map(bytes, expected))
    # Its copy holds the server's backbone, so discovery admits it.
    model = build_task_model(
        task_named("classification"), node_run.model, (2, 32), 2, 1, node_run.lora
    )
    assert frozen_digest(model) == ServerEvaluator(config).backbone_digest
    # Without label names in the folder a node cannot number its classes: one line.
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in folder.iterdir():
        (bare / file.name).write_bytes(file.read_bytes())
    settings = json.loads((bare / "config.json").read_text())
    settings["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    settings["label2id"] = {"LABEL_0": 0, "LABEL_1": 1}
    (bare / "config.json").write_text(json.dumps(settings))
    with pytest.raises(DataError, match="names no labels") as error:
        load_node_data(
            with_node_model_folder(config, {**node_config, "model-folder": str(bare)}),
            node_config | {"model-folder": str(bare)},
        )
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="model-folder applies to runs on a pretrained model"):
        with_node_model_folder(RunConfig(output=str(tmp_path / "x")), node_config)
