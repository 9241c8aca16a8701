"""How a round's client updates become the one update the global model takes: a strategy part.

A release part sits between an aggregation step (which collects the updates: one by one in a
plain round, only as their sum in a secure round) and the server optimizer (which applies the
released update). Two parts exist:

- `FedAvgRelease`: the example-weighted mean (FedAvg). Nothing is added; the server may see each
  update (plain rounds) or only their weighted sum (secure aggregation).
- `ClientLevelRelease`: DP-FedAvg at the client level. Updates are clipped to S, the sum is noised
  and divided by the expected number of clients (`server.aggregation.ClientLevelAggregator`), and
  the round's privacy event is written to the server's ledger *before* the noised update exists.

The aggregation steps call `release_updates` or `release_secure_sum`, whichever matches what they
collected, so a new aggregation (e.g. distributed DP) and a new release (e.g. another mechanism)
are each a new class, never a new branch in the round loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from privet.privacy import PrivacyEvent, PrivacyLedger
from privet.server.aggregation import (
    ClientLevelAggregator,
    ClientUpdate,
    weighted_mean_update,
)
from privet.server.checkpoint import generator_state, restore_generator
from privet.server.client_dp import ClientLevelPlan
from privet.server.round_book import RoundBook
from privet.server.secure_aggregation import SecureSum


class UpdateRelease(ABC):
    """Turns what a round collected into the update the model takes (None: the model stays)."""

    @property
    @abstractmethod
    def clip_norm(self) -> float | None:
        """The L2 bound each client clips its update to this round (None: no client-level bound)."""

    @abstractmethod
    def release_updates(
        self,
        book: RoundBook,
        server_round: int,
        updates: list[ClientUpdate],
        shapes: Sequence[tuple[int, ...]],
    ) -> list[np.ndarray] | None:
        """The update to apply, from updates the server received one by one (a plain round)."""

    @abstractmethod
    def release_secure_sum(
        self,
        book: RoundBook,
        server_round: int,
        secure: SecureSum,
        weights: dict[int, float],
    ) -> list[np.ndarray]:
        """The update to apply, from the unmasked Σ w_k·Δ_k of a secure round (`weights`: w_k)."""

    @abstractmethod
    def secure_weight(self, num_examples: int, largest: int) -> float:
        """The weight w_k a client applies to its update before masking (its share of the sum)."""

    def stop_reason_before(self, server_round: int) -> str | None:
        """Why the run must stop before `server_round` (a privacy budget would be exceeded)."""
        return None

    def charge_unreleased(self, book: RoundBook, server_round: int) -> None:
        """Account a secure round that was sampled but released nothing (nothing by default).

        Under distributed DP whether a round is released can depend on who was sampled, so
        such a round still costs privacy (`server.distributed_release`).
        """
        return None

    def summary(self) -> dict[str, Any] | None:
        """What results.json records about this release (None: nothing beyond the rounds)."""
        return None

    def checkpoint_state(self) -> dict[str, object]:
        """What the release needs to go on after a restart (JSON-ready).

        Merged into the strategy's checkpoint state, so its keys must not clash with the loop's.
        """
        return {}

    def restore_state(self, state: dict[str, object]) -> None:
        """Continue from `checkpoint_state`'s output (nothing to restore by default)."""
        return None


def client_level_fields(plan: ClientLevelPlan, delta: float, rounds: int) -> dict[str, Any]:
    """The `client_level` fields every client-level release reports the same way."""
    return {
        "delta": delta,
        "noise_multiplier": plan.total_noise_multiplier,
        "update_noise_multiplier": plan.update_noise_multiplier,
        "sample_rate": plan.sample_rate,
        "expected_clients_per_round": plan.expected_clients,
        "rounds": rounds,
    }


def budget_stop_reason(
    ledger: PrivacyLedger,
    next_round: PrivacyEvent,
    accountant: str,
    epsilon_budget: float | None,
    server_round: int,
) -> str | None:
    """Why `server_round` must not run: its event would take the ledger's ε above the budget."""
    if epsilon_budget is None:
        return None
    after = ledger.epsilon_if_bounded([next_round], accountant)
    if after > epsilon_budget:
        return (
            f"round {server_round} would take the client-level epsilon to {after:.4g}, "
            f"above the budget {epsilon_budget:g}"
        )
    return None


class FedAvgRelease(UpdateRelease):
    """FedAvg: the mean of the updates, each weighted by its client's example count."""

    @property
    def clip_norm(self) -> float | None:
        return None

    def release_updates(
        self,
        book: RoundBook,
        server_round: int,
        updates: list[ClientUpdate],
        shapes: Sequence[tuple[int, ...]],
    ) -> list[np.ndarray] | None:
        """The example-weighted mean; updates that carry no examples have no weight to take."""
        if not updates:
            return None
        if sum(u.num_examples for u in updates) == 0:
            outcome = book.outcome(server_round)
            for update in updates:  # FedAvg weights by examples: no weight, nothing to average
                book.bad_reply(
                    server_round, update.client_id, "train", "update rejected: 0 examples"
                )
                outcome.rejected.append(update.client_id)
            outcome.trained = []
            return None
        return weighted_mean_update(updates)

    def release_secure_sum(
        self,
        book: RoundBook,
        server_round: int,
        secure: SecureSum,
        weights: dict[int, float],
    ) -> list[np.ndarray]:
        """Σ w_k·Δ_k / Σ w_k over the survivors: FedAvg's mean, from the sum alone."""
        total_weight = sum(weights[cid] for cid in secure.survivors)
        summary = book.outcome(server_round).secure_aggregation
        assert summary is not None
        summary["error_bound"] = secure.error_bound / total_weight
        return [part / total_weight for part in secure.weighted_update_sum]

    def secure_weight(self, num_examples: int, largest: int) -> float:
        return num_examples / largest


class ClientLevelRelease(UpdateRelease):
    """DP-FedAvg: clipped updates, Gaussian noise on their sum, the event in the server's ledger."""

    def __init__(
        self,
        plan: ClientLevelPlan,
        aggregator: ClientLevelAggregator,
        ledger: PrivacyLedger,
        *,
        accountant: str,
        delta: float,
        epsilon_budget: float | None = None,
    ) -> None:
        self.plan = plan
        self.aggregator = aggregator
        self.ledger = ledger
        self.accountant = accountant
        self.delta = delta
        self.epsilon_budget = epsilon_budget

    @property
    def clip_norm(self) -> float | None:
        return self.aggregator.clip_norm

    def _charge(self, server_round: int) -> None:
        """Write-ahead: the release is in the ledger before the noised model exists."""
        self.ledger.record(server_round, [self.plan.round_event()])

    def release_updates(
        self,
        book: RoundBook,
        server_round: int,
        updates: list[ClientUpdate],
        shapes: Sequence[tuple[int, ...]],
    ) -> list[np.ndarray] | None:
        """Noise is added even when no client was sampled: the release happens either way."""
        self._charge(server_round)
        aggregate = self.aggregator.aggregate(updates, shapes)
        for cid in aggregate.rejected:
            book.bad_reply(
                server_round,
                cid,
                "train",
                f"update rejected: its norm exceeds the clip norm {aggregate.clip_norm_used:g}",
            )
        outcome = book.outcome(server_round)
        outcome.rejected = sorted(outcome.rejected + aggregate.rejected)
        outcome.trained = aggregate.aggregated
        outcome.noised_within_fraction = aggregate.noised_within_fraction
        outcome.epsilon_client_level = self.ledger.epsilon(self.accountant)
        return aggregate.mean_update

    def release_secure_sum(
        self,
        book: RoundBook,
        server_round: int,
        secure: SecureSum,
        weights: dict[int, float],
    ) -> list[np.ndarray]:
        """Noise the unmasked sum of clipped, conditionally rounded updates (norm ≤ S each)."""
        self._charge(server_round)
        aggregate = self.aggregator.release_sum(
            secure.weighted_update_sum, list(secure.survivors), secure.within_clip
        )
        outcome = book.outcome(server_round)
        outcome.noised_within_fraction = aggregate.noised_within_fraction
        outcome.epsilon_client_level = self.ledger.epsilon(self.accountant)
        summary = outcome.secure_aggregation
        assert summary is not None
        summary["error_bound"] = secure.error_bound / self.aggregator.expected_clients
        return aggregate.mean_update

    def secure_weight(self, num_examples: int, largest: int) -> float:
        """Every client counts once: the sum's sensitivity is S, whatever a client holds."""
        return 1.0

    def stop_reason_before(self, server_round: int) -> str | None:
        """Stop before a round that would take the client-level ε above the budget."""
        return budget_stop_reason(
            self.ledger, self.plan.round_event(), self.accountant, self.epsilon_budget, server_round
        )

    def summary(self) -> dict[str, Any]:
        """results.json's `client_level`: the ε spent and the mechanism that spent it."""
        return {
            "epsilon": self.ledger.epsilon(self.accountant),
            **client_level_fields(self.plan, self.delta, len(self.ledger.rounds())),
            "adaptive_clipping": self.plan.adaptive_summary(),
            "clip_norm_final": self.aggregator.clip_norm,
        }

    def checkpoint_state(self) -> dict[str, object]:
        """The adaptive clip norm and the noise generator, so a resumed run draws on."""
        return {
            "aggregator": {
                "clip_norm": self.aggregator.clip_norm,
                "rng": generator_state(self.aggregator._rng),  # noqa: SLF001
            }
        }

    def restore_state(self, state: dict[str, object]) -> None:
        saved = state["aggregator"]
        assert isinstance(saved, dict)
        self.aggregator.clip_norm = float(saved["clip_norm"])
        restore_generator(self.aggregator._rng, saved["rng"])  # noqa: SLF001
