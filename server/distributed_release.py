"""Distributed DP's release: the unmasked sum already carries the noise; the server adds none.

Under `--distributed-dp` every sampled client clips, rotates, rounds and noises its own update
before masking (`privacy.distributed_dp`), so the sum the secure aggregation step unmasks is the
DP release itself. This part only:

- charges the round to the server's client-level ledger, with its cohort and the survivors the
  sum really had (`DistributedDiscreteGaussianRound`: amplified by the sampling when nobody
  dropped), before the model takes the update; a round that released nothing is charged too
  (`charge_unreleased`);
- divides the sum by the expected number of clients, as DP-FedAvg does (a fixed denominator, so
  no extra release);
- records per round the bits, scale, noise share, survivors and the coordinates at the ring's edge
  (an upper bound on the wraps), and for the run the privacy statement and the ε against the
  server itself.

ε against the server. The server chooses who takes part and sees who answered, so its view of a
client is not amplified by the sampling: it is the composition, without sampling, of the rounds
that client's masked update was summed in (`epsilon_against_server`, the largest over clients).
The same holds against the round's other clients, whom secure aggregation introduces to each
other. The `epsilon` of the run is the one with Poisson sampling, for everyone who sees the models
but not who took part or how many (results.json's rounds record both, so it is the operator's).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from privet.privacy import DistributedDiscreteGaussianRound, PrivacyLedger
from privet.privacy.accountants import get_accountant
from privet.server.aggregation import ClientUpdate
from privet.server.client_dp import ClientLevelPlan
from privet.server.round_book import RoundBook
from privet.server.secure_aggregation import SecureSum
from privet.server.update_release import (
    UpdateRelease,
    budget_stop_reason,
    client_level_fields,
)

logger = logging.getLogger(__name__)

PRIVACY_STATEMENT = (
    "distributed DP: every client noised its own update before masking; the server saw only "
    "sums already carrying the DP noise and added none"
)


class DistributedDpRelease(UpdateRelease):
    """The release of distributed DP: charge what the survivors' noise carried, then average."""

    def __init__(
        self,
        plan: ClientLevelPlan,
        clip_norm: float,
        ledger: PrivacyLedger,
        *,
        delta: float,
        epsilon_budget: float | None = None,
    ) -> None:
        self.plan = plan
        self._clip_norm = clip_norm
        self.ledger = ledger
        self.delta = delta
        self.epsilon_budget = epsilon_budget
        self._summed: dict[int, list[dict[str, Any]]] = {}
        """Client id → the rounds (as unsampled events) its update was summed in."""

    @property
    def clip_norm(self) -> float:
        return self._clip_norm

    def release_updates(
        self,
        book: RoundBook,
        server_round: int,
        updates: list[ClientUpdate],
        shapes: Sequence[tuple[int, ...]],
    ) -> list[np.ndarray] | None:
        """Never called: distributed DP runs only under secure aggregation (config checks)."""
        raise RuntimeError("distributed DP releases only secure sums; enable secure aggregation")

    def round_event(self, secure: SecureSum) -> DistributedDiscreteGaussianRound:
        """The round as the accountant sees it: the shares of the survivors that were summed."""
        assert secure.distributed is not None
        spec = secure.distributed.spec
        return DistributedDiscreteGaussianRound(
            l2_sensitivity=spec.norm_bound,
            local_variance=float(spec.local_variance),
            summands=len(secure.survivors),
            dimension=spec.padded_dimension,
            sample_rate=self.plan.sample_rate,
            cohort=spec.cohort,
        )

    def charge_unreleased(self, book: RoundBook, server_round: int) -> None:
        """A round that released nothing: charged by joint convexity at the planned z.

        Had a client been sampled too, the round might have gone ahead (more clients, more
        survivors), so whether anything was released depends on who was sampled; the charge is
        that of a release at the planned noise without amplification
        (`DistributedDiscreteGaussianRound.not_released`). Written ahead, like a release.
        """
        event = DistributedDiscreteGaussianRound.not_released(
            self.plan.update_noise_multiplier, self.plan.sample_rate
        )
        self.ledger.record(server_round, [event])
        epsilon = self.ledger.epsilon("rdp")
        book.outcome(server_round).epsilon_client_level = epsilon
        logger.warning(
            "round %d released nothing; it is still charged, without the sampling's "
            "amplification (client-level epsilon now %.4g)",
            server_round,
            epsilon,
        )

    def release_secure_sum(
        self,
        book: RoundBook,
        server_round: int,
        secure: SecureSum,
        weights: dict[int, float],
    ) -> list[np.ndarray]:
        """Charge the round (write-ahead), then Σ / expected clients; no noise is added here."""
        if secure.distributed is None:
            raise RuntimeError("a distributed-DP round unmasked a sum without the clients' noise")
        event = self.round_event(secure)
        self.ledger.record(server_round, [event])
        unsampled = event.to_dict() | {"sample_rate": 1.0}
        for cid in secure.survivors:
            self._summed.setdefault(int(cid), []).append(unsampled)
        outcome = book.outcome(server_round)
        outcome.epsilon_client_level = self.ledger.epsilon("rdp")
        if not event.amplified:
            logger.warning(
                "round %d: %d of %d sampled clients' shares were summed; the round is charged "
                "without the sampling's amplification (client-level epsilon now %.4g)",
                server_round,
                event.summands,
                event.cohort,
                outcome.epsilon_client_level,
            )
        summary = outcome.secure_aggregation
        assert summary is not None
        expected = self.plan.expected_clients
        summary["error_bound"] = secure.error_bound / expected
        planned = summary.get("distributed_dp")
        details: dict[str, Any] = dict(planned) if isinstance(planned, dict) else {}
        details.update(
            {
                "survivors": len(secure.survivors),
                "amplified_by_sampling": event.amplified,
                "noise_multiplier_carried": event.noise_multiplier,
                "edge_coordinates": secure.distributed.edge_coordinates,
                "server_noise": 0.0,
            }
        )
        summary["distributed_dp"] = details
        return [part / expected for part in secure.weighted_update_sum]

    def secure_weight(self, num_examples: int, largest: int) -> float:
        """Every client counts once: the sum's sensitivity is one client's norm bound."""
        return 1.0

    def stop_reason_before(self, server_round: int) -> str | None:
        """Stop before a round that could take the client-level ε above the budget.

        The next round is charged at its worst: the planned noise z without amplification (a
        round with dropouts, or one that releases nothing), since which it will be is not known
        before it runs.
        """
        worst = DistributedDiscreteGaussianRound.not_released(
            self.plan.update_noise_multiplier, self.plan.sample_rate
        )
        return budget_stop_reason(self.ledger, worst, "rdp", self.epsilon_budget, server_round)

    def epsilon_against_server(self) -> float:
        """The largest ε over clients of the rounds each was summed in, without sampling."""
        accountant = get_accountant("rdp")
        worst = 0.0
        for rounds in self._summed.values():
            events = [DistributedDiscreteGaussianRound.from_dict(item) for item in rounds]
            worst = max(worst, accountant.epsilon(events, self.delta))
        return worst

    def summary(self) -> dict[str, Any]:
        """results.json's `client_level`: ε, the mechanism, and what the server could see."""
        return {
            "mechanism": "distributed discrete Gaussian",
            "privacy_statement": PRIVACY_STATEMENT,
            "epsilon": self.ledger.epsilon("rdp"),
            "epsilon_against_server": self.epsilon_against_server(),
            **client_level_fields(self.plan, self.delta, len(self.ledger.rounds())),
            "adaptive_clipping": None,
            "clip_norm_final": self._clip_norm,
        }

    def checkpoint_state(self) -> dict[str, object]:
        """The rounds each client was summed in (for the ε against the server after a restart)."""
        return {"distributed_summed": {str(cid): rounds for cid, rounds in self._summed.items()}}

    def restore_state(self, state: dict[str, object]) -> None:
        saved = state.get("distributed_summed", {})
        assert isinstance(saved, dict)
        self._summed = {int(cid): list(rounds) for cid, rounds in saved.items()}
