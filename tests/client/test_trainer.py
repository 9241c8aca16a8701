import logging

import numpy as np
import pytest
import torch
from torch import nn

from privet.client.local_plan import plan_local_training
from privet.client.trainer import (
    AccountingMismatchError,
    grad_sample_mode,
    make_dp_compatible,
    supports_ghost_clipping,
    train_locally,
)
from privet.task.datasets import ArrayDataset
from privet.task.models import build_model, get_weights

CPU = torch.device("cpu")


def small_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    features = rng.normal(size=(n, 1, 4, 4)).astype(np.float32) + labels[:, None, None, None]
    return ArrayDataset(features, labels, 3)


def fixed_plan(n, *, batch=32, epochs=1, sigma=1.0):
    """A one-round plan with a fixed noise multiplier."""
    return plan_local_training(
        num_examples=n,
        batch_size=batch,
        local_epochs=epochs,
        rounds=1,
        delta=1e-5,
        noise_multiplier=sigma,
        target_epsilon=None,
    )


def train(model, data, plan, *, batch=32, epochs=1, lr=0.5, seed=1):
    return train_locally(
        model,
        data,
        plan,
        batch_size=batch,
        max_grad_norm=1.0,
        learning_rate=lr,
        local_epochs=epochs,
        seed=seed,
        device=CPU,
    )


def run(model, data, *, seed=1, sigma=1.0, epochs=2, batch=32):
    plan = fixed_plan(len(data), batch=batch, epochs=epochs, sigma=sigma)
    return plan, train(model, data, plan, batch=batch, epochs=epochs, seed=seed)


def test_events_are_exactly_what_ran():
    data = small_data()
    plan, result = run(build_model("mlp", (1, 4, 4), 3), data)
    assert result.steps == plan.steps_per_round == 2 * 7  # ceil(200 / 32) = 7 batches per epoch
    assert sum(event.steps for event in result.events) == result.steps
    assert {(e.noise_multiplier, e.sample_rate) for e in result.events} == {(1.0, 1 / 7)}


def test_training_changes_weights_and_is_reproducible_for_a_seed():
    data = small_data()
    initial = get_weights(build_model("logreg", (1, 4, 4), 3))
    _, first = run(build_model("logreg", (1, 4, 4), 3), data, seed=5)
    _, again = run(build_model("logreg", (1, 4, 4), 3), data, seed=5)
    _, other = run(build_model("logreg", (1, 4, 4), 3), data, seed=6)
    assert any(not np.array_equal(a, b) for a, b in zip(initial, first.weights, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(first.weights, again.weights, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(first.weights, other.weights, strict=True))


def test_noise_is_really_added():
    """The same seed with more noise must move the weights further from the noiseless path."""
    data = small_data()
    _, quiet = run(build_model("logreg", (1, 4, 4), 3), data, sigma=1e-6)
    _, loud = run(build_model("logreg", (1, 4, 4), 3), data, sigma=50.0)
    _, quiet_again = run(build_model("logreg", (1, 4, 4), 3), data, sigma=2e-6)
    distance = lambda a, b: sum(float(np.abs(x - y).sum()) for x, y in zip(a, b, strict=True))  # noqa: E731
    assert distance(quiet.weights, loud.weights) > 100 * distance(
        quiet.weights, quiet_again.weights
    )


def test_clipping_bounds_each_step():
    """With almost no noise and clip norm C, one step moves the weights by at most lr·C·(B/E[B])."""
    data = small_data(n=64)
    model = build_model("logreg", (1, 4, 4), 3)
    data_big = ArrayDataset(data.features * 1000, data.labels, 3)  # huge gradients before clipping
    before = get_weights(model)
    plan = fixed_plan(64, batch=64, sigma=1e-9)
    result = train(model, data_big, plan, batch=64, lr=1.0, seed=3)
    step = np.sqrt(
        sum(float(((a - b) ** 2).sum()) for a, b in zip(before, result.weights, strict=True))
    )
    assert result.steps == 1
    # Poisson batch of at most 64 examples, each clipped to 1, averaged over E[B] = 64.
    assert step <= 1.0 + 1e-4


def test_ghost_clipping_is_used_where_opacus_supports_the_layers():
    assert supports_ghost_clipping(build_model("mlp", (1, 8, 8), 10))
    large = build_model("mlp-large", (1, 28, 28), 10)
    assert supports_ghost_clipping(large)
    assert sum(p.numel() for p in large.parameters()) == 784 * 1024 + 1024 + 1024 * 256 + 256 + 2570
    assert supports_ghost_clipping(build_model("cnn", (1, 8, 8), 10))

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.scale

    assert not supports_ghost_clipping(nn.Sequential(nn.Flatten(), Odd()))


def test_batchnorm_is_replaced_with_a_logged_warning(caplog):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    with caplog.at_level(logging.WARNING):
        fixed = make_dp_compatible(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert "BatchNorm2d -> GroupNorm" in caplog.text
    _, result = run(fixed, small_data())
    assert result.steps > 0


def test_a_compatible_model_is_left_alone(caplog):
    model = build_model("mlp", (1, 4, 4), 3)
    with caplog.at_level(logging.WARNING):
        assert make_dp_compatible(model) is model
    assert caplog.text == ""


def test_plan_for_other_data_size_is_refused():
    data = small_data(n=200)
    plan = fixed_plan(100)
    with pytest.raises(AccountingMismatchError, match="100 examples"):
        train(build_model("logreg", (1, 4, 4), 3), data, plan, batch=32, lr=0.1, seed=0)


def test_batch_size_other_than_planned_is_refused():
    data = small_data(n=200)
    plan = fixed_plan(200)
    with pytest.raises(AccountingMismatchError):
        train(build_model("logreg", (1, 4, 4), 3), data, plan, batch=50, lr=0.1, seed=0)


def test_the_model_is_handed_back_without_opacus_hooks():
    model = build_model("mlp", (1, 4, 4), 3)
    run(model, small_data())
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    assert hooks == 0
    assert all(not hasattr(p, "grad_sample") or p.grad_sample is None for p in model.parameters())


class NoGhost(nn.Module):
    """A layer ghost clipping has no rule for: the round runs in Opacus' hooks mode."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_physical_batches_change_memory_not_the_private_step(mode):
    """A Poisson batch split into parts of 5 gives the same noisy steps, events and ε."""

    def model():
        built = build_model("mlp", (1, 4, 4), 3, seed=3)
        return nn.Sequential(NoGhost(), built) if mode == "hooks" else built

    data = small_data()
    plan = fixed_plan(len(data), batch=32, epochs=1, sigma=1.0)
    whole = train(model(), data, plan)
    parts = train_locally(
        model(), data, plan, batch_size=32, max_grad_norm=1.0, learning_rate=0.5,
        local_epochs=1, seed=1, device=CPU, physical_batch_size=5,
    )  # fmt: skip
    assert whole.grad_sample_mode == parts.grad_sample_mode == mode
    assert parts.steps == whole.steps == plan.steps_per_round
    assert parts.events == whole.events
    for a, b in zip(whole.weights, parts.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert whole.gpu_peak_bytes is None  # on the CPU there is no GPU memory to report


def test_bf16_autocast_trains_the_same_private_steps_in_lower_precision():
    data = small_data()
    plan = fixed_plan(len(data), batch=32, epochs=1, sigma=1.0)
    full = train(build_model("mlp", (1, 4, 4), 3, seed=3), data, plan)
    half = train_locally(
        build_model("mlp", (1, 4, 4), 3, seed=3), data, plan, batch_size=32,
        max_grad_norm=1.0, learning_rate=0.5, local_epochs=1, seed=1, device=CPU,
        precision="bf16",
    )  # fmt: skip
    assert half.events == full.events and half.steps == full.steps
    assert all(a.dtype == np.float32 for a in half.weights)  # parameters stay fp32
    differences = [
        float(np.abs(a - b).max()) for a, b in zip(full.weights, half.weights, strict=True)
    ]
    assert 0 < max(differences) < 0.05  # bf16 really ran, and it is the same training
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        train_locally(
            build_model("mlp", (1, 4, 4), 3), data, plan, batch_size=32, max_grad_norm=1.0,
            learning_rate=0.5, local_epochs=1, seed=1, device=CPU, precision="fp16",
        )  # fmt: skip


def test_adapters_on_a_frozen_backbone_use_hooks_and_whole_models_ghost_clipping():
    model = build_model("mlp", (1, 4, 4), 3)
    assert grad_sample_mode(model) == "ghost"
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("5."))  # only the last layer: < 10% trains
    assert grad_sample_mode(model) == "hooks"
    assert grad_sample_mode(nn.Sequential(nn.Flatten(), NoGhost())) == "hooks"


def test_a_models_dropout_is_seeded_by_the_round_not_by_what_ran_before():
    """Pretrained transformers use dropout, drawn from torch's global generator: a round must
    not depend on it (a resumed run, or many clients in one process, would differ)."""

    def with_dropout():
        built = build_model("mlp", (1, 4, 4), 3, seed=3)
        return nn.Sequential(built[0], nn.Dropout(0.5), *list(built)[1:])

    data = small_data()
    plan = fixed_plan(len(data), batch=32, epochs=1, sigma=1.0)
    torch.manual_seed(123)
    first = train(with_dropout(), data, plan)
    torch.rand(1000)  # whatever else the process did
    second = train(with_dropout(), data, plan)
    other = train(with_dropout(), data, plan, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first.weights, second.weights, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(first.weights, other.weights, strict=True))
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    train(with_dropout(), data, plan)
    assert torch.equal(torch.rand(1), expected)  # the caller's generator is put back untouched
