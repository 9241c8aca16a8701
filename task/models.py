"""The models client and server share, all Opacus-compatible (no BatchNorm)."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

MODELS: tuple[str, ...] = ("logreg", "mlp", "mlp-large", "cnn")


class ModelError(ValueError):
    """A model that cannot be built for the given data."""


def _flat_size(feature_shape: tuple[int, ...]) -> int:
    return int(math.prod(feature_shape))


def _logreg(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_size(feature_shape), num_classes))


def _mlp(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    hidden = 256 if _flat_size(feature_shape) > 256 else 64
    return _two_hidden(feature_shape, num_classes, hidden, hidden // 2)


def _mlp_large(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A wide MLP (about 1.07M parameters on MNIST): for larger-update workloads."""
    return _two_hidden(feature_shape, num_classes, 1024, 256)


def _two_hidden(
    feature_shape: tuple[int, ...], num_classes: int, first: int, second: int
) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat_size(feature_shape), first),
        nn.ReLU(),
        nn.Linear(first, second),
        nn.ReLU(),
        nn.Linear(second, num_classes),
    )


def _cnn(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(feature_shape) != 3:
        raise ModelError(
            f"model 'cnn' needs image data (channels, height, width), got feature shape "
            f"{feature_shape}; use --model mlp or --model logreg for tabular data"
        )
    channels, height, width = feature_shape
    if min(height, width) < 8:
        raise ModelError(f"model 'cnn' needs images of at least 8x8 pixels, got {height}x{width}")
    # GroupNorm instead of BatchNorm: per-example gradients stay independent under DP-SGD.
    return nn.Sequential(
        nn.Conv2d(channels, 16, kernel_size=3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.GroupNorm(4, 32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


_BUILDERS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "logreg": _logreg,
    "mlp": _mlp,
    "mlp-large": _mlp_large,
    "cnn": _cnn,
}


def build_model(
    name: str, feature_shape: tuple[int, ...], num_classes: int, seed: int = 0
) -> nn.Module:
    """A freshly initialised model; the same `seed` gives the same initial weights everywhere.

    Each call returns a model of its own (a copy of one built once per process): a simulation
    builds one per client message, and seeding and initialising a model costs more than copying.
    """
    if name not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return copy.deepcopy(_initialised(name, tuple(feature_shape), num_classes, seed))


@functools.lru_cache(maxsize=8)
def _initialised(
    name: str, feature_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    """The seeded model `build_model` copies (never handed out itself)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return _BUILDERS[name](feature_shape, num_classes)
    finally:
        torch.random.set_rng_state(generator_state)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's parameters and buffers as NumPy arrays, in state-dict order."""
    return [value.detach().cpu().numpy().copy() for value in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays produced by `get_weights` (of the same architecture) into `model`."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ModelError(f"expected {len(state)} weight arrays, got {len(weights)}")
    new_state = {}
    for (key, current), array in zip(state.items(), weights, strict=True):
        if tuple(array.shape) != tuple(current.shape):
            raise ModelError(
                f"weight {key!r} has shape {tuple(array.shape)}, expected {tuple(current.shape)}"
            )
        new_state[key] = torch.as_tensor(np.asarray(array), dtype=current.dtype)
    model.load_state_dict(new_state)
