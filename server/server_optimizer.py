"""How the global model takes a round's released update: a strategy part (Reddi et al. 2021).

FedAvg's server step is plain SGD with learning rate 1: w ← w + Δ. Adaptive server optimizers
(FedAdam, FedYogi, FedAdagrad; Reddi et al., "Adaptive Federated Optimization", ICLR 2021) keep
moments of Δ across rounds; they subclass `ServerOptimizer` and carry those moments in
`checkpoint_state` so a resumed run goes on from them.

A server optimizer only post-processes the released update: under client-level DP it sees the
noised mean, so it costs no privacy and needs no accounting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from privet.server.aggregation import apply_update


class ServerOptimizer(ABC):
    """Applies a round's released update to the global weights."""

    @abstractmethod
    def step(self, weights: Sequence[np.ndarray], update: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The next global weights (each array in its own dtype)."""

    def checkpoint_state(self) -> dict[str, object]:
        """What the optimizer carries between rounds (JSON-ready); stateless by default."""
        return {}

    def restore_state(self, state: dict[str, object]) -> None:
        """Continue from `checkpoint_state`'s output (nothing to restore by default)."""
        return None


class ServerSGD(ServerOptimizer):
    """w ← w + η·Δ; η = 1 is FedAvg's own step (and is applied without a multiplication)."""

    def __init__(self, learning_rate: float = 1.0) -> None:
        if not learning_rate > 0:
            raise ValueError(f"the server learning rate must be positive, got {learning_rate}")
        self.learning_rate = learning_rate

    def step(self, weights: Sequence[np.ndarray], update: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.learning_rate == 1.0:
            return apply_update(weights, update)
        return apply_update(weights, [self.learning_rate * np.asarray(part) for part in update])
