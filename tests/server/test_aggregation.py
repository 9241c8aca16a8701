import math

import numpy as np
import pytest

from privet.server.aggregation import (
    AdaptiveClipping,
    ClientLevelAggregator,
    ClientUpdate,
    apply_update,
    l2_norm,
    weighted_mean_update,
)
from privet.server.sampling import poisson_sample

SHAPES = [(20, 10), (10,)]


def update(client, scale, n=10, within=None, seed=None):
    rng = np.random.default_rng(client if seed is None else seed)
    parts = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    norm = l2_norm(parts)
    return ClientUpdate(client, [p * (scale / norm) for p in parts], n, within)


def test_weighted_mean_is_by_examples_and_order_free():
    a, b = update(0, 1.0, n=10), update(1, 2.0, n=30)
    mean = weighted_mean_update([b, a])
    for got, pa, pb in zip(mean, a.update, b.update, strict=True):
        np.testing.assert_allclose(got, 0.25 * pa + 0.75 * pb, rtol=1e-6)
    assert all(
        np.array_equal(x, y) for x, y in zip(mean, weighted_mean_update([a, b]), strict=True)
    )


def test_dp_fedavg_divides_the_noised_sum_by_the_expected_client_count():
    aggregator = ClientLevelAggregator(0.0, 1.0, expected_clients=4, rng=np.random.default_rng(0))
    items = [update(k, 0.9) for k in range(3)]
    result = aggregator.aggregate(items, SHAPES)
    for i, got in enumerate(result.mean_update):
        np.testing.assert_allclose(got, sum(u.update[i] for u in items) / 4, rtol=1e-6, atol=1e-7)
    assert result.aggregated == [0, 1, 2] and result.rejected == []


def test_noise_has_std_z_times_clip_on_the_sum():
    z, clip, expected = 1.3, 0.5, 10.0
    aggregator = ClientLevelAggregator(z, clip, expected, rng=np.random.default_rng(1))
    shapes = [(200_000,)]
    result = aggregator.aggregate([], shapes)  # no client sampled: pure noise is still released
    noise_on_sum = result.mean_update[0] * expected
    assert np.std(noise_on_sum) == pytest.approx(z * clip, rel=0.01)
    assert abs(np.mean(noise_on_sum)) < 0.01


def test_update_above_the_clip_bound_is_rejected_never_aggregated(caplog):
    aggregator = ClientLevelAggregator(0.0, 1.0, expected_clients=2, rng=np.random.default_rng(0))
    good, bad = update(0, 0.99), update(1, 1.5)
    result = aggregator.aggregate([good, bad], SHAPES)
    assert result.rejected == [1] and result.aggregated == [0]
    np.testing.assert_allclose(result.mean_update[0], good.update[0] / 2, rtol=1e-6)
    assert "rejected the update of client 1" in caplog.text


def test_non_finite_update_is_rejected():
    aggregator = ClientLevelAggregator(0.0, 1.0, expected_clients=1, rng=np.random.default_rng(0))
    bad = update(0, 0.5)
    bad.update[0][0, 0] = np.nan
    assert aggregator.aggregate([bad], SHAPES).rejected == [0]


@pytest.mark.parametrize(("within", "direction"), [(True, -1), (False, +1)])
def test_adaptive_clipping_moves_towards_the_target_quantile(within, direction):
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=1e-9)
    aggregator = ClientLevelAggregator(
        0.0, 1.0, expected_clients=4, rng=np.random.default_rng(0), adaptive=adaptive
    )
    items = [update(k, 0.5, within=within) for k in range(4)]
    result = aggregator.aggregate(items, SHAPES)
    fraction = 1.0 if within else 0.0
    assert result.noised_within_fraction == pytest.approx(fraction, abs=1e-6)
    assert result.clip_norm_next == pytest.approx(math.exp(-0.2 * (fraction - 0.5)), rel=1e-6)
    assert (result.clip_norm_next - 1.0) * direction > 0
    assert aggregator.clip_norm == result.clip_norm_next


def test_apply_update_keeps_dtypes():
    weights = [np.ones((2, 2), dtype=np.float32)]
    out = apply_update(weights, [np.full((2, 2), 0.5)])
    assert out[0].dtype == np.float32 and np.all(out[0] == 1.5)


def test_poisson_sampling_rate_and_reproducibility():
    clients = list(range(50))
    counts = np.zeros(50)
    rng = np.random.default_rng(3)
    for _ in range(2000):
        for c in poisson_sample(clients, 0.2, rng):
            counts[c] += 1
    assert counts.mean() / 2000 == pytest.approx(0.2, abs=0.01)
    first = poisson_sample(clients, 0.3, np.random.default_rng(9))
    shuffled = poisson_sample(list(reversed(clients)), 0.3, np.random.default_rng(9))
    assert first == shuffled
    assert poisson_sample([3, 1, 2], 1.0, np.random.default_rng(0)) == [1, 2, 3]
