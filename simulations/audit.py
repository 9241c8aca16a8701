"""`privet audit`: a simulation with canaries, and an ε lower bound beside the accounted ε.

The run is a normal in-process simulation of the user's configuration (the real ClientApp,
ServerApp logic, Opacus and accountants); the canaries (`simulations.audit_canaries`) are the only
addition, and exist only here. What comes out, in ``OUTPUT/audit.json``:

- ``epsilon_lower_bound``: ε ≥ this holds with probability ``confidence`` whatever the model and
  data (Steinke, Nasr and Jagielski's one-run audit, `privacy.audit_bounds`);
- ``epsilon_accounted``: what the run's accountant printed for the same unit (an example of the
  canary clients, or one client);
- ``passed``: the bound does not exceed the accounted ε. A bound above it proves the mechanism
  or the accounting wrong, and the command exits non-zero.

With ``runs`` > 1 each run is audited alone (the reported bound is the largest, each at a
Bonferroni share of the significance) and a Clopper–Pearson bound over the runs' first canaries
(Jagielski et al. 2020) is added.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from privet.privacy.audit_bounds import (
    OneRunBound,
    clopper_pearson_audit,
    gaussian_estimate,
    one_run_audit,
)
from privet.privacy.storage import atomic_write_bytes
from privet.server.results import RoundCallback, RunResults
from privet.server.run_output import AUDIT_FILE
from privet.simulations.audit_canaries import (
    CanaryClients,
    CanaryError,
    GradientCanaries,
    UpdateWatcher,
    split_canaries,
)
from privet.simulations.plan import SimulationPlan
from privet.task.config import ConfigError, RunConfig
from privet.task.messages import ARRAYS_RECORD

AUDIT_LEVELS: tuple[str, ...] = ("example", "client")
AUDIT_VIEWS: tuple[str, ...] = ("white-box", "server")
"""What the example-level auditor sees: every DP-SGD step (white box), or each round's update."""
DEFAULT_EXAMPLE_CANARIES = 3000
DEFAULT_CLIENT_CANARIES = 40
CLIPPED_FRACTION = 1.0 - 1e-6
"""Canary client updates are scaled to just inside the clip norm (float32 rounding)."""


@dataclass(frozen=True)
class AuditSettings:
    """What `privet audit` adds to a run: the level, the canaries, the confidence, the runs."""

    level: str = "example"
    canaries: int | None = None
    canary_clients: int | None = None
    confidence: float = 0.95
    runs: int = 1
    view: str = "white-box"

    def __post_init__(self) -> None:
        if self.level not in AUDIT_LEVELS:
            raise ConfigError(
                f"--level must be one of {', '.join(AUDIT_LEVELS)}, got {self.level!r}"
            )
        if self.view not in AUDIT_VIEWS:
            raise ConfigError(f"--view must be one of {', '.join(AUDIT_VIEWS)}, got {self.view!r}")
        if self.view == "server" and self.level != "example":
            raise ConfigError(
                "--view server is for the example level; the client level scores the final model"
            )
        if self.canaries is not None and self.canaries < 2:
            raise ConfigError(f"--canaries must be at least 2, got {self.canaries}")
        if self.canary_clients is not None and self.canary_clients < 1:
            raise ConfigError(f"--canary-clients must be at least 1, got {self.canary_clients}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(
                f"--confidence must be at least 0.5 and below 1, got {self.confidence:g}"
            )
        if self.runs < 1:
            raise ConfigError(f"--runs must be at least 1, got {self.runs}")

    @property
    def canary_count(self) -> int:
        """The canaries of one run (the level's default when not given)."""
        if self.canaries is not None:
            return self.canaries
        return DEFAULT_EXAMPLE_CANARIES if self.level == "example" else DEFAULT_CLIENT_CANARIES


class AuditFailedError(RuntimeError):
    """The simulation under audit did not finish: there is nothing honest to measure."""


def check_auditable(config: RunConfig, settings: AuditSettings) -> None:
    """Refuse, in one line, a configuration the chosen audit cannot measure."""
    if settings.level == "client":
        if not config.client_level_dp:
            raise ConfigError(
                "the client-level audit needs client-level DP: give --client-target-epsilon or "
                "--client-noise-multiplier"
            )
        if settings.canary_count >= config.clients:
            raise ConfigError(
                f"{settings.canary_count} canary clients leave no client with data among "
                f"--clients {config.clients}; raise --clients or lower --canaries"
            )
    elif settings.view == "server" and config.secure_aggregation:
        raise ConfigError(
            "--view server scores each client's update as the server sees it, and secure "
            "aggregation hides it; run it without --secure-aggregation, or use --view white-box"
        )
    elif settings.canary_clients is not None and settings.canary_clients > config.clients:
        raise ConfigError(
            f"--canary-clients {settings.canary_clients} is more than --clients {config.clients}"
        )


def travelling_layout(config: RunConfig, plan: SimulationPlan) -> tuple[int, list[tuple[str, int]]]:
    """The model's trainable coordinates, and (name, size) of each tensor an update carries.

    Built as a client builds it (`make_dp_compatible`, the task's frozen parts), so the names
    are those the gradient canaries are placed on and the order is the update's wire order.
    """
    from privet.task.dp_compatible import make_dp_compatible
    from privet.task.task import (
        build_task_model,
        freeze_for_training,
        task_named,
        travelling_keys,
    )

    task = task_named(config.task)
    model = build_task_model(
        task, config.model, plan.feature_shape, plan.num_classes, config.seed, lora=config.lora
    )
    model = make_dp_compatible(model)
    freeze_for_training(task, model)
    room = sum(int(p.numel()) for p in model.parameters() if p.requires_grad)
    state = model.state_dict()
    layout = [(key, int(state[key].numel())) for key in travelling_keys(task, model)]
    return room, layout


def check_canary_room(config: RunConfig, settings: AuditSettings, plan: SimulationPlan) -> None:
    """Example level: every canary client needs a trainable coordinate per canary it holds."""
    if settings.level != "example":
        return
    room, _ = travelling_layout(config, plan)
    holders = list(range(settings.canary_clients or config.clients))
    most = max(split_canaries(settings.canary_count, holders).values())
    if most > room:
        raise ConfigError(
            f"{settings.canary_count} canaries put {most} on a client, and gradient canaries "
            f"need as many trainable coordinates: --model {config.model} has {room}; use fewer "
            "--canaries, more --canary-clients, or a larger --model"
        )


def _generator(config: RunConfig, run: int) -> np.random.Generator:
    """The audit's own randomness: from the run's seed when reproducible, else the OS."""
    if config.reproducible:
        return np.random.default_rng([config.seed, run, 0xA0D17])
    return np.random.default_rng(secrets.randbits(128))


# -- example level ---------------------------------------------------------------------------

VIEW_THREAT_MODELS = {
    "white-box": (
        "white box: every DP-SGD step's released noisy gradient at each canary's coordinate, "
        "less the clipped sum of the real batch there"
    ),
    "server": "the server: each canary client's update as it arrives, every round",
}
VIEW_SCORES = {
    "white-box": "log-likelihood ratio of the subsampled Gaussian, summed over steps",
    "server": "minus the canary's coordinate of the client's update, summed over rounds",
}


def _example_run(
    config: RunConfig,
    settings: AuditSettings,
    run: int,
    on_round: RoundCallback | None,
    runner: Callable[..., RunResults],
    layout: list[tuple[str, int]],
) -> tuple[RunResults, np.ndarray, np.ndarray, dict[str, Any]]:
    """One run with gradient canaries: its results, the canaries' scores and inclusion."""
    rng = _generator(config, run)
    holders = list(range(settings.canary_clients or config.clients))
    counts = split_canaries(settings.canary_count, holders)
    canaries = {
        client: GradientCanaries(
            client, count, rng.random(count) < 0.5, np.random.default_rng(rng.integers(2**63))
        )
        for client, count in counts.items()
        if count > 0
    }
    watcher = UpdateWatcher(canaries, layout)
    mods = [watcher.mod] if settings.view == "server" else []
    results = runner(config, on_round, step_observers=canaries.get, client_mods=mods)
    if not results.finished:
        raise AuditFailedError(
            results.failure_reason or results.stop_reason or "the run did not finish"
        )
    if settings.view == "server":
        scores = np.concatenate(
            [watcher.scores.get(c.client_id, np.zeros(c.count)) for c in canaries.values()]
        )
    else:
        scores = np.concatenate([c.log_likelihood_ratio for c in canaries.values()])
    included = np.concatenate([c.included for c in canaries.values()])
    epsilon = {c.client_id: c.epsilon for c in results.clients}
    accounted = max(epsilon.get(client, math.inf) for client in canaries)
    details = {
        "level": "example",
        "unit": "one example of a canary client",
        "view": settings.view,
        "threat_model": VIEW_THREAT_MODELS[settings.view],
        "canary": "gradient (Dirac) canaries of norm equal to the clip norm",
        "score": VIEW_SCORES[settings.view],
        "canary_clients": sorted(canaries),
        "steps_observed": {str(c.client_id): c.steps for c in canaries.values()},
        "noise_multiplier": sorted({s for c in canaries.values() for s in c.noise_multipliers}),
        "sample_rate": sorted({q for c in canaries.values() for q in c.sample_rates}),
        "epsilon_accounted": accounted,
        "accountant": config.accountant,
        "first_canary": (float(scores[0]), bool(included[0])),
    }
    return results, scores, included, details


# -- client level ----------------------------------------------------------------------------


@dataclass
class ModelWatcher:
    """A client mod that keeps the global model the nodes are sent: the first and the latest."""

    first: list[np.ndarray] | None = None
    latest: list[np.ndarray] | None = None

    def mod(self, message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Note the arrays a TRAIN or EVALUATE message carries, then handle it as usual."""
        if ARRAYS_RECORD in message.content.array_records:
            arrays = message.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays()
            if self.first is None and message.metadata.message_type == "train":
                self.first = arrays
            self.latest = arrays
        return call_next(message, context)


def _client_run(
    config: RunConfig,
    settings: AuditSettings,
    run: int,
    on_round: RoundCallback | None,
    runner: Callable[..., RunResults],
    layout: list[tuple[str, int]],
) -> tuple[RunResults, np.ndarray, np.ndarray, dict[str, Any]]:
    """One run with canary clients: its results, the canaries' cosines and inclusion."""
    rng = _generator(config, run)
    count = settings.canary_count
    clients = list(range(config.clients - count, config.clients))  # the last ids hold canaries
    included = rng.random(count) < 0.5
    watcher = ModelWatcher()
    canaries = CanaryClients(
        included={client: bool(inc) for client, inc in zip(clients, included, strict=True)},
        clip_norm=config.client_clip_norm * CLIPPED_FRACTION,
        rng=np.random.default_rng(rng.integers(2**63)),
    )
    if config.local_evaluation == "never":  # the final model reaches the nodes only to evaluate
        config = dataclasses.replace(config, local_evaluation="last-round")
    results = runner(config, on_round, client_mods=[watcher.mod], update_override=canaries.override)
    if not results.finished:
        raise AuditFailedError(
            results.failure_reason or results.stop_reason or "the run did not finish"
        )
    if watcher.first is None or watcher.latest is None:
        raise AuditFailedError("no model reached the nodes; nothing to score")
    change = np.concatenate(
        [
            (b.astype(np.float64) - a.astype(np.float64)).ravel()
            for a, b in zip(watcher.first, watcher.latest, strict=True)
        ]
    )
    norm = float(np.linalg.norm(change))
    if not canaries.directions:
        raise AuditFailedError("no canary client took part in any round; nothing to score")
    directions = np.stack([canaries.directions[client] for client in clients])
    scores = directions @ change / norm if norm > 0 else np.zeros(count)
    level = results.client_level or {}
    accounted = float(level.get("epsilon", math.inf))
    dimension = int(change.size)
    estimate = gaussian_estimate(scores[included], 0.0, 1.0 / math.sqrt(dimension), config.delta)
    details = {
        "level": "client",
        "unit": "one client's whole data (its update)",
        "threat_model": "the final model: its change from the first model the clients received",
        "canary": "canary clients sending a fixed random direction scaled to the clip norm",
        "score": "cosine between the model's change and each canary's direction",
        "canary_clients": clients,
        "canary_rounds_sent": {str(k): v for k, v in sorted(canaries.sent.items())},
        "dimension": dimension,
        "noise_multiplier": level.get("noise_multiplier"),
        "epsilon_accounted": accounted,
        "epsilon_estimate": estimate,
        "epsilon_estimate_method": (
            "Andrew et al. 2024: Gaussian fitted to included canaries' cosines against the "
            "N(0, 1/d) of unseen random directions (an estimate, not a bound)"
        ),
        "accountant": config.accountant,
        "first_canary": (float(scores[0]), bool(included[0])),
    }
    return results, scores, included, details


# -- the audit -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditReport:
    """What an audit found; `to_json_dict` is audit.json."""

    settings: AuditSettings
    bound: OneRunBound
    epsilon_accounted: float
    details: dict[str, Any]
    per_run: list[dict[str, Any]]
    clopper_pearson: dict[str, Any] | None

    @property
    def passed(self) -> bool:
        """The bound does not contradict the accounted ε."""
        return self.bound.epsilon_lower_bound <= self.epsilon_accounted

    @property
    def ratio(self) -> float:
        """Lower bound / accounted ε: how much of the claim the audit could confirm."""
        if self.epsilon_accounted <= 0 or not math.isfinite(self.epsilon_accounted):
            return 0.0
        return self.bound.epsilon_lower_bound / self.epsilon_accounted

    def verdict(self) -> str:
        """One line for the console and the exit status."""
        bound, claim = self.bound.epsilon_lower_bound, self.epsilon_accounted
        confidence = f"{100 * self.settings.confidence:g}%"
        if self.passed:
            return (
                f"audit passed: epsilon >= {bound:.3f} at {confidence} confidence, within the "
                f"accounted {claim:.3f} ({100 * self.ratio:.0f}% of it, "
                f"{self.bound.canaries} canaries)"
            )
        return (
            f"audit FAILED: epsilon >= {bound:.3f} at {confidence} confidence exceeds the "
            f"accounted {claim:.3f}: the noise, the sampling or the accounting is not what the "
            "run claims; do not trust this configuration's epsilon"
        )

    def to_json_dict(self) -> dict[str, Any]:
        """audit.json: the bound, the claim, the verdict and how they were measured."""
        values: dict[str, Any] = {
            "finished": True,
            "passed": self.passed,
            "verdict": self.verdict(),
            **self.bound.to_dict(),
            "epsilon_accounted": self.epsilon_accounted,
            "ratio": self.ratio,
            "runs": self.settings.runs,
            "method": "one-run audit (Steinke, Nasr, Jagielski, NeurIPS 2023)",
            **{k: v for k, v in self.details.items() if k != "first_canary"},
        }
        if self.settings.runs > 1:
            values["per_run"] = self.per_run
        if self.clopper_pearson is not None:
            values["clopper_pearson"] = self.clopper_pearson
        return values


def run_audit(
    config: RunConfig,
    settings: AuditSettings,
    on_round: RoundCallback | None = None,
    runner: Callable[..., RunResults] | None = None,
) -> AuditReport:
    """Run `settings.runs` audited simulations of `config` and write OUTPUT/audit.json.

    With one run the simulation's files go to `config.output` itself; with several, to
    ``run-1``, ``run-2``... inside it. `runner` is the in-process engine (a parameter so that a
    test can wrap it).
    """
    check_auditable(config, settings)
    from privet.simulations.plan import plan_simulation

    plan = plan_simulation(config)
    check_canary_room(config, settings, plan)
    _, layout = travelling_layout(config, plan)
    if runner is None:
        from privet.simulations.inprocess_engine import run_in_process

        runner = run_in_process
    audit_one = _example_run if settings.level == "example" else _client_run
    output = Path(config.output)
    # Marks the folder as an audit from the start: `privet resume` refuses it (a resumed run
    # would go on without its canaries), and an interrupted audit says so.
    _write_unfinished(output, "the audit is running, or was interrupted; rerun `privet audit`")
    try:
        report = _audit_runs(config, settings, on_round, runner, audit_one, layout)
    except AuditFailedError as error:
        _write_unfinished(output, f"the run did not finish: {error}")
        raise
    _write_json(output / AUDIT_FILE, report.to_json_dict())
    return report


def _write_json(path: Path, values: dict[str, Any]) -> None:
    """Write an audit.json atomically (strict JSON: no NaN or infinity)."""
    text = json.dumps(values, indent=2, allow_nan=False, default=_json_default)
    atomic_write_bytes(path, text.encode())


def _write_unfinished(output: Path, reason: str) -> None:
    """audit.json for an audit without a result: `finished: false` and why."""
    _write_json(output / AUDIT_FILE, {"finished": False, "passed": False, "reason": reason})


def _audit_runs(
    config: RunConfig,
    settings: AuditSettings,
    on_round: RoundCallback | None,
    runner: Callable[..., RunResults],
    audit_one: Callable[..., tuple[RunResults, np.ndarray, np.ndarray, dict[str, Any]]],
    layout: list[tuple[str, int]],
) -> AuditReport:
    """Run and score each audited run; the combined report (not yet written)."""
    output = Path(config.output)
    significance = (1.0 - settings.confidence) / settings.runs
    bounds, per_run, first = [], [], []
    details: dict[str, Any] = {}
    for run in range(settings.runs):
        run_config = config
        if settings.runs > 1:
            run_config = dataclasses.replace(
                config, output=str(output / f"run-{run + 1}"), seed=config.seed + run
            )
            _write_unfinished(
                Path(run_config.output), "this audited run is running, or was interrupted"
            )
        try:
            _, scores, included, details = audit_one(
                run_config, settings, run, on_round, runner, layout
            )
        except CanaryError as error:
            raise ConfigError(str(error)) from None
        bound = one_run_audit(
            scores,
            included,
            confidence=1.0 - significance,
            delta=config.delta,
            rng=_generator(config, run + 1000),
        )
        bounds.append(bound)
        first.append(details["first_canary"])
        claim = float(details["epsilon_accounted"])
        if not math.isfinite(claim):
            raise AuditFailedError("a canary client's accounted epsilon is unknown")
        per_run.append({"output": run_config.output, **bound.to_dict(), "epsilon_accounted": claim})
        if settings.runs > 1:  # each run's folder says what its own canaries proved
            part = AuditReport(
                dataclasses.replace(settings, runs=1), bound, claim, details, [], None
            )
            _write_json(
                Path(run_config.output) / AUDIT_FILE,
                {**part.to_json_dict(), "part_of": str(output / AUDIT_FILE)},
            )
    best = max(bounds, key=lambda b: b.epsilon_lower_bound)
    best = dataclasses.replace(best, confidence=settings.confidence)
    accounted = max(float(run["epsilon_accounted"]) for run in per_run)
    clopper = None
    if settings.runs > 1:
        threshold = 0.0 if settings.level == "example" else 0.5 / math.sqrt(details["dimension"])
        clopper = clopper_pearson_audit(
            [score for score, _ in first],
            [inc for _, inc in first],
            threshold=threshold,
            confidence=settings.confidence,
            delta=config.delta,
        ).to_dict()
    return AuditReport(settings, best, accounted, details, per_run, clopper)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def read_audit(output: Path) -> dict[str, Any] | None:
    """OUTPUT/audit.json as written by `run_audit`, or None when the run was not audited."""
    path = Path(output) / AUDIT_FILE
    if not path.exists():
        return None
    values = json.loads(path.read_text())
    return values if isinstance(values, dict) else None
