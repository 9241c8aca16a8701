"""Canaries for `privet audit`: gradient canaries in DP-SGD steps, and canary clients.

**Gradient canaries (example level, white box).** A canary is a virtual example whose clipped
gradient is C times one coordinate's unit vector (a "Dirac canary", norm exactly the clip norm C).
The auditor includes each canary with probability ½, in secret. At every DP-SGD step an included
canary joins the Poisson batch with the step's sample rate q, like any example, and its gradient
is added to the clipped sum before Opacus adds the noise. The auditor sees what the step
releases (the noisy sum, Opacus' own `add_noise`) at each canary's coordinate, less the clipped
sum of the real batch there: y = b + N(0, σ²) in units of C, with b = 1 when the canary was in
the batch. The DP guarantee of one example holds against an adversary who knows every other
example, so this auditor is within the threat model the accountant claims; it is the strongest
one, which is what makes the bound tight. Each canary's score is the log-likelihood ratio of
its observations under "included" against "excluded" for the subsampled Gaussian.

**Canary clients (client level).** Andrew et al. (ICLR 2024): a canary client's update is a
fixed random direction scaled to the client clip norm, sent whenever it is sampled; an excluded
canary sends a zero update. Its score is the cosine between the final model's change and its
direction.

Both exist only inside an audit run (`simulations.audit`): nothing here is reachable from a
deployment or from `privet simulate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from opacus.optimizers import DPOptimizer
from torch import nn

from privet.client.local_plan import LocalPlan
from privet.task.messages import ARRAYS_RECORD


class CanaryError(ValueError):
    """An audit that cannot place its canaries (too few coordinates, too few clients)."""


@dataclass
class GradientCanaries:
    """One client's gradient canaries, their secret inclusion, and their scores so far.

    `count` canaries; `included[i]` says whether canary i is in the data set at all.
    Coordinates are chosen on the first round (when the model is known) among the trainable
    parameters, all distinct, so no two canaries share what they are scored on.
    """

    client_id: int
    count: int
    included: np.ndarray
    rng: np.random.Generator
    log_likelihood_ratio: np.ndarray = field(init=False)
    linear: np.ndarray = field(init=False)
    steps: int = 0
    coordinates: list[tuple[str, int]] = field(default_factory=list)
    sample_rates: set[float] = field(default_factory=set)
    noise_multipliers: set[float] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.log_likelihood_ratio = np.zeros(self.count)
        self.linear = np.zeros(self.count)

    def attach(
        self,
        optimizer: DPOptimizer,
        parameters: Mapping[str, nn.Parameter],
        plan: LocalPlan,
    ) -> None:
        """Wrap this round's Opacus optimizer: each noisy step carries and reveals the canaries."""
        if not self.coordinates:
            self.coordinates = self._choose_coordinates(parameters)
        groups = self._groups(parameters)
        clip = float(optimizer.max_grad_norm)
        rate = float(plan.sample_rate)
        sigma = float(plan.noise_multiplier)
        self.sample_rates.add(rate)
        self.noise_multipliers.add(sigma)
        release = optimizer.add_noise

        def add_noise_with_canaries() -> None:
            in_batch = (self.rng.random(self.count) < rate) & self.included
            data_sums = []
            for parameter, positions, canaries in groups:
                flat = parameter.summed_grad.view(-1)  # type: ignore[attr-defined]
                data_sums.append(flat[positions].detach().to(torch.float64).cpu())
                added = torch.as_tensor(
                    in_batch[canaries] * clip, dtype=flat.dtype, device=flat.device
                )
                flat.index_add_(0, positions, added)
            release()  # Opacus adds the noise and sets p.grad: what the step releases
            observed = np.zeros(self.count)
            for (parameter, positions, canaries), data_sum in zip(groups, data_sums, strict=True):
                assert parameter.grad is not None
                noisy = parameter.grad.reshape(-1)[positions].detach().to(torch.float64).cpu()
                observed[canaries] = ((noisy - data_sum) / clip).numpy()
            self._score(observed, rate, sigma)

        optimizer.add_noise = add_noise_with_canaries

    def _score(self, observed: np.ndarray, rate: float, sigma: float) -> None:
        """Add one step's evidence: log[(1 − q) + q·N(y; 1, σ²)/N(y; 0, σ²)], and y itself."""
        exponent = (2.0 * observed - 1.0) / (2.0 * sigma * sigma)
        if rate >= 1.0:
            self.log_likelihood_ratio += exponent
        else:
            self.log_likelihood_ratio += np.logaddexp(math.log1p(-rate), math.log(rate) + exponent)
        self.linear += observed
        self.steps += 1

    def _choose_coordinates(self, parameters: Mapping[str, nn.Parameter]) -> list[tuple[str, int]]:
        sizes = [(name, int(p.numel())) for name, p in parameters.items()]
        total = sum(size for _, size in sizes)
        if self.count > total:
            raise CanaryError(
                f"{self.count} canaries on client {self.client_id} need as many trainable "
                f"coordinates, and the model has {total}; use fewer --canaries, more canary "
                "clients, or a larger --model"
            )
        chosen = np.sort(self.rng.choice(total, size=self.count, replace=False))
        starts = np.cumsum([0] + [size for _, size in sizes])
        coordinates = []
        for flat in chosen:
            index = int(np.searchsorted(starts, flat, side="right") - 1)
            coordinates.append((sizes[index][0], int(flat - starts[index])))
        return coordinates

    def _groups(
        self, parameters: Mapping[str, nn.Parameter]
    ) -> list[tuple[nn.Parameter, torch.Tensor, np.ndarray]]:
        """(parameter, positions in it, canary indices) for each parameter holding canaries."""
        by_name: dict[str, tuple[list[int], list[int]]] = {}
        for canary, (name, position) in enumerate(self.coordinates):
            if name not in parameters:
                raise CanaryError(f"canary parameter {name} is not trainable in this round")
            positions, canaries = by_name.setdefault(name, ([], []))
            positions.append(position)
            canaries.append(canary)
        return [
            (
                parameters[name],
                torch.as_tensor(positions, dtype=torch.long, device=parameters[name].device),
                np.asarray(canaries),
            )
            for name, (positions, canaries) in by_name.items()
        ]


def split_canaries(total: int, clients: Sequence[int]) -> dict[int, int]:
    """`total` canaries over `clients` as evenly as possible (the first ones get one more)."""
    if not clients:
        raise CanaryError("no client to hold the canaries")
    base, extra = divmod(total, len(clients))
    return {client: base + (1 if rank < extra else 0) for rank, client in enumerate(clients)}


@dataclass
class CanaryClients:
    """Client-level canaries: for each canary client, whether it is in, and its direction.

    Installed as the in-process engine's update override: a canary client runs its normal round
    (its reply carries the real metrics and its ledger moves as any client's), and the update it
    sends, before any masking or distributed-DP encoding, is replaced by its canary update. So
    canary clients work with and without secure aggregation. Directions are drawn on the first
    update, when the dimension is known.
    """

    included: dict[int, bool]
    clip_norm: float
    rng: np.random.Generator
    directions: dict[int, np.ndarray] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)

    def override(self, client: int, update: list[np.ndarray]) -> list[np.ndarray] | None:
        """S·u for an included canary, zeros for an excluded one; None for other clients."""
        if client not in self.included:
            return None
        if not self.directions:
            dimension = sum(int(part.size) for part in update)
            self.directions = random_directions(sorted(self.included), dimension, self.rng)
        scale = self.clip_norm if self.included[client] else 0.0
        flat = self.directions[client] * scale
        parts, start = [], 0
        for part in update:
            parts.append(flat[start : start + part.size].reshape(part.shape).astype(part.dtype))
            start += part.size
        self.sent[client] = self.sent.get(client, 0) + 1
        return parts


def random_directions(
    clients: Sequence[int], dimension: int, rng: np.random.Generator
) -> dict[int, np.ndarray]:
    """An independent uniformly random unit vector of `dimension` for each canary client."""
    directions = {}
    for client in clients:
        vector = rng.standard_normal(dimension)
        directions[client] = vector / np.linalg.norm(vector)
    return directions


@dataclass
class UpdateWatcher:
    """The server's view of gradient canaries: each canary client's update, round by round.

    A Flower client mod that reads a canary client's TRAIN reply as the server receives it and
    adds, for each canary, minus the update at the canary's coordinate (an included canary pulls
    its coordinate down: SGD steps against the gradient). `layout` is the update's tensors as
    (name, size) in wire order.
    """

    canaries: Mapping[int, GradientCanaries]
    layout: Sequence[tuple[str, int]]
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    rounds: dict[int, int] = field(default_factory=dict)

    def mod(self, message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Score the update a canary client sends; pass every message through unchanged."""
        reply = call_next(message, context)
        if message.metadata.message_type != "train" or reply.has_error():
            return reply
        if ARRAYS_RECORD not in reply.content.array_records:
            return reply
        from flwr.common.constant import PARTITION_ID_KEY

        client = int(context.node_config.get(PARTITION_ID_KEY, -1))
        canaries = self.canaries.get(client)
        if canaries is None or not canaries.coordinates:
            return reply
        update = reply.content.array_records[ARRAYS_RECORD].to_numpy_ndarrays()
        flat = np.concatenate([part.astype(np.float64).ravel() for part in update])
        offsets, start = {}, 0
        for name, size in self.layout:
            offsets[name] = start
            start += size
        positions = np.array([offsets[name] + index for name, index in canaries.coordinates])
        self.scores.setdefault(client, np.zeros(canaries.count))
        self.scores[client] -= flat[positions]
        self.rounds[client] = self.rounds.get(client, 0) + 1
        return reply
