"""The server's side of secure aggregation in a training round, as plain code (no Flower).

One round: the server fixes the neighbourhood graph, threshold and quantization for the clients
it sampled; `run_secure_sum` drives the four stages (advertise keys, share keys, masked input —
carried by the TRAIN message: each client trains, clips its update to S and masks it at once —
and unmask) through an ``exchange`` callable that the Flower adapter implements with the Grid (and
a test in-process), and `decode_secure_sum` turns the unmasked sum back into floats.

What the clients put in the secure sum: their clipped update scaled by a weight w_k ≤ 1 (the
example count relative to the largest in the round, or 1 under client-level DP, whose mean is
unweighted), followed by one coordinate that is the grid's top (1) or bottom (0) according to
whether the unscaled update was within S. The server thus learns Σ w_k·Δ_k and how many updates
were within the clip bound, and nothing about any single client.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from privacy.secagg import (
    AdvertiseKeys,
    MaskedInput,
    QuantizationSpec,
    SecAggConfig,
    SecAggProtocolError,
    SecAggResult,
    SecAggServer,
    ShareKeys,
    UnmaskShares,
    build_graph,
    default_degree,
)
from privacy.secagg.update_vector import decode_update_sum
from privacy.secagg.wire import WireMessage, from_wire, to_wire
from task.config import RunConfig

logger = logging.getLogger(__name__)

COMPLETE_GRAPH_UP_TO = 32
"""Up to this many clients per round every client is every other's neighbour (Bonawitz et al.);
above it, the sparse SecAgg+ graph keeps each client's work logarithmic in the cohort."""

Exchange = Callable[[str, Mapping[int, WireMessage]], Mapping[int, Mapping[str, object]]]
"""Sends one stage's messages (client id → message) and returns the replies that arrived in time.

Stage names are those of `privacy.secagg.STAGES`; the "advertise_keys" messages are empty (the
round's settings travel beside them) and the "masked_input" stage is the TRAIN message, whose
reply carries the masked update. Clients that fail or time out are absent from the result."""


@dataclass(frozen=True)
class SecAggSettings:
    """The run's secure-aggregation settings, from the run configuration."""

    threshold: float
    degree: int | None
    levels: int
    stage_timeout: float

    @classmethod
    def from_config(cls, config: RunConfig) -> SecAggSettings | None:
        """The settings, or None when secure aggregation is off."""
        if not config.secure_aggregation:
            return None
        return cls(
            threshold=config.secagg_threshold,
            degree=config.secagg_degree,
            levels=config.secagg_levels,
            stage_timeout=config.secagg_timeout,
        )


def threshold_for(neighbourhood: int, threshold: float) -> int:
    """The threshold t for a closed neighbourhood (a client and its neighbours) of that size.

    A fraction is rounded up; the result is raised to a strict majority if needed, because a
    threshold of at most half would let a server that tells holders different stories rebuild
    both secrets of a client (Bonawitz et al. 2017, §4). A count above the neighbourhood is an
    error: the round could never unmask.
    """
    majority = neighbourhood // 2 + 1
    if threshold <= 1:
        return min(neighbourhood, max(majority, math.ceil(threshold * neighbourhood - 1e-9)))
    t = int(threshold)
    if t > neighbourhood:
        raise SecAggProtocolError(
            f"threshold {t} exceeds the {neighbourhood} clients of a neighbourhood this round"
        )
    return max(majority, t)


@dataclass(frozen=True)
class SecAggRoundPlan:
    """What the server fixed for one round before sending the TRAIN messages."""

    config: SecAggConfig
    spec: QuantizationSpec
    graph: dict[int, frozenset[int]]
    server: SecAggServer

    @property
    def neighbours(self) -> int:
        """Neighbours per client (the graph is regular)."""
        return len(next(iter(self.graph.values())))

    def train_config(self) -> dict[str, int | float]:
        """The keys a client needs, sent with the TRAIN message (its clip norm is sent apart)."""
        return {
            "secagg-round": self.config.round_id,
            "secagg-threshold": self.config.threshold,
            "secagg-bits": int(self.spec.bits),  # type: ignore[arg-type]
            "secagg-levels": self.spec.levels,
            "secagg-clients": self.spec.num_clients,
            "secagg-length": self.config.vector_length,
        }


def plan_round(
    settings: SecAggSettings,
    client_ids: Sequence[int],
    round_id: int,
    num_params: int,
    clip_norm: float,
) -> SecAggRoundPlan:
    """Graph, threshold and quantization for the sampled clients of one round.

    The vector has ``num_params`` update coordinates plus the within-clip coordinate; the bit
    width is the smallest for which the sum of all sampled clients cannot overflow.
    """
    n = len(client_ids)
    if n < 2:
        raise SecAggProtocolError(
            f"secure aggregation needs at least 2 clients in a round, {n} sampled"
        )
    degree = settings.degree
    if degree is None and n > COMPLETE_GRAPH_UP_TO:
        degree = default_degree(n)
    graph = build_graph(client_ids, degree)
    closed = len(next(iter(graph.values()))) + 1
    spec = QuantizationSpec(clip_norm=clip_norm, num_clients=n, levels=settings.levels)
    config = SecAggConfig(
        round_id=round_id,
        threshold=threshold_for(closed, settings.threshold),
        bits=int(spec.bits),  # type: ignore[arg-type]
        vector_length=num_params + 1,
    )
    return SecAggRoundPlan(config, spec, graph, SecAggServer(config, graph))


def _parse(cls: type, replies: Mapping[int, Mapping[str, object]], stage: str) -> list:
    """Replies that parse and come from the client they were addressed to; others dropped."""
    parsed = []
    for client_id, data in sorted(replies.items()):
        try:
            message = from_wire(cls, data)
        except SecAggProtocolError as exc:
            logger.warning("client %d dropped at '%s': malformed reply: %s", client_id, stage, exc)
            continue
        if message.client_id != client_id:
            logger.warning(
                "client %d dropped at '%s': reply names client %d",
                client_id,
                stage,
                message.client_id,
            )
            continue
        parsed.append(message)
    return parsed


def run_secure_sum(plan: SecAggRoundPlan, exchange: Exchange) -> SecAggResult:
    """The four stages of one round's secure sum, over the clients of ``plan``'s graph.

    Raises `SecAggAbort` when too few clients survive a stage (no sum is released) and another
    `SecAggError` when the protocol cannot go on; the round must then be skipped.
    """
    server = plan.server
    advertised = exchange("advertise_keys", {u: {} for u in sorted(plan.graph)})
    broadcasts = server.receive_keys(_parse(AdvertiseKeys, advertised, "advertise_keys"))
    replies = exchange("share_keys", {u: to_wire(m) for u, m in broadcasts.items()})
    deliveries = server.route_shares(_parse(ShareKeys, replies, "share_keys"))
    replies = exchange("masked_input", {u: to_wire(m) for u, m in deliveries.items()})
    requests = server.collect_masked(_parse(MaskedInput, replies, "masked_input"))
    replies = exchange("unmask", {u: to_wire(m) for u, m in requests.items()})
    return server.unmask(_parse(UnmaskShares, replies, "unmask"))


@dataclass(frozen=True)
class SecureSum:
    """The unmasked round sum in floats: Σ w_k·Δ_k over the survivors, and what it covers."""

    weighted_update_sum: list[np.ndarray]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    within_clip: int
    error_bound: float


def decode_secure_sum(
    plan: SecAggRoundPlan, result: SecAggResult, shapes: Sequence[Sequence[int]]
) -> SecureSum:
    """Dequantize the update part and read the count of within-clip updates exactly."""
    survivors = len(result.survivor_ids)
    update, within = decode_update_sum(result.aggregate, survivors, plan.spec, shapes)
    return SecureSum(
        weighted_update_sum=update,
        survivors=result.survivor_ids,
        dropped=result.dropped_ids,
        within_clip=within,
        error_bound=plan.spec.error_bound(survivors),
    )
