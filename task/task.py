"""What a run learns, as one interface: a *task* and its registry.

A task says everything the trainer, the evaluation and the update format must know about the
learning problem (in the spirit of Opacus' focused packages): how its data is loaded and turned
into tensors, how its model is built, its loss (as the criterion Opacus wraps), which parameters
train and which tensors travel between client and server, the optimizer, and its metrics. The
client's DP-SGD round, the server's evaluation and the weights on the wire go through it, so a new
kind of learning (say, a language model fine-tuned with adapters: token-id inputs, a frozen
backbone, a causal-LM loss) is added by adding files, not by editing the trainer.

Tasks are found by name in a registry that :func:`register_task` fills (as
:func:`privet.task.models.register_model` does for models); the run setting ``task`` (flag
``--task``, run-config key ``task``) selects one. ``classification`` (image and tabular
classification with cross-entropy, every parameter training and travelling) is registered below
exactly as a user's task would be.

torch is imported only when a task works on a model or data: the command line and the
configuration read the registry's names without paying for torch.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from privet.task.datasets import ArrayDataset, DatasetOptions, TrainTest, load_dataset
from privet.task.dp_compatible import make_dp_compatible
from privet.task.lora import LoraSettings, add_adapters
from privet.task.models import ModelError, build_model, mark_travelling

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "DEFAULT_TASK",
    "EVAL_BATCH",
    "ClassificationTask",
    "Metrics",
    "Task",
    "TaskError",
    "build_task_model",
    "freeze_for_training",
    "register_task",
    "task_named",
    "task_names",
    "trainable_names",
    "travelling_keys",
]

DEFAULT_TASK = "classification"
"""The task a run learns when its configuration names none (what Privet always did)."""

EVAL_BATCH = 1024
"""Examples per forward pass when a model is evaluated (memory, not numbers, depends on it)."""

_TASK_HINT = "a subclass of privet.task.task.Task that can be made without arguments"


class TaskError(ValueError):
    """A task that cannot be registered or found, or that names tensors its model lacks."""


@dataclass(frozen=True)
class Metrics:
    """How well a model does on some data: mean loss, accuracy, and any task-specific numbers.

    ``loss`` and ``accuracy`` are what every task reports (results.json, the server's and the
    clients' evaluation); ``extra`` holds what only some tasks have (a language model's
    perplexity), by name.
    """

    loss: float
    accuracy: float
    extra: Mapping[str, float] = field(default_factory=dict)


class Task(ABC):
    """What is learned: data, model, loss, what trains, what travels, optimizer and metrics.

    Subclass it, define :meth:`criterion`, :meth:`tensors` and :meth:`evaluate`, override what
    differs from the defaults (the data set and model registries, every parameter training and
    travelling, plain SGD), and register it with :func:`register_task`. A task holds no state of
    a run: one instance serves every client and the server of a process.
    """

    def load_data(self, dataset: str, options: DatasetOptions) -> TrainTest:
        """The train and test arrays of data set `dataset`, loaded with the run's `options`.

        The default asks the data set registry (:func:`privet.task.datasets.load_dataset`), so
        every registered data set works; a task whose data is not arrays of features and labels
        (text to tokenize, say) loads it here. The server evaluates on the test split; each
        client trains on its shard of the train split.
        """
        return load_dataset(
            dataset,
            data_dir=options.data_dir,
            data_file=options.data_file,
            label_column=options.label_column,
            partition_column=options.partition_column,
            seed=options.seed,
            test_fraction=options.test_fraction,
            missing=options.missing,
            schema_file=options.schema_file,
            test_file=options.test_file,
            text_column=options.text_column,
            max_length=options.max_length,
            model_folder=options.model_folder,
            prompt_column=options.prompt_column,
            response_column=options.response_column,
        )

    def build_model(
        self, name: str, feature_shape: tuple[int, ...], num_classes: int, seed: int
    ) -> nn.Module:
        """A freshly initialised model `name`; the same `seed` gives the same weights everywhere.

        The default asks the model registry (:func:`privet.task.models.build_model`). Server and
        clients build the model independently and must agree to the bit: tensors that do not
        travel (a frozen backbone) are never sent, so they are whatever this returns.
        """
        return build_model(name, feature_shape, num_classes, seed)

    @abstractmethod
    def criterion(self) -> nn.Module:
        """A fresh loss module whose mean over a batch is what training minimises.

        It is the ``criterion`` Opacus' ``make_private`` receives: with ghost clipping Opacus
        wraps it and sets its ``reduction`` attribute to "none" to get one loss per example, so
        it must have a ``reduction`` attribute ("mean" when handed over) and honour it, as
        torch's loss modules do.
        """

    def loss(
        self,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        criterion: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The mean loss of one batch: `criterion` (this task's own when None) on its outputs.

        The trainer passes the criterion Opacus handed back: under ghost clipping a wrapper of
        :meth:`criterion` whose result is not a tensor but behaves as one (``backward()`` runs
        both of ghost clipping's passes). A task whose outputs need reshaping before the loss
        (a language model's logits per token, with Opacus' ``shape=``) does it here, for both.
        """
        loss_of = criterion if criterion is not None else self.criterion()
        return loss_of(outputs, targets)

    @abstractmethod
    def tensors(self, data: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """`data` as (inputs, targets) tensors on the CPU, one row per example.

        The dtypes are the task's: float features and long labels for classification, long
        token ids for a language model. The trainer samples batches from these and the
        evaluation runs over them.
        """

    def trainable(self, model: nn.Module) -> list[str]:
        """The names (as in ``model.named_parameters()``) of the parameters that train.

        Every other parameter is frozen (``requires_grad=False``) before Opacus sees the model,
        so it gets no per-example gradient, no noise and no optimizer step, and the clipping
        bound covers exactly these. The default trains what the model itself lets train: every
        parameter that requires a gradient (all of them, for the built-in models).
        """
        return [name for name, parameter in model.named_parameters() if parameter.requires_grad]

    def travelling(self, model: nn.Module) -> list[str]:
        """The ``model.state_dict()`` keys that are sent to clients and aggregated from them.

        The update format is these tensors in state-dict order: the server sends them as the
        global model, a client returns their change, and client-level DP clips and secure
        aggregation masks exactly that list. What does not travel is built identically by
        every party from the run's seed (:meth:`build_model`) and never changes. Every trainable
        parameter must travel (its training would otherwise be lost after each round). The
        default: the whole state dict when every parameter trains; when the model froze some
        (a pretrained backbone under LoRA adapters), only the parameters that train.
        """
        parameters = list(model.named_parameters())
        if all(parameter.requires_grad for _, parameter in parameters):
            return list(model.state_dict())
        return [name for name, parameter in parameters if parameter.requires_grad]

    def optimizer(
        self, parameters: Iterable[torch.nn.Parameter], learning_rate: float
    ) -> torch.optim.Optimizer:
        """The optimizer of the trainable `parameters` that Opacus makes private; plain SGD.

        Opacus clips and noises the gradients before this optimizer's step, so any torch
        optimizer keeps the privacy guarantee; the default is what Privet's numbers assume.
        """
        import torch

        return torch.optim.SGD(parameters, lr=learning_rate)

    @abstractmethod
    def evaluate(self, model: nn.Module, data: ArrayDataset, device: torch.device) -> Metrics:
        """The mean loss and accuracy (and any extra metrics) of `model` on `data`.

        The server calls it on the test split each round and clients on their validation
        slice; with no examples it returns zeros rather than failing.
        """


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

TaskT = TypeVar("TaskT", bound=type[Task])

_REGISTRY: dict[str, Task] = {}


def register_task(name: str) -> Callable[[TaskT], TaskT]:
    """Register a task class under `name` (a decorator); the class is returned unchanged.

    ``@register_task("tiny-lm")`` on ``class TinyLm(Task)`` makes ``--task tiny-lm`` work in
    this process: the CLI lists it, the configuration accepts it, and every client and the
    server learn through it. The class is instantiated here, once, without arguments, so a task
    that forgot a method fails at registration. Registering another class under a taken name is
    an error (it would silently change what a name means); registering the same class again (a
    module imported twice) replaces it.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip() or " " in name:
        raise TaskError(f"task name must be a non-empty string without spaces, got {name!r}")

    def register(task_class: TaskT) -> TaskT:
        if not (inspect.isclass(task_class) and issubclass(task_class, Task)):
            raise TaskError(f"register_task({name!r}) needs {_TASK_HINT}")
        missing = sorted(getattr(task_class, "__abstractmethods__", ()))
        if missing:
            raise TaskError(
                f"task {name!r}: {_qualified(task_class)} does not define "
                f"{', '.join(missing)}; define them (see privet.task.task.Task)"
            )
        current = _REGISTRY.get(name)
        if current is not None and _qualified(type(current)) != _qualified(task_class):
            raise TaskError(
                f"task {name!r} is already registered (by {_qualified(type(current))}); choose "
                "another name"
            )
        try:
            instance = task_class()
        except TypeError as error:
            raise TaskError(
                f"task {name!r}: {_qualified(task_class)}() failed ({error}); make it {_TASK_HINT}"
            ) from None
        _REGISTRY[name] = instance
        return task_class

    return register


def task_names() -> tuple[str, ...]:
    """The registered task names, in registration order (the built-in one first)."""
    return tuple(_REGISTRY)


def task_named(name: str) -> Task:
    """The registered task `name`; a one-line :class:`TaskError` listing the known ones if none."""
    task = _REGISTRY.get(name)
    if task is None:
        raise TaskError(f"unknown task {name!r}; choose one of: {', '.join(task_names())}")
    return task


def _qualified(task_class: type) -> str:
    return f"{task_class.__module__}:{task_class.__qualname__}"


# --------------------------------------------------------------------------------------------
# What the trainer, the evaluation and the weights on the wire ask of a task (checked)
# --------------------------------------------------------------------------------------------


def travelling_keys(task: Task, model: nn.Module) -> tuple[str, ...]:
    """The keys `task` says travel for `model`, checked, in state-dict order (the wire format).

    A key the state dict lacks, or a trainable parameter that does not travel, is a one-line
    TaskError naming it.
    """
    state_keys = list(model.state_dict())
    named = _checked_names(task, "travelling", task.travelling(model), state_keys, "state_dict()")
    if not named:
        raise TaskError(f"task {_name_of(task)!r} sends nothing: travelling() returned no keys")
    untravelled = [name for name in trainable_names(task, model) if name not in named]
    if untravelled:
        raise TaskError(
            f"task {_name_of(task)!r}: parameter {untravelled[0]!r} trains but does not travel, "
            "so its training would be lost every round; add it to travelling() or leave it "
            "out of trainable()"
        )
    return tuple(key for key in state_keys if key in named)


def trainable_names(task: Task, model: nn.Module) -> tuple[str, ...]:
    """The parameter names `task` says train for `model`, checked, in parameter order."""
    parameter_names = [name for name, _ in model.named_parameters()]
    named = _checked_names(
        task, "trainable", task.trainable(model), parameter_names, "named_parameters()"
    )
    if not named:
        raise TaskError(
            f"task {_name_of(task)!r} trains nothing: trainable() returned no parameters"
        )
    return tuple(name for name in parameter_names if name in named)


def freeze_for_training(task: Task, model: nn.Module) -> tuple[str, ...]:
    """Turn off gradients of every parameter of `model` that `task` does not train.

    Called before Opacus sees the model, so frozen parameters get no per-example gradients, no
    noise and no step. Only ever turns gradients off: a parameter the model itself froze stays
    frozen. Returns the names of the parameters that train.
    """
    names = set(trainable_names(task, model))
    for name, parameter in model.named_parameters():
        if name not in names:
            parameter.requires_grad_(False)
    return tuple(name for name, parameter in model.named_parameters() if parameter.requires_grad)


def build_task_model(
    task: Task,
    name: str,
    feature_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    lora: LoraSettings | None = None,
) -> nn.Module:
    """`task`'s model `name` (with LoRA adapters when `lora` is given), marked with what travels.

    :func:`privet.task.models.get_weights` and :func:`~privet.task.models.set_weights` then
    move exactly those tensors of it, in state-dict order: the update format of the run.
    """
    import torch

    model = task.build_model(name, tuple(feature_shape), num_classes, seed)
    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"task {_name_of(task)!r} built {type(model).__name__}, not a torch.nn.Module; make "
            f"{_qualified(type(task))}.build_model return the model"
        )
    # Every party fixes the model the same way (BatchNorm -> GroupNorm), so the tensors agree.
    model = make_dp_compatible(model, name)
    if lora is not None:
        model = add_adapters(model, lora, seed)
    mark_travelling(model, travelling_keys(task, model))
    return model


def _checked_names(
    task: Task, method: str, names: Iterable[str], known: list[str], source: str
) -> set[str]:
    """The names a task's `method` returned, refused in one line if `model.<source>` lacks one."""
    named = set(names)
    unknown = sorted(named - set(known))
    if unknown:
        raise TaskError(
            f"task {_name_of(task)!r}: {method}() names {unknown[0]!r}, which the model does not "
            f"have; return names from model.{source} (e.g. {', '.join(known[:3])})"
        )
    return named


def _name_of(task: Task) -> str:
    for name, registered in _REGISTRY.items():
        if registered is task:
            return name
    return type(task).__name__


# --------------------------------------------------------------------------------------------
# The built-in task, registered like anyone else's
# --------------------------------------------------------------------------------------------


@register_task(DEFAULT_TASK)
class ClassificationTask(Task):
    """Image and tabular classification: float features, integer labels, cross-entropy.

    Every parameter trains and the whole state dict travels; the metrics are the mean
    cross-entropy and the fraction of examples whose largest logit is the label.
    """

    def criterion(self) -> nn.Module:
        """Cross-entropy of the logits against the labels, averaged over the batch."""
        from torch import nn

        return nn.CrossEntropyLoss()

    def tensors(self, data: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 features (n, *feature_shape) and int64 labels (n,)."""
        import torch

        return (
            torch.tensor(data.features, dtype=torch.float32),
            torch.tensor(data.labels, dtype=torch.long),
        )

    def evaluate(self, model: nn.Module, data: ArrayDataset, device: torch.device) -> Metrics:
        """Mean cross-entropy and accuracy over `data`, in batches of :data:`EVAL_BATCH`."""
        import torch
        from torch import nn

        if len(data) == 0:
            return Metrics(0.0, 0.0)
        model = model.to(device)
        model.eval()
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        total_loss, correct = 0.0, 0
        features, labels = self.tensors(data)
        with torch.no_grad():
            for start in range(0, len(data), EVAL_BATCH):
                x = features[start : start + EVAL_BATCH].to(device)
                y = labels[start : start + EVAL_BATCH].to(device)
                logits = model(x)
                total_loss += float(loss_fn(logits, y))
                correct += int((logits.argmax(dim=1) == y).sum())
        return Metrics(total_loss / len(data), correct / len(data))


# The other built-in task lives in a module of its own (it needs this one's names).
from privet.task import causal_lm  # noqa: E402, F401  (registers "causal-lm")
