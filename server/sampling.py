"""Which clients train in a round: Poisson sampling, so client-level accounting may amplify."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
