"""The run's results: per-round metrics, per-client privacy, the final model; written atomically.

Per client, results.json records the run's own ε, steps and rounds, the node's lifetime ε and
steps (every run on its ledger), and the ledger summary the node signed off with its last report
(`ledger`: entry count and digest), which `privet budget --verify` uses when the ledger stays on
the node. `privacy.epsilon_max` is the run's own maximum, `privacy.lifetime_epsilon_max` the
largest lifetime ε, and `privacy.run_token` the token the nodes tagged this run's entries with.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privet.privacy import atomic_write_bytes
from privet.server.federation_privacy import ClientPrivacy
from privet.server.link_check import LinkCheck
from privet.server.run_output import (
    MODEL_FILE,
    RESULTS_FILE,
    RESULTS_SCHEMA_VERSION,
    RunFolder,
)
from privet.task.config import RunConfig
from privet.task.datasets import MissingValues
from privet.task.models import set_weights

__all__ = [
    "MODEL_FILE",
    "RESULTS_FILE",
    "RoundCallback",
    "RoundRecord",
    "RunResults",
    "privet_version",
    "progress_line",
    "round_record_from_json",
    "round_warning",
    "strict_json",
    "write_model",
    "write_results",
]


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
    bad_replies: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[int] = field(default_factory=list)
    no_update: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Clients' error replies: {"client": id or None, "stage": ..., "reason": one line}."""
    cost: dict[str, Any] | None = None
    """Bytes each client was sent and sent back, seconds per local DP-SGD step (`RoundOutcome`)."""
    metrics: dict[str, float] | None = None
    """The task's other test metrics of the round's model (a language model's perplexity)."""


def round_warning(record: RoundRecord) -> str | None:
    """One line when no client's update reached the model in this round, else None."""
    if record.no_update is None:
        return None
    return f"round {record.round}: no client update reached the model ({record.no_update})"


RoundCallback = Callable[[RoundRecord], None]


def progress_line(record: RoundRecord, rounds: int) -> str:
    """One line on a finished round: test metrics, privacy so far, who trained, secure status."""
    parts = [
        f"round {record.round}/{rounds}: accuracy {record.accuracy:.4f}, loss {record.loss:.4f}",
        f"max epsilon {record.epsilon_max:.4g} (example level)",
    ]
    if record.epsilon_client_level is not None:
        parts.append(f"client-level epsilon {record.epsilon_client_level:.4g}")
    parts.append(f"{record.clients_trained} of {len(record.sampled)} sampled clients trained")
    if record.declined:
        parts.append(f"{len(record.declined)} declined (budget)")
    if record.failed:
        parts.append(f"{record.failed} failed")
    secure = record.secure_aggregation
    if secure is not None:
        status = str(secure.get("status"))
        dropped = secure.get("dropped") or []
        parts.append(
            f"secure aggregation {status}"
            + (f" ({len(dropped)} dropped)" if status == "ok" and dropped else "")
        )
    if record.no_update is not None:
        parts.append(f"no update: {record.no_update}")
    return "; ".join(parts)


def round_record_from_json(data: dict[str, Any]) -> RoundRecord:
    """Inverse of a results.json round entry (string client ids, "inf" for infinity)."""
    values = dict(data)
    values["epsilon_max"] = float(values["epsilon_max"])
    for key in ("accuracy", "loss", "local_accuracy", "clip_norm", "noised_within_fraction"):
        if isinstance(values.get(key), str):
            values[key] = float(values[key])  # "nan" or "inf", as `_json_number` wrote it
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
    failure_reason: str | None = None
    excluded: dict[int, tuple[int, str]] = field(default_factory=dict)
    epsilon_unknown: dict[int, tuple[int, str]] = field(default_factory=dict)
    missing_values: MissingValues | None = None  # tabular data: counts and the policy's action
    evaluation: str | None = None
    """What the server scores the model on, with its size ("test-file /x.csv (400 examples)")."""
    test_examples: int | None = None
    init_from: dict[str, str] | None = None
    """The warm start's state-dict file and its SHA-256 (run setting init-from), or None."""
    trainable_parameters: int | None = None
    """Parameters that train on the clients (and travel): the task's trainable ones."""
    total_parameters: int | None = None
    """Every parameter of the model, frozen ones included."""
    left_out: dict[int, str] = field(default_factory=dict)
    """Nodes kept out of the run at its start (node id -> why): refused, silent, or absent."""
    data_notes: dict[int, str] = field(default_factory=dict)
    """Client id -> what its own data lacks (fewer than two classes), from discovery."""
    link_check: LinkCheck | None = None
    """Bare exchanges timed before round 1 (run setting link-check), else None."""
    run_token: str | None = None
    """The token the run's nodes tag their ledger entries with (`FederationPrivacy.run_token`)."""

    def rounds_without_update(self) -> list[int]:
        """The rounds in which no client's update reached the model."""
        return [r.round for r in self.rounds if r.no_update is not None or r.clients_trained == 0]

    def model_worse_than_initial(self) -> bool | None:
        """Whether the last round's test accuracy is below the initial model's (None: unknown)."""
        if not self.rounds or self.initial_accuracy is None:
            return None
        return bool(self.rounds[-1].accuracy < self.initial_accuracy)

    def nothing_trained(self) -> str | None:
        """Why this run trained nothing (no round aggregated a client update), else None."""
        if any(r.clients_trained > 0 and r.no_update is None for r in self.rounds):
            return None
        if not self.rounds:
            return "no round ran" + (f" ({self.stop_reason})" if self.stop_reason else "")
        last = self.rounds[-1]
        why = f"; round {last.round}: {last.no_update}" if last.no_update else ""
        return f"no client update reached the model in any of the {len(self.rounds)} rounds{why}"

    def conclude(self, failure: str | None) -> None:
        """Mark the run as ended: failed (one-line reason) if `failure` or nothing trained."""
        nothing = self.nothing_trained()
        if nothing is not None:
            failure = f"nothing trained: {nothing}" + (f"; {failure}" if failure else "")
        self.failure_reason = failure
        self.finished = failure is None

    def warnings(self) -> list[str]:
        """Plain lines on what went wrong without failing the run (console and results.json)."""
        lines = [w for w in (round_warning(r) for r in self.rounds) if w is not None]
        for client, (at, why) in sorted(self.epsilon_unknown.items()):
            lines.append(
                f"client {client}'s epsilon is unknown, counted as infinite: its privacy report "
                f"in round {at} was unusable ({why})"
            )
        for client, (at, why) in sorted(self.excluded.items()):
            lines.append(f"client {client} was excluded from sampling after round {at}: {why}")
        for node, why in sorted(self.left_out.items()):
            lines.append(f"node {node} took no part: {why}")
        lines.extend(note for _, note in sorted(self.data_notes.items()))
        lines.extend(self.failure_lines())
        if self.model_worse_than_initial():
            lines.append(
                f"the final model is worse than the initial one: test accuracy "
                f"{self.rounds[-1].accuracy:.4f} after round {self.rounds[-1].round}, "
                f"{self.initial_accuracy:.4f} before training"
            )
        return lines

    def failure_lines(self) -> list[str]:
        """One line per client whose node replied with an error: its rounds and last reason."""
        failed: dict[object, tuple[list[int], str, str]] = {}
        for record in self.rounds:
            for failure in record.failures:
                rounds, _, _ = failed.setdefault(failure["client"], ([], "", ""))
                if record.round not in rounds:
                    rounds.append(record.round)
                failed[failure["client"]] = (rounds, str(failure["stage"]), str(failure["reason"]))
        lines = []
        for client, (rounds, stage, reason) in failed.items():
            who = "a client of an unknown node" if client is None else f"client {client}"
            where = ", ".join(map(str, rounds))
            lines.append(
                f"{who} failed in round{'s' if len(rounds) > 1 else ''} {where} "
                f"(last at {stage}: {reason})"
            )
        return lines

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
            for key in (
                "accuracy",
                "loss",
                "local_accuracy",
                "clip_norm",
                "noised_within_fraction",
            ):
                if isinstance(item[key], float):
                    item[key] = _json_number(item[key])
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
            "initial": strict_json([self.initial_accuracy, self.initial_loss]),
            "rounds": strict_json(self.rounds_json()),
            "started_at": self.started_at,
            "resumed_after": list(self.resumed_after),
            "run_token": self.run_token,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        """Continue from `checkpoint_state`'s output."""
        self.initial_accuracy, self.initial_loss = (
            None if value is None else float(value) for value in state["initial"]
        )
        self.rounds = [round_record_from_json(item) for item in state["rounds"]]
        self.started_at = float(state["started_at"])
        self.resumed_after = [int(r) for r in state["resumed_after"]]
        token = state.get("run_token")  # absent in a checkpoint of an older Privet
        self.run_token = token if isinstance(token, str) else self.run_token

    def to_json_dict(self) -> dict[str, Any]:
        """The documented results.json layout (see README)."""
        rounds = self.rounds_json()
        clients = []
        for client in self.clients:
            item: dict[str, Any] = dict(client.to_json_dict())
            item["epsilon"] = _json_number(client.epsilon)
            item["lifetime_epsilon"] = _json_number(client.lifetime_epsilon)
            clients.append(item)
        return {
            "schema_version": RESULTS_SCHEMA_VERSION,
            "privet_version": privet_version(),
            "engine": self.engine,
            "finished": self.finished,
            "stop_reason": self.stop_reason,
            "failure_reason": self.failure_reason,
            "warnings": self.warnings(),
            "rounds_without_update": self.rounds_without_update(),
            "model_worse_than_initial": self.model_worse_than_initial(),
            "resumed_after_rounds": self.resumed_after,
            "wall_time_s": round(time.time() - self.started_at, 3),
            "config": self.config.to_json_dict(),
            "missing_values": None
            if self.missing_values is None
            else self.missing_values.to_json(),
            "evaluation": {"test_set": self.evaluation, "examples": self.test_examples},
            "init_from": self.init_from,
            "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters,
            "link_check": None if self.link_check is None else self.link_check.to_json(),
            "privacy": {
                "level": "example",
                "accountant": self.config.accountant,
                "delta": self.config.delta,
                "epsilon_max": _json_number(
                    math.inf
                    if self.epsilon_unknown
                    else max((client.epsilon for client in self.clients), default=0.0)
                ),
                # Every run on the nodes' ledgers (a deployment node keeps its ledger for good).
                "lifetime_epsilon_max": _json_number(
                    math.inf
                    if self.epsilon_unknown
                    else max((client.lifetime_epsilon for client in self.clients), default=0.0)
                ),
                "run_token": self.run_token,
                "epsilon_unknown": [
                    {"id": client, "round": at, "reason": why}
                    for client, (at, why) in sorted(self.epsilon_unknown.items())
                ],
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
            "excluded": [
                {"id": client, "round": at, "reason": why}
                for client, (at, why) in sorted(self.excluded.items())
            ],
            "left_out": [
                {"node": node, "reason": why} for node, why in sorted(self.left_out.items())
            ],
            "client_level": self.client_level,
            "secure_aggregation": self._secure_aggregation_summary(),
            "model": {"file": MODEL_FILE, "architecture": self.config.model},
        }


def strict_json(value: Any) -> Any:
    """`value` with every NaN or infinite float written as a string ("nan", "inf", "-inf").

    results.json is strict JSON (no NaN or Infinity tokens), whatever a client sent.
    """
    if isinstance(value, float):
        return _json_number(value)
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def write_results(output_dir: Path, results: RunResults) -> Path:
    """Write results.json atomically; return its path (`run_output.read_results` reads it)."""
    path = RunFolder(output_dir).results
    text = json.dumps(strict_json(results.to_json_dict()), indent=2, allow_nan=False)
    atomic_write_bytes(path, text.encode())
    return path


def write_model(output_dir: Path, model: nn.Module, weights: list[np.ndarray]) -> Path:
    """Save the final weights as a plain state dict (loadable with `weights_only=True`).

    Written like every file of a run: atomically, fsynced, private to its owner (0600).
    """
    set_weights(model, weights)
    path = RunFolder(output_dir).model
    buffer = io.BytesIO()
    torch.save({key: value.clone() for key, value in model.state_dict().items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path
