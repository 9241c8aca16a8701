"""Your own model (``--model module:function``): Opacus' validator fixes it for every party alike,
or the run refuses it with Opacus' reason (issue 15, item 3)."""

from __future__ import annotations

import logging

import pytest
import torch
from opacus.validators import ModuleValidator, register_module_validator
from opacus.validators.errors import UnsupportedModuleError
from torch import nn

from privet.simulations.inprocess_engine import run_in_process
from privet.task.config import RunConfig
from privet.task.models import ModelError
from privet.task.task import build_task_model, task_named


def with_batchnorm(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A user's builder whose BatchNorm mixes the examples of a batch (not DP as it stands)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, num_classes)
    )


class Mixing(nn.Module):
    """A layer some library marks as unfit for per-example gradients, with no fix."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


def with_mixing(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(Mixing())


def test_a_batchnorm_model_is_fixed_alike_on_server_and_clients_and_trains(tmp_path, caplog):
    name = f"{__name__}:with_batchnorm"
    with caplog.at_level(logging.WARNING):
        model = build_task_model(task_named("classification"), name, (1, 8, 8), 10, 0)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert "BatchNorm1d -> GroupNorm" in caplog.text
    results = run_in_process(
        RunConfig(model=name, clients=3, rounds=1, local_epochs=1, output=str(tmp_path / "run"))
    )
    assert results.finished and results.rounds[0].clients_trained == 3


def test_a_model_opacus_cannot_fix_is_refused_with_its_reason():
    @register_module_validator(Mixing)
    def refuse(module: nn.Module) -> list[UnsupportedModuleError]:
        return [UnsupportedModuleError("Mixing layers share statistics across the batch")]

    try:
        with pytest.raises(ModelError, match="cannot be trained with DP-SGD.*share statistics"):
            build_task_model(task_named("classification"), f"{__name__}:with_mixing", (64,), 10, 0)
    finally:
        del ModuleValidator.VALIDATORS[Mixing]
