"""The run's results: per-round metrics, per-client privacy, the final model; written atomically."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privacy import atomic_write_bytes
from server.federation_privacy import ClientPrivacy
from task.config import RunConfig
from task.models import set_weights

RESULTS_FILE = "results.json"
MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class RoundRecord:
    """One finished round: server-side test metrics and example-level ε so far."""

    round: int
    accuracy: float
    loss: float
    epsilon_max: float
    epsilon_by_client: dict[int, float]
    clients_trained: int
    local_accuracy: float | None = None
    sampled: list[int] = field(default_factory=list)
    declined: list[int] = field(default_factory=list)
    failed: int = 0
    rejected: list[int] = field(default_factory=list)
    epsilon_client_level: float | None = None
    clip_norm: float | None = None
    noised_within_fraction: float | None = None
    secure_aggregation: dict[str, Any] | None = None


RoundCallback = Callable[[RoundRecord], None]


def round_record_from_json(data: dict[str, Any]) -> RoundRecord:
    """Inverse of a results.json round entry (string client ids, "inf" for infinity)."""
    values = dict(data)
    values["epsilon_max"] = float(values["epsilon_max"])
    if values.get("epsilon_client_level") is not None:
        values["epsilon_client_level"] = float(values["epsilon_client_level"])
    values["epsilon_by_client"] = {
        int(key): float(value) for key, value in values["epsilon_by_client"].items()
    }
    return RoundRecord(**values)


def privet_version() -> str:
    """The installed distribution's version (the server does not import the CLI package)."""
    try:
        return metadata.version("privet")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _json_number(value: float) -> float | str:
    """JSON has no infinity: write it as the string "inf" rather than an invalid token."""
    return value if math.isfinite(value) else str(value)


@dataclass
class RunResults:
    """Everything results.json holds, collected while the run goes on."""

    config: RunConfig
    engine: str
    initial_accuracy: float | None = None
    initial_loss: float | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    clients: list[ClientPrivacy] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished: bool = False
    stop_reason: str | None = None
    declines: dict[int, int] = field(default_factory=dict)
    client_level: dict[str, Any] | None = None
    resumed_after: list[int] = field(default_factory=list)

    def _secure_aggregation_summary(self) -> dict[str, Any] | None:
        """What secure aggregation guaranteed in this run, or None when it was off."""
        config = self.config
        if not config.secure_aggregation:
            return None
        outcomes = [r.secure_aggregation or {} for r in self.rounds]
        return {
            "protocol": "SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020)",
            "threshold": config.secagg_threshold,
            "degree": config.secagg_degree,
            "levels": config.secagg_levels,
            "update_clip_norm": config.update_clip_norm,
            "rounds_ok": sum(1 for o in outcomes if o.get("status") == "ok"),
            "rounds_failed": [
                r.round
                for r in self.rounds
                if (r.secure_aggregation or {}).get("status") == "failed"
            ],
            "min_survivors": min(
                (len(o["survivors"]) for o in outcomes if o.get("status") == "ok"), default=None
            ),
            "randomness": "keys, seeds and shares from os.urandom; masks from ChaCha20",
        }

    def rounds_json(self) -> list[dict[str, Any]]:
        """The rounds as results.json writes them."""
        rounds = []
        for record in self.rounds:
            item = asdict(record)
            item["epsilon_max"] = _json_number(record.epsilon_max)
            if record.epsilon_client_level is not None:
                item["epsilon_client_level"] = _json_number(record.epsilon_client_level)
            item["epsilon_by_client"] = {
                str(key): _json_number(value) for key, value in record.epsilon_by_client.items()
            }
            rounds.append(item)
        return rounds

    def checkpoint_state(self) -> dict[str, Any]:
        """What results.json needs from before a restart."""
        return {
            "initial": [self.initial_accuracy, self.initial_loss],
            "rounds": self.rounds_json(),
            "started_at": self.started_at,
            "resumed_after": list(self.resumed_after),
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        """Continue from `checkpoint_state`'s output."""
        self.initial_accuracy, self.initial_loss = state["initial"]
        self.rounds = [round_record_from_json(item) for item in state["rounds"]]
        self.started_at = float(state["started_at"])
        self.resumed_after = [int(r) for r in state["resumed_after"]]

    def to_json_dict(self) -> dict[str, Any]:
        """The documented results.json layout (see README)."""
        rounds = self.rounds_json()
        clients = []
        for client in self.clients:
            item = client.to_json_dict()
            item["epsilon"] = _json_number(client.epsilon)
            clients.append(item)
        return {
            "privet_version": privet_version(),
            "engine": self.engine,
            "finished": self.finished,
            "stop_reason": self.stop_reason,
            "resumed_after_rounds": self.resumed_after,
            "wall_time_s": round(time.time() - self.started_at, 3),
            "config": self.config.to_json_dict(),
            "privacy": {
                "level": "example",
                "accountant": self.config.accountant,
                "delta": self.config.delta,
                "epsilon_max": _json_number(
                    max((client.epsilon for client in self.clients), default=0.0)
                ),
                "noise_source": (
                    f"generators seeded from seed={self.config.seed} (reproducible simulation: "
                    "the guarantee holds only against someone who does not know the seed; "
                    "--no-reproducible, the deployment default, gives the real one)"
                    if self.config.reproducible
                    else "generators seeded from os.urandom for every round (torch and numpy "
                    "generators; not a CSPRNG: Opacus' secure_mode needs torchcsprng)"
                ),
            },
            "initial": {"accuracy": self.initial_accuracy, "loss": self.initial_loss},
            "rounds": rounds,
            "clients": clients,
            "declined": [
                {"id": client, "round": at} for client, at in sorted(self.declines.items())
            ],
            "client_level": self.client_level,
            "secure_aggregation": self._secure_aggregation_summary(),
            "model": {"file": MODEL_FILE, "architecture": self.config.model},
        }


def write_results(output_dir: Path, results: RunResults) -> Path:
    """Write results.json atomically; return its path."""
    path = output_dir / RESULTS_FILE
    text = json.dumps(results.to_json_dict(), indent=2, allow_nan=False)
    atomic_write_bytes(path, text.encode())
    return path


def write_model(output_dir: Path, model: nn.Module, weights: list[np.ndarray]) -> Path:
    """Save the final weights as a plain state dict (loadable with `weights_only=True`)."""
    set_weights(model, weights)
    path = output_dir / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save({key: value.clone() for key, value in model.state_dict().items()}, temporary)
    os.replace(temporary, path)
    return path
