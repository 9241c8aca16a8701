"""The randomized Hadamard rotation of distributed DP (issue 16): exact inverse, norm kept,
linear (so the sum of rotated updates is the rotated sum), and it flattens a spike."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.linalg import hadamard

from privet.privacy.rotation import padded_dimension, rotate, signs, unrotate, walsh_hadamard

SEED = b"round-7 public seed"


def test_the_fast_transform_is_the_hadamard_matrix():
    for size in (1, 2, 8, 64):
        x = np.random.default_rng(size).normal(size=size)
        np.testing.assert_allclose(walsh_hadamard(x), hadamard(size) @ x, atol=1e-12)
    with pytest.raises(ValueError, match="power of two"):
        walsh_hadamard(np.ones(6))


def test_rotation_keeps_the_norm_and_is_undone_exactly():
    rng = np.random.default_rng(0)
    for dimension in (1, 5, 1000, 4096):
        x = rng.normal(size=dimension)
        y = rotate(x, SEED)
        assert y.shape == (padded_dimension(dimension),)
        assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
        np.testing.assert_allclose(unrotate(y, SEED, dimension), x, atol=1e-12)
    with pytest.raises(ValueError, match="has 8, got 16"):
        unrotate(np.zeros(16), SEED, 5)


def test_the_sum_of_rotated_updates_is_the_rotated_sum_for_one_public_seed():
    rng = np.random.default_rng(1)
    updates = [rng.normal(size=300) for _ in range(5)]
    total = sum(rotate(u, SEED) for u in updates)
    np.testing.assert_allclose(unrotate(total, SEED, 300), sum(updates), atol=1e-10)
    assert not np.allclose(rotate(updates[0], SEED), rotate(updates[0], b"another round"))
    assert np.array_equal(signs(SEED, 64), signs(SEED, 64))
    assert set(np.unique(signs(SEED, 1024))) == {-1.0, 1.0}


def test_a_spike_is_spread_over_every_coordinate():
    dimension = 4096
    spike = np.zeros(dimension)
    spike[17] = 10.0
    y = rotate(spike, SEED)
    assert np.abs(y).max() == pytest.approx(10.0 / math.sqrt(dimension))  # every coordinate equal
    dense = np.random.default_rng(2).normal(size=dimension)
    dense *= 10.0 / np.linalg.norm(dense)
    # A vector of norm 10 has coordinates of about 10/√d after rotation (Kairouz et al. 2021).
    bound = 10.0 * math.sqrt(2 * math.log(2 * dimension / 1e-6) / dimension)
    assert np.abs(rotate(dense, SEED)).max() < bound
