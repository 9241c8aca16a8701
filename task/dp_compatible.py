"""Make a model trainable with DP-SGD, the same way on every party, or refuse it with the reason.

Opacus' `ModuleValidator` knows which layers break per-example gradients (BatchNorm mixes the
examples of a batch) and how to replace them (GroupNorm). `build_task_model` applies it when a
model is built, so the server and every client hold the same fixed architecture and the tensors
on the wire agree; a model it cannot fix is a one-line `ModelError` naming Opacus' reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from privet.task.models import ModelError

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)


def make_dp_compatible(model: nn.Module, name: str = "the model") -> nn.Module:
    """Replace layers Opacus cannot train privately (e.g. BatchNorm), saying what was replaced.

    A model Opacus' validator still objects to after its fixes is refused: a ModelError with
    the first objection. The model is put in training mode first (its mode is not its
    architecture, and DP-SGD trains it).
    """
    from opacus.validators import ModuleValidator

    model.train()
    if not ModuleValidator.validate(model, strict=False):
        return model
    before = {path: type(module).__name__ for path, module in model.named_modules()}
    fixed = ModuleValidator.fix(model)
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        reason = " ".join(str(remaining[0]).split())[:300]
        raise ModelError(
            f"model {name} cannot be trained with DP-SGD ({reason}); replace that layer"
        )
    after = {path: type(module).__name__ for path, module in fixed.named_modules()}
    replaced = sorted(
        f"{path}: {before[path]} -> {after[path]}"
        for path in before
        if path in after and before[path] != after[path]
    )
    logger.warning(
        "model %s was changed to make it trainable with DP-SGD: %s",
        name,
        "; ".join(replaced) or "layers replaced",
    )
    return fixed
