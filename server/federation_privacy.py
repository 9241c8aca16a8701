"""What the server knows of each client's example-level privacy, and the federation's ε.

Client data sets are disjoint, so an example is protected at its own client's ε; the federation's
number is the maximum over clients, never an average. A client's ε is cumulative and can only grow:
a report that goes down is kept at the larger value and flagged.

A client whose train reply carried an unusable privacy report (missing, malformed, NaN, naming
another client) may still have trained and released an update, so its ε is *unknown*: it counts as
∞ in `epsilon_max` and in the round's per-client ε, never as its last value and never left out.
Its next usable report ends that, because a report is cumulative over every round the client
trained in (its ledger is written before any update leaves it) and so covers the unusable one.

Runs and lifetimes. A node's ledger may hold earlier runs (a deployment keeps it for good), so each
report has the run's own ε and the node's lifetime ε (`privacy.report`). The server names its run
by a token (`run_token`, made when a run starts fresh, kept in the checkpoint across resumes, sent
with every TRAIN message) that the nodes tag their ledger entries with. `epsilon_max` is the run's
own figure, `lifetime_epsilon_max` the largest lifetime ε; both only grow, per client, like ε did.
A checkpoint of an older Privet has no token: the run then sends none, as before.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import replace
from typing import Any

from privet.privacy import ClientPrivacy, ClientReportError

__all__ = ["ClientPrivacy", "ClientReportError", "FederationPrivacy", "new_run_token"]

logger = logging.getLogger(__name__)


def new_run_token() -> str:
    """A fresh run token: 32 hex digits from the operating system's secure randomness."""
    return secrets.token_hex(16)


class FederationPrivacy:
    """Per-client example-level privacy (the run's own and lifetime), as reported round by round.

    `run_token` names the run to the clients; a fresh one unless given (None: send none).
    """

    def __init__(self, run_token: str | None = "") -> None:
        self.run_token: str | None = new_run_token() if run_token == "" else run_token
        self._latest: dict[int, ClientPrivacy] = {}
        self._by_round: dict[int, dict[int, float]] = {}
        self._trained: dict[int, int] = {}
        self._unknown: dict[int, tuple[int, str]] = {}

    def mark_unknown(self, server_round: int, client_id: int, reason: str) -> None:
        """Client `client_id` sent an unusable report in `server_round`: its ε is unknown (∞).

        Call before `record` for that round, so the round's per-client ε shows it.
        """
        logger.warning(
            "round %d: client %d's privacy report is unusable (%s); its epsilon counts as "
            "infinite until it sends a usable one",
            server_round,
            client_id,
            reason,
        )
        self._unknown[client_id] = (server_round, reason)

    def unknown(self) -> dict[int, tuple[int, str]]:
        """Clients whose ε is unknown: client id → (round of the unusable report, why)."""
        return dict(self._unknown)

    def record(
        self, server_round: int, reports: list[ClientPrivacy], trained: list[int] | None = None
    ) -> None:
        """Take the reports of the clients that answered in `server_round`.

        `trained` names those that actually trained (the others declined); all of them when None.
        """
        for report in reports:
            previous = self._latest.get(report.client_id)
            if previous is not None and report.epsilon < previous.epsilon:
                logger.warning(
                    "client %d reported epsilon %.6g, below its earlier %.6g; keeping the larger",
                    report.client_id,
                    report.epsilon,
                    previous.epsilon,
                )
                report = replace(report, epsilon=previous.epsilon)
            if report.lifetime_epsilon < report.epsilon:
                # Every run's releases are in the lifetime: it is never below the run's own.
                report = replace(report, lifetime_epsilon=report.epsilon)
            if previous is not None and report.lifetime_epsilon < previous.lifetime_epsilon:
                logger.warning(
                    "client %d reported lifetime epsilon %.6g, below its earlier %.6g; keeping "
                    "the larger",
                    report.client_id,
                    report.lifetime_epsilon,
                    previous.lifetime_epsilon,
                )
                report = replace(report, lifetime_epsilon=previous.lifetime_epsilon)
            self._latest[report.client_id] = report
            unknown = self._unknown.get(report.client_id)
            if unknown is not None and unknown[0] < server_round:
                del self._unknown[report.client_id]  # a cumulative report covers that round
        self._trained[server_round] = len(reports) if trained is None else len(trained)
        snapshot = {client_id: report.epsilon for client_id, report in self._latest.items()}
        snapshot.update({client_id: math.inf for client_id in self._unknown})
        self._by_round[server_round] = dict(sorted(snapshot.items()))

    def epsilon_max(self) -> float:
        """The federation's example-level ε: the largest ε of any client (0 before any training).

        ∞ while any client's ε is unknown (see `mark_unknown`).
        """
        if self._unknown:
            return math.inf
        return max((report.epsilon for report in self._latest.values()), default=0.0)

    def lifetime_epsilon_max(self) -> float:
        """The largest lifetime ε of any client (every run on its ledger); ∞ if one is unknown."""
        if self._unknown:
            return math.inf
        return max((report.lifetime_epsilon for report in self._latest.values()), default=0.0)

    def epsilon_by_client(self, server_round: int) -> dict[int, float]:
        """Each client's cumulative ε as of the end of `server_round`."""
        return dict(self._by_round.get(server_round, {}))

    def clients_trained(self, server_round: int) -> int:
        """How many clients reported (trained) in `server_round`."""
        return self._trained.get(server_round, 0)

    def clients(self) -> list[ClientPrivacy]:
        """Latest report of every client that has trained, by client id (ε ∞ if unknown)."""
        return [
            replace(self._latest[key], epsilon=math.inf, lifetime_epsilon=math.inf)
            if key in self._unknown
            else self._latest[key]
            for key in sorted(self._latest)
        ]

    def restore(self, other: FederationPrivacy) -> None:
        """Take over another instance's records and run token (resuming from a checkpoint)."""
        self.run_token = other.run_token
        self._latest = dict(other._latest)
        self._by_round = dict(other._by_round)
        self._trained = dict(other._trained)
        self._unknown = dict(other._unknown)

    def to_state(self) -> dict[str, Any]:
        """Everything recorded so far as JSON-ready data (for the server's checkpoint)."""
        return {
            "run_token": self.run_token,
            "latest": [_finite(report.to_metrics()) for report in self.clients()],
            "by_round": {
                str(r): {str(c): _number(e) for c, e in eps.items()}
                for r, eps in self._by_round.items()
            },
            "trained": {str(r): n for r, n in self._trained.items()},
            "unknown": {str(c): [r, why] for c, (r, why) in self._unknown.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FederationPrivacy:
        """Rebuild from `to_state`'s output (an older state has no run token: None)."""
        token = state.get("run_token")
        privacy = cls(run_token=token if isinstance(token, str) and token else None)
        for metrics in state["latest"]:
            report = ClientPrivacy.from_metrics(
                {k: float(v) if v == "inf" else v for k, v in metrics.items()}
            )
            privacy._latest[report.client_id] = report
        privacy._by_round = {
            int(r): {int(c): float(e) for c, e in eps.items()}
            for r, eps in state["by_round"].items()
        }
        privacy._trained = {int(r): int(n) for r, n in state["trained"].items()}
        privacy._unknown = {
            int(c): (int(r), str(why)) for c, (r, why) in state.get("unknown", {}).items()
        }
        return privacy


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _finite(
    metrics: dict[str, int | float | list[int]],
) -> dict[str, int | float | str | list[int]]:
    return {
        key: _number(value) if isinstance(value, float) else value for key, value in metrics.items()
    }
