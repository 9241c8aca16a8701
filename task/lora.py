"""LoRA adapters on a pretrained model (PEFT): what trains, and travels, when a run fine-tunes.

``--lora-rank R`` (with ``--lora-alpha`` and ``--lora-targets``) adds low-rank adapters to the
model that ``--model hf:FOLDER`` builds and freezes the rest of it, except the task head (PEFT's
``SEQ_CLS`` task type keeps the classifier trainable). Privet's task then trains and sends only
the parameters that still require a gradient (`privet.task.task.Task.travelling`): the adapters
and the head are clipped, noised, masked and aggregated; the frozen backbone never travels.

The adapters' initial values are drawn under the run's seed, so every party builds the same
model; the server's copy is what round 1 sends anyway. PEFT is pinned (pyproject) to a version
for which ``tests/client/test_lora_under_opacus.py`` shows that Opacus' per-example gradients of
the adapters are exact (opacus issue 820).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from privet.task.models import ModelError

if TYPE_CHECKING:
    from torch import nn

MAX_LORA_RANK = 1024
"""The largest adapter rank a run may ask for (ranks above 64 are rarely useful)."""


@dataclass(frozen=True)
class LoraSettings:
    """An adapter configuration: rank r, scaling alpha (the update is alpha / r × B A), targets.

    ``targets`` are module names (PEFT's ``target_modules``, e.g. ``("query", "value")``), or
    None for PEFT's default targets of the model's architecture.
    """

    rank: int
    alpha: float
    targets: tuple[str, ...] | None = None

    @classmethod
    def parse_targets(cls, text: str | None) -> tuple[str, ...] | None:
        """``"query,value"`` as ("query", "value"); None or blank as None (PEFT's defaults)."""
        if text is None or not text.strip():
            return None
        names = tuple(name.strip() for name in text.replace(" ", ",").split(",") if name.strip())
        bad = [name for name in names if not name.replace(".", "").replace("_", "").isalnum()]
        if bad:
            raise ModelError(
                f"lora-targets: {bad[0]!r} is not a module name; list names like query,value"
            )
        return names


def add_adapters(model: nn.Module, settings: LoraSettings, seed: int) -> nn.Module:
    """``model`` with LoRA adapters added and everything else but the task head frozen.

    ``model`` must be a pretrained model built by ``--model hf:FOLDER``
    (`privet.task.hf_models.TokenModel`: a classifier, whose head keeps training, or a causal
    language model); the adapters are added to the Hugging Face model inside it, in place, and
    drawn under ``seed``.
    """
    import warnings

    import peft
    import torch

    from privet.task.hf_models import TokenModel

    if not isinstance(model, TokenModel):
        raise ModelError(
            f"LoRA adapters need a pretrained model given as --model hf:FOLDER, not "
            f"{type(model).__name__}; drop --lora-rank to train every parameter"
        )
    config = peft.LoraConfig(
        r=settings.rank,
        # alpha only scales the update (alpha / r), so a float is as good as PEFT's usual int.
        lora_alpha=settings.alpha,
        lora_dropout=0.0,
        target_modules=list(settings.targets) if settings.targets else None,
        task_type=peft.TaskType(model.peft_task_type),
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            # PEFT asks by transformers' old name, which transformers 5 deprecates with a warning.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
            model.model = peft.get_peft_model(model.model, config)
    except ValueError as error:  # PEFT: unknown targets, or no defaults for the architecture
        first = " ".join(str(error).split())[:200]
        raise ModelError(
            f"LoRA adapters cannot be added ({first}); name the layers with --lora-targets"
        ) from None
    finally:
        torch.random.set_rng_state(generator_state)
    return model
