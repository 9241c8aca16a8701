"""The models client and server share, all Opacus-compatible (no BatchNorm), and their registry.

A model is built by a *builder*, ``(feature_shape, num_classes) -> torch.nn.Module``. Builders are
found by name in a registry that :func:`register_model` fills (as Opacus' ``register_grad_sampler``
does for layers): the built-in ``logreg``, ``mlp``, ``mlp-large`` and ``cnn`` are registered
below exactly as a user's would be. A run may also name a builder of its own as
``module:function`` (``--model mypkg.nets:build``); it is imported with :mod:`importlib` when the
run configuration is validated, so a bad name fails before any work, in one line.

torch is imported only when a model is built: the command line and the configuration read the
registry's names without paying for torch.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

ModelBuilder = Callable[[tuple[int, ...], int], "nn.Module"]
"""Builds a freshly initialised model for examples of ``feature_shape`` and ``num_classes``."""

BuilderT = TypeVar("BuilderT", bound=Callable[..., object])

_REGISTRY: dict[str, ModelBuilder] = {}
_OWN_BUILDER_HINT = "a function (feature_shape, num_classes) -> torch.nn.Module"


class ModelError(ValueError):
    """A model that cannot be built for the given data."""


def register_model(name: str) -> Callable[[BuilderT], BuilderT]:
    """Register a model builder under `name` (a decorator); the builder is returned unchanged.

    ``@register_model("tiny")`` on ``def tiny(feature_shape, num_classes) -> nn.Module`` makes
    ``--model tiny`` work in this process: the CLI lists it, the configuration accepts it and
    every client and the server build it. Registering another function under a taken name is an
    error (it would silently change what a name means); registering the same function again
    (a module imported twice) replaces it.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ModelError(f"model name must be a non-empty string without spaces, got {name!r}")
    if ":" in name:
        raise ModelError(
            f"model name {name!r} has a ':', which means module:function; register it without one"
        )

    def register(builder: BuilderT) -> BuilderT:
        if not callable(builder):
            raise ModelError(f"register_model({name!r}) needs {_OWN_BUILDER_HINT}")
        _check_signature(name, builder)
        current = _REGISTRY.get(name)
        if current is not None and _qualified(current) != _qualified(builder):
            raise ModelError(
                f"model {name!r} is already registered (by {_qualified(current)}); choose "
                "another name"
            )
        # The signature was checked above: it builds from (feature_shape, num_classes).
        _REGISTRY[name] = cast(ModelBuilder, builder)
        if current is not None:
            _initialised.cache_clear()  # a re-registered name must not build the old model
        return builder

    return register


def model_names() -> tuple[str, ...]:
    """The registered model names, in registration order (the built-in ones first)."""
    return tuple(_REGISTRY)


ModelScheme = Callable[[str], ModelBuilder]
"""Turns what follows ``scheme:`` in a model name (a folder, say) into a builder, or refuses."""

_SCHEMES: dict[str, ModelScheme] = {}


def register_model_scheme(scheme: str) -> Callable[[ModelScheme], ModelScheme]:
    """Register a prefix of model names (a decorator): ``--model SCHEME:REST`` asks it for REST.

    ``hf`` is registered below: ``--model hf:FOLDER`` builds the Hugging Face classifier saved
    in FOLDER. A scheme takes precedence over a ``module:function`` of the same first part, so
    a scheme is a short lowercase word no Python package is expected to be called.
    """
    if not scheme.isidentifier() or scheme != scheme.lower():
        raise ModelError(f"model scheme must be a lowercase identifier, got {scheme!r}")

    def register(factory: ModelScheme) -> ModelScheme:
        _SCHEMES[scheme] = factory
        return factory

    return register


def scheme_of(name: str) -> tuple[str, str] | None:
    """(scheme, rest) when `name` starts with a registered scheme (``hf:FOLDER``), else None."""
    scheme, colon, rest = name.partition(":")
    return (scheme, rest) if colon and scheme in _SCHEMES else None


def model_folder(name: str) -> str | None:
    """The local folder an ``hf:FOLDER`` model name names (its tokenizer reads text), or None."""
    parts = scheme_of(name)
    return parts[1] if parts is not None and parts[0] == HF_SCHEME else None


def is_builder_path(name: str) -> bool:
    """Whether `name` names a user's builder as ``module:function`` rather than a registered one."""
    return ":" in name and scheme_of(name) is None


def resolve_builder(name: str) -> ModelBuilder:
    """The builder `name` stands for: a registered name, or a ``module:function`` to import.

    Raises a one-line :class:`ModelError` naming the problem and what to do: an unknown name
    (listing the known ones), a module that cannot be imported, a missing or non-callable
    function.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    parts = scheme_of(name)
    if parts is not None:
        return _SCHEMES[parts[0]](parts[1])
    if not is_builder_path(name):
        raise ModelError(
            f"unknown model {name!r}; choose one of: {', '.join(model_names())}, or name your "
            "own builder as module:function"
        )
    module_name, _, function_name = name.partition(":")
    if not module_name or not function_name.isidentifier():
        raise ModelError(
            f"model {name!r} is not module:function; write it like mypkg.nets:build "
            f"({_OWN_BUILDER_HINT})"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module: any failure to import it is theirs to fix
        raise ModelError(
            f"model {name!r}: cannot import module {module_name!r} ({_one_line(error)}); make it "
            "importable (install it, or add its folder to PYTHONPATH) on every node"
        ) from None
    builder = getattr(module, function_name, None)
    if builder is None:
        raise ModelError(
            f"model {name!r}: module {module_name!r} has no function {function_name!r}; check "
            "the name after the ':'"
        )
    if not callable(builder):
        raise ModelError(
            f"model {name!r}: {function_name!r} in {module_name!r} is a "
            f"{type(builder).__name__}, not a function; name {_OWN_BUILDER_HINT}"
        )
    _check_signature(name, builder)
    return builder


def _check_signature(name: str, builder: Callable[..., object]) -> None:
    """A builder must take (feature_shape, num_classes); say so before it is ever called."""
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # some C functions have none: their call will tell
        return
    try:
        signature.bind((1,), 2)
    except TypeError:
        raise ModelError(
            f"model {name!r}: {_qualified(builder)}{signature} cannot be called as "
            f"builder(feature_shape, num_classes); make it {_OWN_BUILDER_HINT}"
        ) from None


def _qualified(function: Callable[..., object]) -> str:
    module = getattr(function, "__module__", "?")
    return f"{module}:{getattr(function, '__qualname__', repr(function))}"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --------------------------------------------------------------------------------------------
# The built-in models, registered like anyone else's
# --------------------------------------------------------------------------------------------


def _flat_size(feature_shape: tuple[int, ...]) -> int:
    return int(math.prod(feature_shape))


@register_model("logreg")
def _logreg(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_size(feature_shape), num_classes))


@register_model("mlp")
def _mlp(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    hidden = 256 if _flat_size(feature_shape) > 256 else 64
    return _two_hidden(feature_shape, num_classes, hidden, hidden // 2)


@register_model("mlp-large")
def _mlp_large(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A wide MLP (about 1.07M parameters on MNIST): for larger-update workloads."""
    return _two_hidden(feature_shape, num_classes, 1024, 256)


def _two_hidden(
    feature_shape: tuple[int, ...], num_classes: int, first: int, second: int
) -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat_size(feature_shape), first),
        nn.ReLU(),
        nn.Linear(first, second),
        nn.ReLU(),
        nn.Linear(second, num_classes),
    )


@register_model("cnn")
def _cnn(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from torch import nn

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


# --------------------------------------------------------------------------------------------
# Pretrained models from a local Hugging Face folder: --model hf:FOLDER
# --------------------------------------------------------------------------------------------

HF_SCHEME = "hf"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
"""Any one of these in a model folder holds the weights (``save_pretrained``'s names)."""


def check_model_folder(folder: Path) -> None:
    """A one-line ModelError unless ``folder`` holds a saved model: config.json and weights.

    Cheap (no torch): the configuration checks ``--model hf:FOLDER`` with it before any work.
    """
    if not folder.is_dir():
        raise ModelError(
            f"model folder {folder} does not exist; give a local folder written by "
            "save_pretrained (models are never downloaded)"
        )
    if not (folder / "config.json").is_file():
        raise ModelError(f"model folder {folder} has no config.json; save the model there")
    if not any((folder / name).is_file() for name in HF_WEIGHT_FILES):
        raise ModelError(
            f"model folder {folder} has no weights ({' or '.join(HF_WEIGHT_FILES[:2])}); save "
            "the model there with save_pretrained"
        )


@register_model_scheme(HF_SCHEME)
def _hf(folder_text: str) -> ModelBuilder:
    """The builder of the sequence classifier saved in a local folder (text data)."""
    if not folder_text.strip():
        raise ModelError("model hf: names no folder; write --model hf:/path/to/model-folder")
    folder = Path(folder_text).expanduser()
    check_model_folder(folder)

    def pretrained(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(feature_shape) != 2 or feature_shape[0] != 2:
            raise ModelError(
                f"model hf:{folder_text} classifies texts, and the data has examples of shape "
                f"{tuple(feature_shape)}; use --dataset text"
            )
        from privet.task.hf_models import load_sequence_classifier

        return load_sequence_classifier(folder, num_classes, max_length=feature_shape[1])

    return pretrained


MODELS: tuple[str, ...] = model_names()
"""The built-in model names (what this module registers); :func:`model_names` has them all."""


# --------------------------------------------------------------------------------------------
# Building and moving weights
# --------------------------------------------------------------------------------------------


def build_model(
    name: str, feature_shape: tuple[int, ...], num_classes: int, seed: int = 0
) -> nn.Module:
    """A freshly initialised model; the same `seed` gives the same initial weights everywhere.

    `name` is a registered model or a ``module:function`` builder (:func:`resolve_builder`).
    Each call returns a model of its own (a copy of one built once per process): a simulation
    builds one per client message, and seeding and initialising a model costs more than copying.
    """
    resolve_builder(name)  # an unknown name or unimportable builder: one line, before torch
    return copy.deepcopy(_initialised(name, tuple(feature_shape), num_classes, seed))


@functools.lru_cache(maxsize=8)
def _initialised(
    name: str, feature_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    """The seeded model `build_model` copies (never handed out itself)."""
    import torch

    builder = resolve_builder(name)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = builder(feature_shape, num_classes)
    finally:
        torch.random.set_rng_state(generator_state)
    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module; make "
            f"{_qualified(builder)} return the model it builds"
        )
    return model


TRAVELLING_ATTRIBUTE = "privet_travelling"
"""Where :func:`mark_travelling` records, on a model, the state-dict keys that travel."""


def mark_travelling(model: nn.Module, keys: Sequence[str]) -> None:
    """Record on `model` which state-dict keys travel (its task's update format).

    :func:`get_weights` and :func:`set_weights` then move only those tensors of it, so code that
    holds just the model (the server writing model.pt) moves the right ones. The mark is a plain
    attribute, so it survives ``copy.deepcopy``; ``privet.task.task.build_task_model`` sets it.
    """
    state = model.state_dict()
    unknown = [key for key in keys if key not in state]
    if unknown:
        raise ModelError(f"cannot mark {unknown[0]!r} as travelling: the model has no such key")
    setattr(model, TRAVELLING_ATTRIBUTE, tuple(key for key in state if key in keys))


def weight_keys(model: nn.Module) -> tuple[str, ...]:
    """The state-dict keys whose tensors are the model's weights on the wire, in order.

    Those marked by :func:`mark_travelling`, else the whole state dict (a model built without a
    task: every tensor travels, as for classification).
    """
    marked = getattr(model, TRAVELLING_ATTRIBUTE, None)
    if marked is not None:
        return tuple(marked)
    return tuple(model.state_dict())


def frozen_digest(model: nn.Module) -> str | None:
    """SHA-256 of the model's tensors that do not travel (a frozen backbone), or None if all do.

    Every party builds those tensors itself (from its model folder) and they are never sent, so
    parties whose digests differ would train adapters for different models. The digest covers
    each tensor's name, dtype, shape and bytes, in name order.
    """
    import hashlib

    import torch

    travelling = set(weight_keys(model))
    state = model.state_dict()
    frozen = sorted(key for key in state if key not in travelling)
    if not frozen:
        return None
    digest = hashlib.sha256()
    for key in frozen:
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Its bytes as stored (a uint8 view works for every dtype, bfloat16 and bool included).
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def get_weights(model: nn.Module, keys: Sequence[str] | None = None) -> list[np.ndarray]:
    """The tensors of `keys` (default: :func:`weight_keys`) as NumPy arrays, in that order."""
    state = model.state_dict()
    chosen = weight_keys(model) if keys is None else tuple(keys)
    missing = [key for key in chosen if key not in state]
    if missing:
        raise ModelError(
            f"the model has no tensor {missing[0]!r}; build it with the run's model and task"
        )
    return [state[key].detach().cpu().numpy().copy() for key in chosen]


def set_weights(
    model: nn.Module, weights: list[np.ndarray], keys: Sequence[str] | None = None
) -> None:
    """Load arrays produced by `get_weights` (same architecture, same `keys`) into `model`.

    Only the tensors of `keys` (default: :func:`weight_keys`) change; the rest of the model (a
    frozen backbone that does not travel) is left as it is.
    """
    import torch

    state = model.state_dict()
    chosen = weight_keys(model) if keys is None else tuple(keys)
    if len(weights) != len(chosen):
        raise ModelError(f"expected {len(chosen)} weight arrays, got {len(weights)}")
    new_state = dict(state)
    for key, array in zip(chosen, weights, strict=True):
        if key not in state:
            raise ModelError(
                f"the model has no tensor {key!r}; build it with the run's model and task"
            )
        current = state[key]
        if tuple(array.shape) != tuple(current.shape):
            raise ModelError(
                f"weight {key!r} has shape {tuple(array.shape)}, expected {tuple(current.shape)}"
            )
        new_state[key] = torch.as_tensor(np.asarray(array), dtype=current.dtype)
    model.load_state_dict(new_state)


# --------------------------------------------------------------------------------------------
# A warm start: weights trained elsewhere (run setting init-from)

STATE_FILE_IN_FOLDER = "model.pt"
"""The state-dict file `load_state_file` takes from a folder (the name a Privet run writes)."""


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (a ``torch.save`` file, or a folder holding ``model.pt``).

    Read with ``weights_only=True``: tensors and plain containers only, never arbitrary pickled
    objects, so a file from elsewhere cannot run code here. Any problem is a one-line
    `ModelError` naming the file and what to do.
    """
    import torch

    file = path / STATE_FILE_IN_FOLDER if path.is_dir() else path
    if not file.is_file():
        where = f"folder {path} has no {STATE_FILE_IN_FOLDER}" if path.is_dir() else f"{path}"
        raise ModelError(
            f"init-from: {where} does not exist; give a state-dict file or a run's output folder"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ModelError(
            f"init-from: {file} is not a state dict that loads with weights_only=True "
            f"({type(error).__name__}); save the model's state_dict() with torch.save"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ModelError(
            f"init-from: {file} holds no state dict (names to tensors); save the model's "
            "state_dict() with torch.save"
        )
    return dict(state)


def load_initial_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Put ``state`` into ``model``: every tensor, names and shapes exactly the model's.

    A missing or extra name, or a shape that differs, is a one-line `ModelError` naming the
    first one and how many differ (a file for another model, or another data set's model).
    """
    import torch

    own = model.state_dict()
    missing = [key for key in own if key not in state]
    extra = [key for key in state if key not in own]
    for keys, what in ((missing, "lacks"), (extra, "has a tensor the model has not:")):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise ModelError(
                f"init-from: {source} {what} {keys[0]!r}{more}; it is not a state dict of this "
                "run's model (check --model and the data set)"
            )
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelError(
                f"init-from: {source} gives {key!r} the shape {tuple(state[key].shape)}, the "
                f"model {tuple(tensor.shape)}; check --model and the data set"
            )
        if not torch.isfinite(state[key]).all() and state[key].is_floating_point():
            raise ModelError(f"init-from: {source} has non-finite values in {key!r}")
    with torch.no_grad():
        model.load_state_dict({key: state[key].to(own[key].dtype) for key in own})
