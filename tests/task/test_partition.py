"""Tests for task.partition: iid, Dirichlet label skew and natural column splits."""

import numpy as np
import pytest

from privet.task.datasets import DataError
from privet.task.partition import PARTITIONS, partition_indices


def assert_partition(parts: list[np.ndarray], n: int) -> None:
    """Check sorted int64 parts that are disjoint and together cover range(n)."""
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates within a part
    joined = np.concatenate(parts)
    assert joined.size == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def labels_for(n: int = 1000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def max_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the share of each client's most common class."""
    shares = [np.bincount(labels[p]).max() / p.size for p in parts]
    return float(np.mean(shares))


def test_partitions_constant():
    assert PARTITIONS == ("iid", "dirichlet", "column")


@pytest.mark.parametrize(("n", "k"), [(103, 10), (10, 5), (7, 1)])
def test_iid_sizes_and_partition(n, k):
    parts = partition_indices(np.zeros(n, dtype=np.int64), k, "iid", seed=1)
    assert len(parts) == k
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert_partition(parts, n)


def test_iid_deterministic_and_shuffled():
    labels = labels_for()
    a = partition_indices(labels, 4, "iid", seed=5)
    b = partition_indices(labels, 4, "iid", seed=5)
    c = partition_indices(labels, 4, "iid", seed=6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # shuffled, not contiguous blocks
    assert not np.array_equal(a[0], np.arange(250))


def test_dirichlet_deterministic_and_partition():
    labels = labels_for()
    a = partition_indices(labels, 8, "dirichlet", alpha=0.5, seed=2)
    b = partition_indices(labels, 8, "dirichlet", alpha=0.5, seed=2)
    c = partition_indices(labels, 8, "dirichlet", alpha=0.5, seed=3)
    assert len(a) == 8
    assert_partition(a, labels.size)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert min(p.size for p in a) >= 2


def test_dirichlet_skew_depends_on_alpha():
    labels = labels_for(n=3000)
    skewed = partition_indices(labels, 10, "dirichlet", alpha=0.05, seed=0, min_size=5)
    uniform = partition_indices(labels, 10, "dirichlet", alpha=100.0, seed=0)
    assert_partition(skewed, labels.size)
    assert_partition(uniform, labels.size)
    assert max_class_share(labels, skewed) > 0.5
    assert max_class_share(labels, uniform) < 0.2  # near the 0.1 of a balanced client


def test_dirichlet_impossible_min_size():
    labels = labels_for(n=40, classes=2)
    with pytest.raises(DataError, match="raise --alpha or lower --clients"):
        partition_indices(labels, 10, "dirichlet", alpha=0.001, seed=0, min_size=4)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_dirichlet_bad_alpha(alpha):
    with pytest.raises(DataError, match="alpha"):
        partition_indices(labels_for(), 3, "dirichlet", alpha=alpha)


def test_column_split_by_value():
    groups = np.array(["b", "a", "c", "a", "b", "c", "c"])
    parts = partition_indices(np.zeros(7, dtype=np.int64), 3, "column", groups=groups)
    np.testing.assert_array_equal(parts[0], [1, 3])  # "a"
    np.testing.assert_array_equal(parts[1], [0, 4])  # "b"
    np.testing.assert_array_equal(parts[2], [2, 5, 6])  # "c"
    assert_partition(parts, 7)
    ints = partition_indices(
        np.zeros(4, dtype=np.int64), 2, "column", groups=np.array([7, 3, 3, 7])
    )
    np.testing.assert_array_equal(ints[0], [1, 2])  # group 3 sorts first


def test_column_errors():
    labels = np.zeros(6, dtype=np.int64)
    groups = np.array([1, 1, 2, 2, 3, 3])
    with pytest.raises(DataError, match="has 3 distinct values .* pass --clients 3"):
        partition_indices(labels, 2, "column", groups=groups)
    with pytest.raises(DataError, match="--partition-column"):
        partition_indices(labels, 3, "column")
    with pytest.raises(DataError, match="one value per example"):
        partition_indices(labels, 3, "column", groups=groups[:5])
    with pytest.raises(DataError, match="value 3 has only 1 training examples"):
        partition_indices(labels, 3, "column", groups=np.array([1, 1, 2, 2, 2, 3]))


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_too_many_clients(scheme):
    labels = np.arange(5) % 2
    groups = np.arange(5)
    with pytest.raises(DataError, match="6 clients but only 5 training examples; use fewer"):
        partition_indices(labels, 6, scheme, groups=groups, min_size=0)
    with pytest.raises(DataError, match="3 clients but only 5 training examples"):
        partition_indices(labels, 3, scheme, groups=np.arange(5) % 3, min_size=2)


@pytest.mark.parametrize("clients", [0, -2])
def test_client_count_must_be_positive(clients):
    with pytest.raises(DataError, match="at least 1"):
        partition_indices(labels_for(), clients, "iid")


def test_unknown_scheme_and_bad_labels():
    with pytest.raises(DataError, match="iid, dirichlet, column"):
        partition_indices(labels_for(), 2, "shards")
    with pytest.raises(DataError, match="1-d"):
        partition_indices(np.zeros((4, 2)), 2, "iid")


def test_one_client_gets_everything():
    parts = partition_indices(labels_for(n=50), 1, "dirichlet", alpha=0.1)
    assert len(parts) == 1
    np.testing.assert_array_equal(parts[0], np.arange(50))
