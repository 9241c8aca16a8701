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

Each round gets a fresh random 64-bit round id (`plan_round`), to which every client reply is
bound, so a reply from an earlier round or another run is dropped, never summed. A client that
refuses a stage (its own checks, e.g. of the threshold) is dropped and counted. A round whose
surviving clients are not connected in the graph is skipped (`SecAggSplit`); `split_warning` names
the settings that make that possible at run start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from privet.privacy.distributed_dp import (
    ROTATION_SEED_BYTES,
    DistributedDpError,
    DistributedDpSpec,
    plan_spec,
    survivors_needed,
)
from privet.privacy.secagg import (
    AdvertiseKeys,
    KeysBroadcast,
    MaskedInput,
    QuantizationSpec,
    Refusal,
    SecAggAbort,
    SecAggConfig,
    SecAggError,
    SecAggProtocolError,
    SecAggResult,
    SecAggServer,
    ShareKeys,
    SharesDelivery,
    UnmaskShares,
    build_graph,
    default_degree,
)
from privet.privacy.secagg.crypto import RandomSource
from privet.privacy.secagg.quantization import QuantizationError, conditional_rounding_radius
from privet.privacy.secagg.update_vector import decode_update_sum
from privet.privacy.secagg.wire import WireMessage, encode_request, read_reply, to_wire
from privet.task.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)

COMPLETE_GRAPH_UP_TO = 32
"""Up to this many clients per round every client is every other's neighbour (Bonawitz et al.);
above it, the sparse SecAgg+ graph keeps each client's work logarithmic in the cohort."""

DISTRIBUTED_COMPLETE_GRAPH_UP_TO = 64
"""The complete graph's limit under distributed DP. Its noise shares are sized for the round's
threshold t, and a sparse graph's t is per neighbourhood (9 of a 55-client round), so every
survivor of a larger round would carry about 2.5× the planned noise (benchmarks/README.md:
−5.6 points of accuracy at 1000 clients, 50 a round, against −2.0 with a complete graph). A
complete graph keeps t a fraction of the whole round, enforced by the cryptography. Its cost is
a mask per other client: n − 1 expansions of the vector instead of 2⌈log2 n⌉."""


def graph_degree(clients: float, configured: int | None, distributed: bool) -> int | None:
    """A round's SecAgg+ degree: the configured one, else complete (None) up to the limit."""
    if configured is not None:
        return configured
    limit = DISTRIBUTED_COMPLETE_GRAPH_UP_TO if distributed else COMPLETE_GRAPH_UP_TO
    return default_degree(int(clients)) if clients > limit else None


Replies = Mapping[int, Mapping[str, object]] | Iterable[tuple[int, Mapping[str, object]]]
"""The replies of one stage: client id → reply, or (client id, reply) pairs, which can show that a
client replied more than once."""
Exchange = Callable[[str, Mapping[int, WireMessage]], Replies]
"""Sends one stage's messages (client id → message) and returns the replies that arrived in time.

Stage names are those of `privacy.secagg.STAGES`; the "advertise_keys" messages are empty (the
round's settings travel beside them) and the "masked_input" stage is the TRAIN message, whose
reply carries the masked update. Clients that fail or time out are absent from the result. A reply
is the stage's protocol message or the client's `Refusal`, as plain data."""


@dataclass(frozen=True)
class DistributedDpSettings:
    """Distributed DP's part of the secure sum: the ring's bits, z, and the run's fixed grid.

    The grid and the cohort's total noise are planned once, for `grid_clients` clients and the
    noise fraction φ (`privacy.distributed_dp.plan_spec`), and every round uses them whatever
    its cohort: what the clients add must not depend on who was sampled.
    """

    bits: int
    noise_multiplier: float
    grid_clients: int
    """The cohort size the grid is sized for: a high quantile of the sampled count."""
    noise_fraction: float
    """φ: any ⌈φ·n⌉ of a round's n clients carry the noise z."""
    seed: int | None = None
    """The run's seed when it is reproducible: the rounds' public rotation seeds derive from it
    (else each is fresh from the operating system)."""

    def rotation_seed(self, server_round: int) -> bytes:
        """The public seed of a round's randomized Hadamard rotation."""
        if self.seed is None:
            return os.urandom(ROTATION_SEED_BYTES)
        material = f"privet/rotation-seed/{self.seed}/{server_round}".encode()
        return hashlib.sha256(material).digest()[:ROTATION_SEED_BYTES]


@dataclass(frozen=True)
class SecAggSettings:
    """The run's secure-aggregation settings, from the run configuration."""

    threshold: float
    degree: int | None
    levels: int
    stage_timeout: float
    distributed: DistributedDpSettings | None = None
    """Set (with the calibrated z) when the clients add the DP noise (`privacy.distributed_dp`)."""

    @classmethod
    def from_config(cls, config: RunConfig) -> SecAggSettings | None:
        """The settings, or None when secure aggregation is off.

        Called once as a run starts (by every engine and the deployed ServerApp), so this is
        where settings that can split the survivors get their warning (`split_warning`).
        """
        if not config.secure_aggregation:
            return None
        warning = split_warning(config)
        if warning is not None:
            logger.warning(warning)
        return cls(
            threshold=config.secagg_threshold,
            degree=config.secagg_degree,
            levels=config.secagg_levels,
            stage_timeout=config.secagg_timeout,
        )


def noise_fraction(threshold: float, expected_clients: float) -> float:
    """φ for distributed DP: the threshold as a fraction of the round (a count: of the expected).

    Never below ½: secure aggregation's threshold is a strict majority anyway.
    """
    fraction = threshold if threshold <= 1 else threshold / max(expected_clients, 1.0)
    return min(1.0, max(0.5, fraction))


def grid_clients(population: int, sample_rate: float) -> int:
    """The cohort distributed DP's grid is sized for: the mean plus 3 standard deviations.

    Rounds with more clients are still run, with their wraps counted; the grid must be the same
    in every round, so it cannot follow the sampled count.
    """
    mean = population * sample_rate
    spread = math.sqrt(population * sample_rate * (1 - sample_rate))
    return max(2, min(population, math.ceil(mean + 3 * spread)))


def distributed_spec(
    settings: DistributedDpSettings,
    clip_norm: float,
    num_params: int,
    clients: int,
    threshold: int,
    rotation_seed: bytes,
) -> DistributedDpSpec:
    """The spec of a round of ``clients``: the run's grid, shares W/n, and its survivors needed."""
    grid = plan_spec(
        clip_norm=clip_norm,
        noise_multiplier=settings.noise_multiplier,
        clients=settings.grid_clients,
        noise_fraction=settings.noise_fraction,
        dimension=num_params,
        bits=settings.bits,
        rotation_seed=rotation_seed,
    )
    needed = max(threshold, survivors_needed(clients, settings.noise_fraction))
    return grid.for_cohort(clients, needed)


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


def split_warning(config: RunConfig) -> str | None:
    """A one-line warning when dropouts can split the survivors without tripping the threshold.

    The rule, for the graph a round of the expected size gets: with k neighbours on a random
    Harary ring (k/2 each side) and t live holders needed per closed neighbourhood of k + 1,
    survivors are disconnected exactly when at least two runs of ≥ k/2 consecutive clients drop.
    A survivor next to such a run keeps at most k/2 + 1 live holders, so if t ≥ k/2 + 2 the
    threshold check already skips that round and no split gets further. With the bare majority
    t = k/2 + 1 and at least 2k + 2 clients, k dropouts at two places split the survivors while
    every neighbourhood keeps t live holders; the connectivity check then skips the round (model
    unchanged), so these settings get a warning. A complete graph never splits.
    """
    if not config.secure_aggregation:
        return None
    n = config.expected_clients_per_round
    degree = graph_degree(n, config.secagg_degree, config.distributed_dp)
    if degree is None or degree >= n - 1:
        return None
    try:
        t = threshold_for(degree + 1, config.secagg_threshold)
    except SecAggProtocolError:
        return None  # each round is refused at planning, with its own message
    half = degree // 2
    if t > half + 1 or n < 2 * degree + 2:
        return None
    return (
        f"secure aggregation with {degree} neighbours per client and threshold {t} of "
        f"{degree + 1} (secagg-degree {config.secagg_degree or 'auto'}, secagg-threshold "
        f"{config.secagg_threshold:g}, about {n} clients per round): as few as {degree} dropouts "
        f"({half} adjacent on the ring at each of two places) split the survivors, and such a "
        f"round is skipped with the model unchanged; use a larger --secagg-degree (or leave it "
        f"unset), or raise --secagg-threshold to a count of at least {half + 2}"
    )


def conditional_rounding_ratio(config: RunConfig, num_params: int) -> float | None:
    """Under client-level DP with secure aggregation, r/S of conditional rounding, else None.

    Clients scale their clipped update into radius r before rounding so the rounded update stays
    within S (`privacy.secagg.quantization.conditional_rounding_radius`); r/S depends only on the
    grid and the model size, so it is checked once, before any work: a grid too coarse for the
    model is a ConfigError, and one that shrinks updates by more than 1% gets a warning.
    """
    if not (config.secure_aggregation and config.client_level_dp):
        return None
    if config.distributed_dp:
        return distributed_rounding_ratio(config, num_params)
    try:
        ratio = conditional_rounding_radius(1.0, num_params, 2.0 / (config.secagg_levels - 1))
    except QuantizationError as error:
        raise ConfigError(
            f"secure aggregation with client-level DP: {error} (secagg-levels "
            f"{config.secagg_levels}, {num_params} parameters)"
        ) from None
    if ratio < 0.99:
        logger.warning(
            "secure aggregation with client-level DP: to keep the rounded update within the clip "
            "norm, clients shrink it to %.4g of the clip norm before rounding; raise "
            "--secagg-levels (now %d) to shrink it less",
            ratio,
            config.secagg_levels,
        )
    return ratio


def distributed_rounding_ratio(config: RunConfig, num_params: int) -> float:
    """Distributed DP's plan for a round of the expected size, checked before any work.

    Too few bits for the model and cohort is a ConfigError naming the fix; a grid so coarse that
    rounding shrinks updates by more than 1% gets a warning. Returns that shrink factor r/Δ.
    """
    from privet.privacy.distributed_dp import rounding_shrink
    from privet.server.client_dp import plan_client_level

    plan = plan_client_level(config)
    assert plan is not None
    clients = max(2, round(config.expected_clients_per_round))
    try:
        spec = plan_spec(
            clip_norm=config.client_clip_norm,
            noise_multiplier=plan.update_noise_multiplier,
            clients=grid_clients(config.clients, config.client_sample_rate),
            noise_fraction=noise_fraction(config.secagg_threshold, clients),
            dimension=num_params,
            bits=config.secagg_bits,
            rotation_seed=bytes(ROTATION_SEED_BYTES),
        )
    except (DistributedDpError, SecAggProtocolError) as error:
        raise ConfigError(
            f"{error} (secagg-bits {config.secagg_bits}, {num_params} parameters, about "
            f"{clients} clients per round)"
        ) from None
    ratio = rounding_shrink(spec)
    if ratio < 0.99:
        logger.warning(
            "distributed DP at %d bits: to keep each rounded update within its norm bound, "
            "clients shrink it to %.4g of the clip norm before rounding; raise --secagg-bits to "
            "shrink it less",
            config.secagg_bits,
            ratio,
        )
    return ratio


@dataclass(frozen=True)
class SecAggRoundPlan:
    """What the server fixed for one round before sending the TRAIN messages."""

    config: SecAggConfig
    spec: QuantizationSpec
    graph: dict[int, frozenset[int]]
    server: SecAggServer
    distributed: DistributedDpSpec | None = None
    """Under distributed DP, the clients' encoding (then `spec` only carries the ring and S)."""

    @property
    def neighbours(self) -> int:
        """Neighbours per client (the graph is regular)."""
        return len(next(iter(self.graph.values())))

    def train_config(self) -> dict[str, int | float | bytes]:
        """The keys a client needs, sent with the TRAIN message (its clip norm is sent apart)."""
        keys: dict[str, int | float | bytes] = dict(encode_request(self.config, self.spec))
        if self.distributed is not None:
            keys.update(self.distributed.to_config())
        return keys

    def with_clip_norm(self, clip_norm: float) -> SecAggRoundPlan:
        """The same round with the clip norm known when it trains.

        A plan made a round ahead has the clip norm of the round before; the bit width does not
        depend on it.
        """
        spec = QuantizationSpec(
            clip_norm=clip_norm,
            num_clients=self.spec.num_clients,
            levels=self.spec.levels,
            bits=self.spec.bits,
        )
        return dataclasses.replace(self, spec=spec)


def plan_round(
    settings: SecAggSettings,
    client_ids: Sequence[int],
    num_params: int,
    clip_norm: float,
    random_bytes: RandomSource = os.urandom,
    server_round: int = 0,
) -> SecAggRoundPlan:
    """Graph, threshold, quantization and a fresh round id for the sampled clients of one round.

    The vector has ``num_params`` update coordinates plus the within-clip coordinate; the bit
    width is the smallest for which the sum of all sampled clients cannot overflow. The round id
    is 64 random bits from ``random_bytes`` (``os.urandom``): it binds every key, ciphertext and
    client reply to this round of this run (the server round number is only the message group).
    Under distributed DP ``server_round`` picks the round's public rotation seed.
    """
    n = len(client_ids)
    if n < 2:
        raise SecAggProtocolError(
            f"secure aggregation needs at least 2 clients in a round, {n} sampled"
        )
    degree = graph_degree(n, settings.degree, settings.distributed is not None)
    graph = build_graph(client_ids, degree, random_bytes)
    closed = len(next(iter(graph.values()))) + 1
    threshold = threshold_for(closed, settings.threshold)
    distributed = None
    if settings.distributed is None:
        spec = QuantizationSpec(clip_norm=clip_norm, num_clients=n, levels=settings.levels)
        length = num_params + 1
    else:
        try:
            distributed = distributed_spec(
                settings.distributed,
                clip_norm,
                num_params,
                n,
                threshold,
                settings.distributed.rotation_seed(server_round),
            )
        except DistributedDpError as error:
            raise SecAggProtocolError(str(error)) from None
        # The grid spec only carries the ring and the clip norm; `distributed` is the encoding.
        spec = QuantizationSpec(clip_norm=clip_norm, num_clients=n, levels=2, bits=distributed.bits)
        length = distributed.padded_dimension
    config = SecAggConfig(
        round_id=int.from_bytes(random_bytes(8), "big"),
        threshold=threshold,
        bits=int(spec.bits),  # type: ignore[arg-type]
        vector_length=length,
    )
    return SecAggRoundPlan(config, spec, graph, SecAggServer(config, graph), distributed)


def _parse(cls: type, replies: Replies, stage: str, server: SecAggServer) -> list:
    """The stage's messages that parse and come from the client they were addressed to.

    A client that replied more than once, sent a malformed reply or one naming another client is
    dropped from the round (``server.reject``, logged); a `Refusal` is passed to
    ``server.refuse``. The server's stage method then drops stale replies.
    """
    pairs = sorted(
        replies.items() if isinstance(replies, Mapping) else replies, key=lambda pair: pair[0]
    )
    counts: dict[int, int] = {}
    for client_id, _ in pairs:
        counts[client_id] = counts.get(client_id, 0) + 1
    parsed = []
    for client_id, data in pairs:
        if counts[client_id] > 1:
            server.reject(client_id, stage, "replied more than once in this stage")
            continue
        try:
            message = read_reply(cls, data)
        except SecAggProtocolError as exc:
            server.reject(client_id, stage, f"malformed reply: {exc}")
            continue
        if message.client_id != client_id:
            server.reject(client_id, stage, f"reply names client {message.client_id}")
            continue
        if isinstance(message, Refusal):
            server.refuse(message)
            continue
        parsed.append(message)
    return parsed


def run_secure_sum(plan: SecAggRoundPlan, exchange: Exchange) -> SecAggResult:
    """The four stages of one round's secure sum, over the clients of ``plan``'s graph.

    Raises `SecAggAbort` when too few clients survive a stage or the survivors are split
    (no sum is released) and another `SecAggError` when the protocol cannot go on; the round
    must then be skipped. Clients dropped for bad replies or refusals are in
    ``plan.server.rejected`` and ``plan.server.refusals`` either way.
    """

    def one_lane(now: Lane, ahead: Lane | None) -> tuple[Replies, Replies]:
        return exchange(now.stage, now.messages), ()

    return run_folded_sum(plan, one_lane, None, None)


@dataclass(frozen=True)
class Lane:
    """One stage of one round's secure sum in an exchange: the stage and its messages."""

    stage: str
    messages: Mapping[int, WireMessage]


LaneExchange = Callable[[Lane, Lane | None], tuple[Replies, Replies]]
"""One exchange that can carry two rounds' stages at once: this round's (``now``) and the next
round's (``ahead``, or None). A client in both lanes gets one message holding both parts; a client
in one lane gets that lane's message alone. Returns the replies of each lane (a client whose
message failed is absent from both; one whose ahead part failed, from the ahead lane only)."""


@dataclass
class KeysAhead:
    """The next round's secure sum, begun during this round's exchanges (stage folding).

    SecAgg+'s first two stages (advertise keys, share keys) depend on nothing a round produces,
    so round r + 1's ride along with round r's last two (its keys are asked for with round r's
    TRAIN message, its shares exchanged with round r's unmask): a round whose keys came ahead
    needs two exchanges (TRAIN + masked input, unmask), not four. Its clients are sampled when
    round r starts (`server.strategy.PrivetFedAvg.presample`); if the clients round r + 1 really
    samples differ (a node declined, was excluded or went offline in round r), or any part of
    the fold failed, round r + 1 runs its four stages from the start with a fresh plan.
    """

    server_round: int
    plan: SecAggRoundPlan
    counts: dict[int, int] = field(default_factory=dict)
    """Example counts the clients sent with their keys (their aggregation weights)."""
    deliveries: dict[int, SharesDelivery] | None = None
    """Each surviving client's shares, once the ahead key exchange finished (then it is ready)."""
    failure: str | None = None
    """Why the fold was given up (the round then runs all four stages)."""

    @property
    def ready(self) -> bool:
        """Whether the round can start at its masked-input stage."""
        return self.deliveries is not None and self.failure is None

    def give_up(self, reason: str) -> None:
        """Abandon the fold; the round it was for starts from its first stage."""
        if self.failure is None:
            self.failure = reason
            logger.info(
                "round %d's keys could not be exchanged ahead (%s); it will run all four stages",
                self.server_round,
                reason,
            )


def run_folded_sum(
    plan: SecAggRoundPlan,
    exchange: LaneExchange,
    deliveries: Mapping[int, SharesDelivery] | None,
    ahead: KeysAhead | None,
) -> SecAggResult:
    """One round's secure sum, carrying the next round's key exchange in its last two stages.

    ``deliveries``: this round's shares when its keys were exchanged ahead (the round starts at
    its masked input); None runs the first two stages now. ``ahead``, when given, is advertised
    and keyed in this round's masked-input and unmask exchanges; it is left ready, or with the
    reason it was given up. Errors as in `run_secure_sum`; a round that fails before its unmask
    stage gives up the fold.
    """
    server = plan.server
    if deliveries is None:
        advertised, _ = exchange(Lane("advertise_keys", {u: {} for u in sorted(plan.graph)}), None)
        broadcasts = server.receive_keys(
            _parse(AdvertiseKeys, advertised, "advertise_keys", server)
        )
        replies, _ = exchange(
            Lane("share_keys", {u: to_wire(m) for u, m in broadcasts.items()}), None
        )
        deliveries = server.route_shares(_parse(ShareKeys, replies, "share_keys", server))
    next_lane = None if ahead is None else Lane("advertise_keys", {u: {} for u in ahead.plan.graph})
    replies, ahead_replies = exchange(
        Lane("masked_input", {u: to_wire(m) for u, m in deliveries.items()}), next_lane
    )
    next_broadcasts: dict[int, KeysBroadcast] | None = None
    if ahead is not None:
        next_server = ahead.plan.server
        try:
            next_broadcasts = next_server.receive_keys(
                _parse(AdvertiseKeys, ahead_replies, "advertise_keys", next_server)
            )
        except SecAggError as exc:
            ahead.give_up(f"advertise keys: {exc}")
    try:
        requests = server.collect_masked(_parse(MaskedInput, replies, "masked_input", server))
        check_noise_carried(plan, len(requests))
    except SecAggError:
        if ahead is not None:
            ahead.give_up(f"round {ahead.server_round - 1} ended before its unmask stage")
        raise
    next_lane = (
        None
        if ahead is None or next_broadcasts is None
        else Lane("share_keys", {u: to_wire(m) for u, m in next_broadcasts.items()})
    )
    replies, ahead_replies = exchange(
        Lane("unmask", {u: to_wire(m) for u, m in requests.items()}), next_lane
    )
    if ahead is not None and next_broadcasts is not None:
        next_server = ahead.plan.server
        try:
            ahead.deliveries = next_server.route_shares(
                _parse(ShareKeys, ahead_replies, "share_keys", next_server)
            )
        except SecAggError as exc:
            ahead.give_up(f"share keys: {exc}")
    return server.unmask(_parse(UnmaskShares, replies, "unmask", server))


def check_noise_carried(plan: SecAggRoundPlan, survivors: int) -> None:
    """Under distributed DP, refuse to unmask a sum of fewer shares than the noise is sized for.

    Raised after the masked inputs are in and before any unmask request goes out, so the server
    never sees a sum that carries less noise than planned.
    """
    spec = plan.distributed
    if spec is not None and survivors < spec.min_survivors:
        raise SecAggAbort(
            "masked_input",
            f"{survivors} masked updates arrived, fewer than the {spec.min_survivors} whose noise "
            "shares make up distributed DP's noise; nothing was unmasked",
            survivors,
            spec.min_survivors,
        )


@dataclass(frozen=True)
class DistributedSum:
    """A distributed-DP round's sum: its encoding and its coordinates at the ring's edge."""

    spec: DistributedDpSpec
    edge_coordinates: int


@dataclass(frozen=True)
class SecureSum:
    """The unmasked round sum in floats: Σ w_k·Δ_k over the survivors, and what it covers."""

    weighted_update_sum: list[np.ndarray]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    within_clip: int
    error_bound: float
    distributed: DistributedSum | None = None
    """Under distributed DP: the sum already carries the clients' noise (no within-clip count)."""


def decode_secure_sum(
    plan: SecAggRoundPlan, result: SecAggResult, shapes: Sequence[Sequence[int]]
) -> SecureSum:
    """Dequantize the update part and read the count of within-clip updates exactly."""
    survivors = len(result.survivor_ids)
    if plan.distributed is not None:
        spec = plan.distributed
        try:
            update = spec.decode(result.aggregate, shapes)
            edges = spec.edge_count(result.aggregate)
        except DistributedDpError as error:
            raise SecAggProtocolError(str(error)) from None
        return SecureSum(
            weighted_update_sum=update,
            survivors=result.survivor_ids,
            dropped=result.dropped_ids,
            within_clip=0,
            # Rounding moves each rotated coordinate of each share by less than one step γ.
            error_bound=survivors * spec.scale,
            distributed=DistributedSum(spec, edges),
        )
    update, within = decode_update_sum(result.aggregate, survivors, plan.spec, shapes)
    return SecureSum(
        weighted_update_sum=update,
        survivors=result.survivor_ids,
        dropped=result.dropped_ids,
        within_clip=within,
        error_bound=plan.spec.error_bound(survivors),
    )
