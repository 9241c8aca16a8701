"""Distributed DP (issue 16): the clients' encoding, what the server can unmask, and the release.

The protocol rounds below run the real client code (`client.secure_aggregation.begin/answer`) and
the real server driver (`server.secure_aggregation`); the exchange only plays the network. The
test rebuilds each client's rounded, noise-free integer vector from the same dither seed, so the
difference between what the server unmasks and the plain sum of those vectors is exactly the
noise the clients added.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pytest

from privet.client.secure_aggregation import PendingInput, SecAggRequest, answer, begin
from privet.client.training_round import clip_update
from privet.privacy.discrete_noise import discrete_gaussian_pmf
from privet.privacy.distributed_dp import (
    MAX_TOTAL_VARIANCE,
    DistributedDpError,
    DistributedDpSpec,
    plan_spec,
    round_within,
)
from privet.privacy.ledger import PrivacyLedger
from privet.privacy.rotation import rotate
from privet.privacy.secagg import Refusal, SecAggAbort
from privet.privacy.secagg.crypto import SeededRandom
from privet.server.client_dp import ClientLevelPlan
from privet.server.distributed_release import DistributedDpRelease
from privet.server.federation_privacy import FederationPrivacy
from privet.server.round_book import RoundBook
from privet.server.secure_aggregation import (
    DistributedDpSettings,
    SecAggSettings,
    decode_secure_sum,
    plan_round,
    run_secure_sum,
)

SHAPES = [(20, 10), (30,)]
NUM_PARAMS = sum(math.prod(s) for s in SHAPES)  # 230 → 256 rotated coordinates
CLIP = 1.0
Z = 1.2


def ddp_settings(bits: int = 16, threshold: float = 0.6) -> SecAggSettings:
    return SecAggSettings(
        threshold=threshold,
        degree=None,
        levels=2**16,
        stage_timeout=5.0,
        distributed=DistributedDpSettings(
            bits=bits, noise_multiplier=Z, grid_clients=6, noise_fraction=max(threshold, 0.5)
        ),
    )


def clipped_updates(ids, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for u in ids:
        raw = [rng.normal(0, 0.15, size=s) for s in SHAPES]
        out[u] = clip_update(raw, CLIP)[0]
    return out


def dg_variance(sigma2: float) -> float:
    """The exact variance of the discrete Gaussian of parameter σ² (from its pmf)."""
    reach = int(40 * math.sqrt(sigma2)) + 40
    support = np.arange(-reach, reach + 1)
    return float(np.sum(discrete_gaussian_pmf(sigma2, support) * support.astype(float) ** 2))


def secure_round(ids, seed, *, drop=(), bits=16, noise_seeds=None):
    """One distributed-DP round; returns (plan, result, updates, dither seeds)."""
    plan = plan_round(ddp_settings(bits), list(ids), NUM_PARAMS, CLIP)
    request = SecAggRequest.from_train_config(plan.train_config(), CLIP)
    assert request is not None and request.distributed == plan.distributed
    updates = clipped_updates(ids, seed)
    dithers = {u: seed * 1000 + u for u in ids}
    pending = {
        u: PendingInput(
            updates[u],
            True,
            request.spec,
            dithers[u],
            distributed=request.distributed,
            noise_seed=None if noise_seeds is None else noise_seeds[u],
        )
        for u in ids
    }
    states: dict[int, dict] = {}

    def exchange(stage, messages):
        replies = {}
        for u, message in messages.items():
            if stage == "masked_input" and u in drop:
                continue
            if stage == "advertise_keys":
                states[u], replies[u] = begin(u, request, NUM_PARAMS)
                continue
            states[u], replies[u], _ = answer(stage, states[u], message, pending[u], 1.0)
        return replies

    return plan, run_secure_sum(plan, exchange), updates, dithers


def plain_integer_sum(plan, updates, dithers, survivors) -> np.ndarray:
    """Σ of the survivors' rounded integer vectors, without noise (the test's own encoding)."""
    spec = plan.distributed
    total = np.zeros(spec.padded_dimension, dtype=np.int64)
    for u in survivors:
        grid = rotate(np.concatenate([a.ravel() for a in updates[u]]), spec.rotation_seed)
        total += round_within(grid / spec.scale, spec.norm_bound, np.random.default_rng(dithers[u]))
    return total


def test_what_the_server_unmasks_is_the_plain_sum_plus_noise_of_the_planned_variance():
    # Three kinds of round: 5 sampled and all survive, 4 sampled and all survive, 5 sampled and
    # one drops. Full cohorts of either size carry the same total noise W; the dropout less.
    noise: dict[tuple[int, int], list[np.ndarray]] = {(5, 5): [], (4, 4): [], (5, 4): []}
    planned = {}
    totals = set()
    for seed in range(27):
        cohort, drop = [(5, set()), (4, set()), (5, {3})][seed % 3]
        plan, result, updates, dithers = secure_round(range(cohort), seed, drop=drop)
        spec = plan.distributed
        assert spec.cohort == cohort and spec.local_variance == Fraction(
            spec.total_variance, cohort
        )
        totals.add(spec.total_variance)
        assert result.survivor_ids == tuple(u for u in range(cohort) if u not in drop)
        plain = plain_integer_sum(plan, updates, dithers, result.survivor_ids)
        difference = spec.centred(np.mod(result.aggregate.astype(np.int64) - plain, spec.modulus))
        key = (cohort, len(result.survivor_ids))
        noise[key].append(difference)
        planned[key] = float(spec.local_variance)
        # The server's decoding is deterministic post-processing of what it unmasked: no noise.
        secure = decode_secure_sum(plan, result, SHAPES)
        again = decode_secure_sum(plan, result, SHAPES)
        for a, b in zip(secure.weighted_update_sum, again.weighted_update_sum, strict=True):
            assert np.array_equal(a, b)
        centred = spec.centred(result.aggregate)
        assert secure.distributed is not None
        assert secure.distributed.edge_coordinates == np.count_nonzero(
            np.abs(centred) >= 7 * spec.modulus // 16
        )
    assert len(totals) == 1  # the run's W, whatever the cohort
    variances = {}
    for (cohort, survivors), parts in noise.items():
        values = np.concatenate(parts).astype(np.float64)
        expected = survivors * dg_variance(planned[cohort, survivors])
        variances[cohort, survivors] = expected
        n = values.size  # 9 rounds x 256 coordinates
        assert abs(values.mean()) < 5 * math.sqrt(expected / n)
        # The sample variance of n Gaussian values has relative std sqrt(2/n) (~2.5% here).
        assert values.var() == pytest.approx(expected, rel=5 * math.sqrt(2 / n))
        # Tails like a Gaussian of that variance: ~4.6% beyond 2 std, ~0.27% beyond 3.
        beyond2 = np.mean(np.abs(values) > 2 * math.sqrt(expected))
        assert 0.03 < beyond2 < 0.065
    (total,) = totals
    assert variances[5, 5] == pytest.approx(total, rel=1e-3)
    assert variances[4, 4] == pytest.approx(total, rel=1e-3)
    assert variances[5, 4] == pytest.approx(0.8 * total, rel=1e-3)


def test_the_noise_is_sized_for_the_threshold_and_fewer_survivors_are_never_unmasked():
    plan, result, _, _ = secure_round(range(5), 0)
    spec = plan.distributed
    t = plan.config.threshold
    assert spec.min_survivors == t == 3  # 0.6 of 5 rounded up
    # t shares already carry the whole noise z·Δ; 5 carry more.
    assert spec.total_noise_multiplier(t) >= Z
    assert spec.total_variance == math.ceil(Z**2 * spec.norm_bound**2 / 0.6)
    assert spec.local_variance == Fraction(spec.total_variance, 5)
    # Survivors pass the protocol's own threshold (3) but not... a plan sized for 4 shares:
    import dataclasses

    sized_for_four = dataclasses.replace(
        plan, distributed=dataclasses.replace(spec, min_survivors=4)
    )
    from privet.server import secure_aggregation as server_side

    with pytest.raises(SecAggAbort, match="fewer than the 4 whose noise shares"):
        server_side.check_noise_carried(sized_for_four, 3)
    server_side.check_noise_carried(sized_for_four, 4)


def test_a_reproducible_run_seeds_the_noise_and_a_deployment_draws_it_fresh():
    seeds = {u: bytes([u]) * 32 for u in range(3)}
    _, first, _, _ = secure_round(range(3), 7, noise_seeds=seeds)
    _, second, _, _ = secure_round(range(3), 7, noise_seeds=seeds)
    # Different round plans (fresh rotation seeds, masks) but the same seeded noise source:
    # each client's noise bytes are the seeded keystream.
    source = SeededRandom(seeds[0])
    assert source(8) == SeededRandom(seeds[0])(8)
    # Unseeded (None): the operating system's randomness, so two encodings of one update differ.
    spec = plan_spec(
        clip_norm=CLIP,
        noise_multiplier=Z,
        clients=3,
        noise_fraction=2 / 3,
        dimension=NUM_PARAMS,
        bits=16,
        rotation_seed=os.urandom(16),
    )
    update = clipped_updates([0], 1)[0]
    fresh = [spec.encode(update, np.random.default_rng(1)) for _ in range(2)]
    assert not np.array_equal(fresh[0], fresh[1])
    seeded = [
        spec.encode(update, np.random.default_rng(1), SeededRandom(seeds[1])) for _ in range(2)
    ]
    assert np.array_equal(seeded[0], seeded[1])
    assert first.survivor_ids == second.survivor_ids == (0, 1, 2)


def test_rounding_keeps_every_clients_vector_within_the_norm_bound():
    spec = plan_spec(
        clip_norm=CLIP,
        noise_multiplier=Z,
        clients=20,
        noise_fraction=0.7,
        dimension=5000,
        bits=12,
        rotation_seed=os.urandom(16),
    )
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.normal(size=5000)
        x *= CLIP / np.linalg.norm(x)  # exactly at the clip norm: the hardest case
        rounded = round_within(rotate(x, spec.rotation_seed) / spec.scale, spec.norm_bound, rng)
        assert np.linalg.norm(rounded.astype(float)) <= spec.norm_bound


def test_fewer_bits_give_a_coarser_grid_and_too_few_are_refused_in_one_line():
    specs = {
        bits: plan_spec(
            clip_norm=CLIP,
            noise_multiplier=Z,
            clients=20,
            noise_fraction=0.7,
            dimension=8000,
            bits=bits,
            rotation_seed=bytes(16),
        )
        for bits in (16, 14, 12)
    }
    assert specs[16].scale < specs[14].scale < specs[12].scale
    for bits in (14, 12):
        assert specs[bits].expected_wraps(20) == pytest.approx(0.01, rel=0.05)
    # At 16 bits the ring would allow more noise units than the sampler takes: W is capped, the
    # grid a little coarser, and wraps rarer still.
    assert specs[16].total_variance <= MAX_TOTAL_VARIANCE
    assert specs[16].expected_wraps(20) < 0.01
    with pytest.raises(DistributedDpError, match="raise --secagg-bits") as raised:
        plan_spec(
            clip_norm=CLIP,
            noise_multiplier=Z,
            clients=20,
            noise_fraction=0.7,
            dimension=8000,
            bits=8,
            rotation_seed=bytes(16),
        )
    assert "\n" not in str(raised.value)


def test_a_tampered_spec_in_the_train_config_is_refused():
    plan = plan_round(ddp_settings(), [0, 1, 2], NUM_PARAMS, CLIP)
    keys = plan.train_config()
    for key, value in (
        ("ddp-total-variance", 0),
        ("ddp-cohort", 1),  # fewer clients than the survivors it needs
        ("ddp-rotation-seed", b"short"),
        ("ddp-bits", 15),  # differs from the ring
        ("ddp-dimension", NUM_PARAMS * 4),  # differs from the vector length
        ("ddp-min-survivors", 1),  # fewer than the threshold
    ):
        with pytest.raises(Exception, match="distributed DP") as raised:
            SecAggRequest.from_train_config({**keys, key: value}, CLIP)
        assert "\n" not in str(raised.value)
    partial = {k: v for k, v in keys.items() if k != "ddp-scale"}
    with pytest.raises(Exception, match="lacks the distributed-DP key ddp-scale"):
        SecAggRequest.from_train_config(partial, CLIP)
    assert DistributedDpSpec.from_config({"secagg-bits": 16}) is None


def test_the_release_adds_no_noise_and_charges_the_survivors_shares():
    plan, result, _, _ = secure_round(range(5), 3, drop={4})
    secure = decode_secure_sum(plan, result, SHAPES)
    ledger = PrivacyLedger(owner="server", level="client", delta=1e-5)
    client_plan = ClientLevelPlan(Z, Z, 0.25, 5.0, None)
    release = DistributedDpRelease(client_plan, CLIP, ledger, delta=1e-5)
    book = RoundBook(FederationPrivacy())
    book.outcome(1).secure_aggregation = {"status": "ok"}
    released = release.release_secure_sum(book, 1, secure, {u: 1.0 for u in secure.survivors})
    for got, total in zip(released, secure.weighted_update_sum, strict=True):
        assert np.array_equal(got, total / 5.0)  # exactly Σ / expected clients
    assert ledger.rounds() == [1]
    (event,) = ledger.events()
    spec = plan.distributed
    assert event.summands == 4 and event.local_variance == float(spec.local_variance)
    assert event.cohort == 5 and not event.amplified  # a client dropped
    assert event.l2_sensitivity == spec.norm_bound and event.sample_rate == 0.25
    assert event.dimension == spec.padded_dimension
    details = book.outcome(1).secure_aggregation["distributed_dp"]
    assert details["survivors"] == 4 and details["server_noise"] == 0.0
    assert details["amplified_by_sampling"] is False
    assert details["noise_multiplier_carried"] == pytest.approx(
        math.sqrt(4 * spec.local_variance) / spec.norm_bound
    )


def test_a_reproducible_run_derives_its_rotation_seeds_and_a_deployment_draws_them():
    seeded = DistributedDpSettings(16, Z, 6, 0.6, seed=5)
    assert seeded.rotation_seed(3) == DistributedDpSettings(16, Z, 6, 0.6, seed=5).rotation_seed(3)
    assert seeded.rotation_seed(3) != seeded.rotation_seed(4)
    fresh = DistributedDpSettings(16, Z, 6, 0.6)
    assert fresh.rotation_seed(3) != fresh.rotation_seed(3)
    assert len(fresh.rotation_seed(1)) == len(seeded.rotation_seed(1)) == 16


def test_a_client_seeds_its_noise_share_only_in_a_reproducible_run():
    from privet.client.training_round import distributed_noise_seed
    from privet.task.config import RunConfig

    reproducible = RunConfig(reproducible=True, seed=4)
    deployed = RunConfig(reproducible=False, seed=4)
    assert distributed_noise_seed(deployed, 3, 1) is None  # → os.urandom (`noise_source`)
    seed = distributed_noise_seed(reproducible, 3, 1)
    assert isinstance(seed, bytes) and len(seed) == 32
    assert seed == distributed_noise_seed(reproducible, 3, 1)
    assert seed not in (
        distributed_noise_seed(reproducible, 4, 1),
        distributed_noise_seed(reproducible, 3, 2),
    )


def test_a_client_refuses_to_mask_when_the_server_asks_for_less_noise_than_the_runs_plan():
    import dataclasses

    from privet.client.training_round import planned_client_noise
    from privet.privacy.secagg.wire import from_wire, is_refusal
    from privet.task.config import RunConfig

    plan = plan_round(ddp_settings(), [0, 1, 2], NUM_PARAMS, CLIP)
    spec = plan.distributed
    request = SecAggRequest.from_train_config(plan.train_config(), CLIP)
    states, replies = {}, {}
    # A lying server: each share a quarter of the variance the plan needs.
    cheap = dataclasses.replace(spec, total_variance=max(4 * spec.cohort, spec.total_variance // 4))
    update = clipped_updates([0], 1)[0]

    def exchange(stage, messages):
        out = {}
        for u, message in messages.items():
            if stage == "advertise_keys":
                states[u], out[u] = begin(u, request, NUM_PARAMS)
                continue
            pending = PendingInput(
                update, True, request.spec, u, distributed=cheap, min_noise_multiplier=Z
            )
            states[u], out[u], _ = answer(stage, states[u], message, pending, 1.0)
            replies[u] = out[u]
        return out

    with pytest.raises(SecAggAbort):
        run_secure_sum(plan, exchange)
    assert all(is_refusal(reply) for reply in replies.values())
    assert "less than the run's z" in from_wire(Refusal, replies[0]).reason
    # The run's own plan: z from the configuration, as the server calibrates it.
    config = RunConfig(
        clients=10, secure_aggregation=True, distributed_dp=True, client_target_epsilon=8.0
    )
    from privet.server.client_dp import plan_client_level

    assert planned_client_noise(config) == plan_client_level(config).update_noise_multiplier
    assert planned_client_noise(RunConfig()) is None


def test_noise_shares_are_sized_for_a_fraction_of_the_whole_round_up_to_64_clients():
    """A sparse graph's threshold is per neighbourhood; distributed DP keeps the graph complete."""
    from privet.server.secure_aggregation import DISTRIBUTED_COMPLETE_GRAPH_UP_TO

    fifty = plan_round(ddp_settings(threshold=2 / 3), list(range(50)), NUM_PARAMS, CLIP)
    assert fifty.neighbours == 49  # complete, where plain secure aggregation would use 12
    assert fifty.distributed is not None
    assert fifty.distributed.min_survivors == fifty.config.threshold == math.ceil(2 / 3 * 50)
    plain = plan_round(
        SecAggSettings(threshold=2 / 3, degree=None, levels=2**16, stage_timeout=5.0),
        list(range(50)),
        NUM_PARAMS,
        CLIP,
    )
    assert plain.neighbours == 2 * math.ceil(math.log2(50))
    above = DISTRIBUTED_COMPLETE_GRAPH_UP_TO + 1
    sparse = plan_round(ddp_settings(threshold=2 / 3), list(range(above)), NUM_PARAMS, CLIP)
    assert sparse.neighbours == 2 * math.ceil(math.log2(above))
    # The sparse graph's threshold counts one neighbourhood, but the server still waits for
    # 2/3 of the whole round before unmasking: the noise shares are sized for that.
    assert sparse.distributed is not None
    assert sparse.config.threshold < sparse.distributed.min_survivors == math.ceil(2 / 3 * above)
    assert sparse.distributed.total_noise_multiplier(sparse.distributed.min_survivors) >= Z


def test_the_grid_and_the_total_noise_do_not_depend_on_who_was_sampled():
    small = plan_round(ddp_settings(), [0, 1, 2, 3], NUM_PARAMS, CLIP).distributed
    large = plan_round(ddp_settings(), list(range(7)), NUM_PARAMS, CLIP).distributed
    assert small is not None and large is not None
    assert (small.scale, small.norm_bound, small.total_variance, small.bits) == (
        large.scale,
        large.norm_bound,
        large.total_variance,
        large.bits,
    )
    assert small.local_variance * 4 == large.local_variance * 7 == small.total_variance
    for spec in (small, large):  # the fewest survivors unmasked still carry z
        assert spec.total_noise_multiplier(spec.min_survivors) >= Z


def test_a_round_that_releases_nothing_is_charged_and_the_budget_stop_assumes_the_worst():
    ledger = PrivacyLedger(owner="server", level="client", delta=1e-5)
    client_plan = ClientLevelPlan(Z, Z, 0.25, 5.0, None)
    release = DistributedDpRelease(client_plan, CLIP, ledger, delta=1e-5, epsilon_budget=10.0)
    book = RoundBook(FederationPrivacy())
    release.charge_unreleased(book, 1)
    (event,) = ledger.events()
    assert not event.amplified and event.noise_multiplier == pytest.approx(Z)
    assert book.outcome(1).epsilon_client_level == ledger.epsilon("rdp") > 0
    while release.stop_reason_before(len(ledger.rounds()) + 1) is None:
        release.charge_unreleased(book, len(ledger.rounds()) + 1)
    assert len(ledger.rounds()) > 2 and ledger.epsilon("rdp") <= 10.0
    assert "above the budget 10" in release.stop_reason_before(len(ledger.rounds()) + 1)
