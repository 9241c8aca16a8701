"""Models: seeded initial weights, and a fresh model on every call."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from privet.task.models import ModelError, build_model, get_weights, model_names


def test_the_same_seed_gives_the_same_weights_and_another_seed_others():
    a = get_weights(build_model("mlp", (1, 28, 28), 10, seed=3))
    b = get_weights(build_model("mlp", (1, 28, 28), 10, seed=3))
    c = get_weights(build_model("mlp", (1, 28, 28), 10, seed=4))
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert any((x != y).any() for x, y in zip(a, c, strict=True))


def test_every_call_returns_a_model_of_its_own():
    first = build_model("logreg", (64,), 10, seed=0)
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.add_(1.0)  # training one client's model ...
    second = build_model("logreg", (64,), 10, seed=0)
    # ... never changes the initial model the next client or the server starts from.
    for trained, fresh in zip(first.parameters(), second.parameters(), strict=True):
        assert not torch.equal(trained, fresh)
        assert trained.data_ptr() != fresh.data_ptr()


def test_building_a_model_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("mlp", (64,), 10, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_bad_models_are_one_line_errors():
    with pytest.raises(ModelError, match="unknown model 'resnet'"):
        build_model("resnet", (64,), 10)
    with pytest.raises(ModelError, match="model 'cnn' needs image data"):
        build_model("cnn", (64,), 10)


def test_the_built_in_models_come_from_the_registry():
    assert model_names()[:4] == ("logreg", "mlp", "mlp-large", "cnn")
    with pytest.raises(ModelError) as info:
        build_model("resnet", (64,), 10)
    assert "\n" not in str(info.value)
    for name in ("logreg", "mlp", "mlp-large", "cnn", "module:function"):
        assert name in str(info.value)


def test_the_command_line_and_configuration_read_the_names_without_importing_torch():
    """Listing and checking model names must not cost a torch import (about 2 s per process)."""
    code = (
        "import sys, privet.cli, privet.task.config as c; c.RunConfig(model='mlp'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
