"""The server's checkpoint: everything needed to continue a run after a crash, written atomically.

After every round the server writes the global model (`checkpoint-model-<round>.npz`, plain
arrays, loaded with ``allow_pickle=False``) and then `checkpoint.json`, which names that file with
its SHA-256, the last finished round, the run configuration, the strategy's state (declines, the
random generators of sampling and noise, the clip norm) and the results so far. The JSON is
replaced atomically and only after the weights are on disk, so a crash at any moment leaves a
consistent checkpoint of the last finished round. The privacy ledgers are not copied: they are
written ahead of every release and reloaded from `ledgers/` on resume, so no budget is ever reset
by a restart.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privacy import atomic_write_bytes, atomic_write_text
from task.config import ConfigError, RunConfig

CHECKPOINT_FILE = "checkpoint.json"
SCHEMA_VERSION = 1
IGNORED_ON_RESUME = ("resume",)
"""Configuration keys that may differ between the checkpointed run and its resumption."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, corrupt, or from a different run configuration."""


@dataclass(frozen=True)
class ServerCheckpoint:
    """The state of a run after its last finished round."""

    round: int
    config: dict[str, Any]
    weights: list[np.ndarray]
    strategy: dict[str, Any]
    results: dict[str, Any]


def _weights_name(server_round: int) -> str:
    return f"checkpoint-model-{server_round}.npz"


def save_checkpoint(output_dir: Path, checkpoint: ServerCheckpoint) -> Path:
    """Write the weights, then the JSON that points to them; remove older weight files."""
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(w) for w in checkpoint.weights])
    payload = buffer.getvalue()
    name = _weights_name(checkpoint.round)
    atomic_write_bytes(output_dir / name, payload)
    document = {
        "schema_version": SCHEMA_VERSION,
        "round": checkpoint.round,
        "weights": {"file": name, "sha256": hashlib.sha256(payload).hexdigest()},
        "config": checkpoint.config,
        "strategy": checkpoint.strategy,
        "results": checkpoint.results,
    }
    path = output_dir / CHECKPOINT_FILE
    atomic_write_text(path, json.dumps(document, indent=1, allow_nan=False))
    for old in output_dir.glob("checkpoint-model-*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(output_dir: Path) -> ServerCheckpoint:
    """Read and verify the checkpoint in `output_dir`; every problem is a one-line error."""
    path = output_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist: nothing to resume (a run writes it after its first round)"
        )
    try:
        document = json.loads(path.read_text())
        if document["schema_version"] != SCHEMA_VERSION:
            raise CheckpointError(
                f"{path} has schema version {document['schema_version']}, this Privet reads "
                f"{SCHEMA_VERSION}"
            )
        server_round = int(document["round"])
        weights_file = output_dir / str(document["weights"]["file"])
        expected = str(document["weights"]["sha256"])
        config, strategy, results = document["config"], document["strategy"], document["results"]
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not a valid Privet checkpoint ({error})") from None
    try:
        payload = weights_file.read_bytes()
    except OSError:
        raise CheckpointError(f"{weights_file} is missing; the checkpoint cannot be used") from None
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CheckpointError(f"{weights_file} does not match its checksum in {path}")
    with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
        weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    return ServerCheckpoint(server_round, config, weights, strategy, results)


def check_same_run(checkpoint: ServerCheckpoint, config: RunConfig) -> None:
    """Refuse to resume with a configuration other than the checkpointed run's."""
    now = config.to_json_dict()
    for key, value in checkpoint.config.items():
        if key in IGNORED_ON_RESUME:
            continue
        if now.get(key) != value:
            raise CheckpointError(
                f"the checkpoint was made with {key}={value!r}, this run has {key}="
                f"{now.get(key)!r}; resume with the run's own configuration"
            )


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy generator's state as JSON-ready data."""
    return dict(rng.bit_generator.state)


def restore_generator(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Put a generator back in a saved state (the same bit generator kind)."""
    rng.bit_generator.state = state
