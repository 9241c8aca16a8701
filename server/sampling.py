"""Which clients train in a round: Poisson sampling (the default) or a fixed-size sample.

Poisson sampling — each client independently with probability q — is what client-level DP
accounting amplifies by, so it is the default and the only scheme allowed with client-level DP.
A fixed-size sample (exactly K clients, uniformly without replacement) is what many FL studies
and systems use; it is offered for runs whose privacy is example-level only, where the sampling of
clients does not enter the accounting (a client's ε counts only the rounds it trained in).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from privet.task.config import CLIENT_SAMPLING_NAMES


def poisson_sample(client_ids: Sequence[int], rate: float, rng: np.random.Generator) -> list[int]:
    """Each client independently with probability `rate` (all of them when rate is 1).

    The draw is made for every client id in sorted order, so a seeded generator gives the same
    sample whatever order the nodes were discovered in.
    """
    ordered = sorted(client_ids)
    if rate >= 1.0:
        return ordered
    draws = rng.random(len(ordered))
    return [client for client, draw in zip(ordered, draws, strict=True) if draw < rate]


def fixed_size_sample(client_ids: Sequence[int], size: int, rng: np.random.Generator) -> list[int]:
    """Exactly `size` clients (all of them when fewer are left), uniformly without replacement.

    Drawn from the sorted ids, so a seeded generator gives the same sample in any discovery order.
    """
    ordered = sorted(client_ids)
    if size >= len(ordered):
        return ordered
    chosen = rng.choice(len(ordered), size=size, replace=False)
    return sorted(ordered[int(index)] for index in chosen)


def sample_clients(
    client_ids: Sequence[int],
    scheme: str,
    rate: float,
    size: int,
    rng: np.random.Generator,
) -> list[int]:
    """The round's clients under `scheme`: Poisson at `rate`, or a fixed sample of `size`."""
    if scheme == "poisson":
        return poisson_sample(client_ids, rate, rng)
    if scheme == "fixed":
        return fixed_size_sample(client_ids, size, rng)
    raise ValueError(f"unknown client sampling {scheme!r}; choose one of {CLIENT_SAMPLING_NAMES}")


class ClientSampler:
    """A run's client sampling: its scheme, rate or size, and the generator it draws from.

    The generator is part of the run's state: a resumed run restores it (see
    `server.strategy.PrivetFedAvg.checkpoint_state`) so the rounds after a restart sample as
    an uninterrupted run would have.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        *,
        rate: float,
        scheme: str = "poisson",
        size: int | None = None,
    ) -> None:
        self.rng = rng
        self.rate = rate
        self.scheme = scheme
        self.size = size

    def sample(self, client_ids: Sequence[int]) -> list[int]:
        """The round's clients among `client_ids` (sorted)."""
        size = self.size if self.size is not None else len(client_ids)
        return sample_clients(client_ids, self.scheme, self.rate, size, self.rng)
