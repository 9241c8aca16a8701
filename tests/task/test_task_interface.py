"""Issue 13 item 2: a task interface (privet.task.task) that the trainer, the evaluation and the
update format go through.

Classification through the interface is checked bit for bit against the code path it replaced,
written out here with Opacus directly; a task registered in this file (a frozen "backbone" whose
last layer alone trains and travels) runs a federated simulation without any other change.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privet.cli import build_parser
from privet.client.local_plan import plan_local_training
from privet.client.trainer import train_locally
from privet.privacy import epsilon_for
from privet.privacy.secagg.protocol import packed_bytes
from privet.server.evaluation import ServerEvaluator
from privet.simulations.inprocess_engine import run_in_process
from privet.task.config import ConfigError, RunConfig
from privet.task.datasets import ArrayDataset
from privet.task.evaluation import EVAL_BATCH, evaluate_model
from privet.task.messages import ARRAYS_RECORD
from privet.task.models import ModelError, build_model, get_weights, set_weights
from privet.task.task import (
    ClassificationTask,
    Task,
    TaskError,
    build_task_model,
    register_task,
    task_named,
    task_names,
    trainable_names,
    travelling_keys,
)
from tests.reference_accounting import opacus_epsilon

CPU = torch.device("cpu")
DELTA = 1e-5


def head_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of the model's last Linear layer (its classification head)."""
    last = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]
    return [f"{last}.weight", f"{last}.bias"]


# -- what a user writes: a task, registered in their own module ---------------------------------


@register_task("test-frozen-backbone")
class FrozenBackbone(ClassificationTask):
    """Classification that trains and sends only the last layer; the rest is a frozen backbone."""

    def trainable(self, model: nn.Module) -> list[str]:
        return head_keys(model)

    def travelling(self, model: nn.Module) -> list[str]:
        return head_keys(model)


class Scale(nn.Module):
    """A layer Opacus has no ghost-norm rule for: the model trains with per-sample hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def small_data(n: int = 200, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    features = rng.normal(size=(n, 1, 4, 4)).astype(np.float32) + labels[:, None, None, None]
    return ArrayDataset(features, labels, 3)


def plan_for(n: int, batch: int = 32, epochs: int = 2, sigma: float = 1.0):
    return plan_local_training(
        num_examples=n,
        batch_size=batch,
        local_epochs=epochs,
        rounds=1,
        delta=DELTA,
        noise_multiplier=sigma,
        target_epsilon=None,
    )


def make_model(kind: str) -> nn.Module:
    if kind == "hooks":
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 3), Scale())
    return build_model(kind, (1, 4, 4), 3, seed=0)


def previous_code_path(model, data, *, batch, lr, epochs, seed, mode):
    """One DP-SGD round as Privet ran it before tasks: SGD, cross-entropy, Opacus, same seeds."""
    dataset = TensorDataset(
        torch.tensor(data.features, dtype=torch.float32),
        torch.tensor(data.labels, dtype=torch.long),
    )
    loader = DataLoader(dataset, batch_size=batch, generator=torch.Generator().manual_seed(seed))
    engine = PrivacyEngine(accountant="rdp")
    made = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        criterion=nn.CrossEntropyLoss(),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(seed + 1),
        grad_sample_mode=mode,
    )
    if mode == "ghost":
        private, optimizer, criterion, private_loader = made
    else:
        (private, optimizer, private_loader), criterion = made, nn.CrossEntropyLoss()
    steps = 0
    for _ in range(epochs):
        for x, y in private_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(private(x), y)
            loss.backward()
            optimizer.step()
            steps += 1
    weights = [
        v.detach().numpy().copy() for v in private.to_standard_module().state_dict().values()
    ]
    return weights, steps, list(engine.accountant.history)


# -- (a) classification through the interface is the previous code path, bit for bit ------------


# The reference path does not silence what train_locally silences (Opacus' notices).
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.filterwarnings("ignore:Secure RNG turned off")
@pytest.mark.parametrize(
    ("kind", "mode"), [("logreg", "ghost"), ("mlp", "ghost"), ("hooks", "hooks")]
)
def test_classification_through_the_task_is_bit_identical_to_the_previous_path(kind, mode):
    data, plan = small_data(), plan_for(200)
    settings = dict(batch_size=32, max_grad_norm=1.0, learning_rate=0.5, local_epochs=2, seed=7)
    by_default = train_locally(make_model(kind), data, plan, device=CPU, **settings)
    by_name = train_locally(
        make_model(kind), data, plan, device=CPU, task=task_named("classification"), **settings
    )
    weights, steps, history = previous_code_path(
        make_model(kind), data, batch=32, lr=0.5, epochs=2, seed=7, mode=mode
    )
    assert by_default.grad_sample_mode == by_name.grad_sample_mode == mode
    for result in (by_default, by_name):
        assert len(result.weights) == len(weights)
        assert all(np.array_equal(a, b) for a, b in zip(result.weights, weights, strict=True))
        assert result.steps == steps == plan.steps_per_round == 14  # 2 epochs of 1/q = 7 steps
        assert [(e.noise_multiplier, e.sample_rate, e.steps) for e in result.events] == history
        # ε of what ran, against Opacus' own analysis of the same steps
        assert epsilon_for(result.events, DELTA, "rdp") == pytest.approx(
            opacus_epsilon(1 / 7, 1.0, steps, DELTA), rel=1e-9
        )


def test_evaluate_is_the_hand_computed_cross_entropy_and_accuracy():
    task = task_named("classification")
    model = build_model("mlp", (1, 4, 4), 3, seed=2)
    for n in (300, 2 * EVAL_BATCH + 17):  # one batch, and several
        data = small_data(n, seed=n)
        metrics = task.evaluate(model, data, CPU)
        with torch.no_grad():
            logits = model(torch.tensor(data.features)).double().numpy()
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        expected_loss = -log_probs[np.arange(n), data.labels].mean()
        assert metrics.loss == pytest.approx(expected_loss, rel=1e-6)
        assert metrics.accuracy == np.mean(logits.argmax(axis=1) == data.labels)
        assert evaluate_model(model, data, CPU) == (metrics.loss, metrics.accuracy)
    one_batch = small_data(300)
    with torch.no_grad():  # within one batch: exactly torch's summed cross-entropy over n
        logits = model(torch.tensor(one_batch.features))
        summed = float(
            nn.functional.cross_entropy(logits, torch.tensor(one_batch.labels), reduction="sum")
        )
    assert task.evaluate(model, one_batch, CPU).loss == summed / 300
    empty = one_batch.subset(np.array([], dtype=np.int64))
    assert (task.evaluate(model, empty, CPU).loss, task.evaluate(model, empty, CPU).accuracy) == (
        0,
        0,
    )


def test_the_server_evaluator_moves_every_tensor_of_a_classification_model(tmp_path):
    config = RunConfig(model="mlp", output=str(tmp_path))
    evaluator = ServerEvaluator(config)
    built = build_model("mlp", (1, 8, 8), 10, seed=0)
    assert evaluator.travelling == tuple(built.state_dict())
    initial = evaluator.initial_weights()
    assert all(np.array_equal(a, b) for a, b in zip(initial, get_weights(built), strict=True))
    assert evaluator(initial) == evaluate_model(built, evaluator.test, CPU)


# -- (b) a task of one's own: a frozen backbone, only the head trains and travels ----------------


def test_a_frozen_backbone_task_trains_and_returns_only_the_head():
    task = task_named("test-frozen-backbone")
    data, plan = small_data(), plan_for(200)
    model = build_task_model(task, "mlp", (1, 4, 4), 3, seed=0)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    head = head_keys(model)
    assert travelling_keys(task, model) == trainable_names(task, model) == tuple(head)
    assert [w.shape for w in get_weights(model)] == [before[key].shape for key in head]
    result = train_locally(
        model,
        data,
        plan,
        batch_size=32,
        max_grad_norm=1.0,
        learning_rate=0.5,
        local_epochs=2,
        seed=3,
        device=CPU,
        task=task,
    )
    assert len(result.weights) == 2
    assert all(
        not np.array_equal(w, before[key].numpy())
        for w, key in zip(result.weights, head, strict=True)
    )
    after = model.state_dict()
    frozen = [key for key in before if key not in head]
    assert frozen and all(torch.equal(before[key], after[key]) for key in frozen)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == head
    # setting the travelling tensors leaves the rest of a model as it was built
    fresh = build_task_model(task, "mlp", (1, 4, 4), 3, seed=5)
    untouched = {key: fresh.state_dict()[key].clone() for key in frozen}
    set_weights(fresh, result.weights)
    assert all(torch.equal(untouched[key], fresh.state_dict()[key]) for key in frozen)
    assert all(
        np.array_equal(fresh.state_dict()[k].numpy(), w)
        for k, w in zip(head, result.weights, strict=True)
    )


def spy_on_training(sent: list, returned: list):
    """A client mod that keeps the arrays of every train message and of every plain reply."""

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train":
            sent.append(msg.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays())
            if not reply.has_error() and ARRAYS_RECORD in reply.content.array_records:
                returned.append(reply.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays())
        return reply

    return mod


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg-client-dp"])
def test_a_registered_task_runs_a_federation_with_its_backbone_frozen(tmp_path, secure):
    extra = dict(secure_aggregation=True, client_noise_multiplier=0.5) if secure else {}
    config = RunConfig(
        task="test-frozen-backbone",
        model="mlp",
        clients=3,
        rounds=2,
        local_epochs=1,
        noise_multiplier=1.0,
        output=str(tmp_path / "run"),
        reproducible=True,
        **extra,
    )
    sent, returned = [], []
    results = run_in_process(config, client_mods=[spy_on_training(sent, returned)])
    assert results.finished, results.failure_reason
    initial = build_model("mlp", (1, 8, 8), 10, seed=0).state_dict()
    head = head_keys(build_model("mlp", (1, 8, 8), 10, seed=0))
    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert list(final) == list(initial)  # model.pt holds the whole model, backbone included
    frozen = [key for key in initial if key not in head]
    assert all(torch.equal(final[key], initial[key]) for key in frozen)
    assert all(not torch.equal(final[key], initial[key]) for key in head)
    # the wire carries the head alone: the global model sent, and each client's update
    shapes = [tuple(initial[key].shape) for key in head]
    assert len(sent) == 6 and all([w.shape for w in arrays] == shapes for arrays in sent)
    if secure:
        assert returned == []  # masked: no plain arrays leave a client
    else:
        assert len(returned) == 6
        assert all([w.shape for w in arrays] == shapes for arrays in returned)
    # each client's ε is Opacus' for the steps its ledger says ran
    recorded = json.loads((tmp_path / "run" / "results.json").read_text())
    assert recorded["config"]["task"] == "test-frozen-backbone"
    # What the run cost: the head trains out of the whole model, and only its bytes travel.
    head_size = sum(initial[key].numel() for key in head)
    assert recorded["trainable_parameters"] == head_size
    assert recorded["total_parameters"] == sum(value.numel() for value in initial.values())
    assert recorded["trainable_parameters"] < recorded["total_parameters"]
    head_bytes = ArrayRecord([initial[key].numpy() for key in head]).count_bytes()
    for entry in recorded["rounds"]:
        cost = entry["cost"]
        assert cost["bytes_down_per_client"] == head_bytes
        if secure:  # the masked vector: every head value and the within-clip flag, packed
            bits = entry["secure_aggregation"]["bits"]
            assert cost["bytes_up_per_client"] == packed_bytes(head_size + 1, bits)
        else:
            assert cost["bytes_up_per_client"] == head_bytes
        assert 0 < cost["step_seconds_median"] <= cost["step_seconds_max"]
    for client in recorded["clients"]:
        expected = opacus_epsilon(
            client["sample_rate"], client["noise_multiplier"], client["steps"], DELTA
        )
        assert client["epsilon"] == pytest.approx(expected, rel=1e-9)


# -- (c) choosing a task: the setting, its flag, its one-line errors -----------------------------


def test_the_task_setting_selects_from_the_registry_in_one_line():
    assert task_names()[0] == "classification"
    assert RunConfig().task == "classification"
    assert RunConfig.from_mapping({"task": "test-frozen-backbone"}).task == "test-frozen-backbone"
    args = build_parser().parse_args(["simulate", "--task", "test-frozen-backbone"])
    assert args.task == "test-frozen-backbone"
    known = ", ".join(task_names())
    message = f"unknown task 'regression'; choose one of: {known}"
    for make in (
        lambda: RunConfig(task="regression"),
        lambda: RunConfig.from_mapping({"task": "regression"}),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            make()
        assert "\n" not in str(info.value)
    with pytest.raises(TaskError, match=re.escape(message)):
        task_named("regression")


# -- (d) the registry and its checks -------------------------------------------------------------


def test_the_registry_refuses_a_taken_name_and_a_task_that_is_not_one():
    with pytest.raises(TaskError, match="task 'test-frozen-backbone' is already registered"):

        @register_task("test-frozen-backbone")
        class Other(ClassificationTask):
            pass

    with pytest.raises(TaskError, match="task 'classification' is already registered"):
        register_task("classification")(FrozenBackbone)
    register_task("test-frozen-backbone")(FrozenBackbone)  # the same class again: a re-import
    with pytest.raises(TaskError, match="without spaces"):
        register_task("two words")
    with pytest.raises(TaskError, match="needs a subclass of privet.task.task.Task"):
        register_task("test-not-a-task")(object)
    with pytest.raises(TaskError, match="does not define criterion, evaluate, tensors"):

        @register_task("test-half-a-task")
        class Half(Task):
            pass

    assert "test-not-a-task" not in task_names() and "test-half-a-task" not in task_names()
    assert isinstance(task_named("test-frozen-backbone"), FrozenBackbone)


def test_a_task_naming_tensors_wrongly_is_one_line():
    model = build_model("logreg", (1, 4, 4), 3)

    class Typo(ClassificationTask):
        def travelling(self, model: nn.Module) -> list[str]:
            return ["1.wieght"]

    class Stranded(ClassificationTask):
        def travelling(self, model: nn.Module) -> list[str]:
            return ["1.weight"]

    class Idle(ClassificationTask):
        def trainable(self, model: nn.Module) -> list[str]:
            return []

    with pytest.raises(
        TaskError,
        match=r"travelling\(\) names '1.wieght', which the model does not have; .*state_dict",
    ):
        travelling_keys(Typo(), model)
    with pytest.raises(TaskError, match="parameter '1.bias' trains but does not travel"):
        travelling_keys(Stranded(), model)
    with pytest.raises(TaskError, match="trains nothing"):
        trainable_names(Idle(), model)
    with pytest.raises(ModelError, match="expected 2 weight arrays, got 1"):
        set_weights(model, get_weights(model)[:1])
