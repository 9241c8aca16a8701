"""Partitioning of a training set's examples across federated clients.

Three schemes: 'iid' (uniform shuffle), 'dirichlet' (label skew, the standard non-IID benchmark
of Hsu et al. 2019) and 'column' (a natural split by the value of a partition column, e.g. a
hospital id). Every scheme is deterministic for a seed, returns sorted int64 index arrays that
together form a partition of ``range(n)``, and guarantees each client at least ``min_size``
examples (local DP-SGD with Poisson sampling needs a few examples per client to be meaningful).
"""

import math

import numpy as np

from privet.task.datasets import DataError

__all__ = ["PARTITIONS", "partition_indices"]

PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "column")
"""Names accepted by :func:`partition_indices`."""

_DIRICHLET_TRIES = 100


def _too_many_clients(num_clients: int, n: int, min_size: int) -> DataError:
    """Build the error for a client count the data cannot support."""
    return DataError(
        f"{num_clients} clients but only {n} training examples; use fewer clients "
        f"(each client needs at least {min_size})"
    )


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Return each part as a sorted int64 array."""
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle all indices and cut them into near-equal consecutive parts."""
    return list(np.array_split(rng.permutation(n), num_clients))


def _dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Give each class's examples to clients in Dirichlet(alpha)-distributed proportions.

    Small alpha concentrates each class on few clients (strong label skew); large alpha tends
    to IID. Draws are repeated from the same generator until every client has ``min_size``
    examples, so the result stays deterministic for a seed.
    """
    by_class = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    for _ in range(_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in by_class:
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(np.full(num_clients, alpha))
            if not np.all(np.isfinite(shares)):
                continue  # degenerate draw for tiny alpha; the size check below rejects it
            cuts = np.floor(np.cumsum(shares)[:-1] * shuffled.size).astype(np.int64)
            for client, chunk in enumerate(np.split(shuffled, cuts)):
                parts[client].append(chunk)
        merged = [
            np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64) for chunks in parts
        ]
        if sum(part.size for part in merged) == labels.size and all(
            part.size >= min_size for part in merged
        ):
            return merged
    raise DataError(
        f"Dirichlet partition with alpha={alpha} gave some of the {num_clients} clients fewer "
        f"than {min_size} examples in {_DIRICHLET_TRIES} tries; raise --alpha or lower --clients"
    )


def _column(groups: np.ndarray, num_clients: int, min_size: int) -> list[np.ndarray]:
    """Give client i the examples whose group is the i-th smallest distinct group value."""
    values = np.unique(groups)
    if values.size != num_clients:
        raise DataError(
            f"the partition column has {values.size} distinct values but {num_clients} clients "
            f"were requested; pass --clients {values.size}"
        )
    parts = [np.flatnonzero(groups == value) for value in values]
    for value, part in zip(values, parts, strict=True):
        if part.size < min_size:
            raise DataError(
                f"partition column value {value.item()!r} has only {part.size} training examples "
                f"(each client needs at least {min_size}); choose a partition column whose "
                "values each cover more examples"
            )
    return parts


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    groups: np.ndarray | None = None,
    seed: int = 0,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Split example indices 0..n-1 across num_clients; deterministic for a seed.

    ``labels`` are the training labels (used by 'dirichlet'; their length sets n). ``alpha`` is
    the Dirichlet concentration (only 'dirichlet' reads it); ``groups`` the per-example values
    of the partition column (only 'column' reads it). Returns one sorted int64 array per client;
    the arrays are disjoint and together cover every index.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be a 1-d array, got shape {labels.shape}")
    if scheme not in PARTITIONS:
        raise DataError(f"unknown partition {scheme!r}; choose one of: {', '.join(PARTITIONS)}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise DataError(f"number of clients must be an integer, got {num_clients!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 0:
        raise DataError(f"min_size must be a non-negative integer, got {min_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    num_clients, min_size = int(num_clients), int(min_size)
    n = int(labels.shape[0])
    if num_clients < 1:
        raise DataError(
            f"number of clients must be at least 1, got {num_clients}; pass --clients 1 or more"
        )
    if num_clients > n or num_clients * min_size > n:
        raise _too_many_clients(num_clients, n, min_size)
    rng = np.random.default_rng(int(seed))

    if scheme == "iid":
        parts = _iid(n, num_clients, rng)
    elif scheme == "dirichlet":
        if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.number):
            raise DataError(f"alpha must be a positive number, got {alpha!r}")
        if not (math.isfinite(float(alpha)) and float(alpha) > 0.0):
            raise DataError(
                f"alpha must be a positive finite number, got {alpha}; pass --alpha > 0 "
                "(small values skew labels strongly, large values approach IID)"
            )
        parts = _dirichlet(labels, num_clients, float(alpha), min_size, rng)
    else:
        if groups is None:
            raise DataError(
                "the 'column' partition needs per-example group values; pass --partition-column "
                "naming the column that identifies each example's client"
            )
        group_array = np.asarray(groups)
        if group_array.shape != (n,):
            raise DataError(
                f"groups must have one value per example ({n}), got shape {group_array.shape}"
            )
        parts = _column(group_array, num_clients, min_size)

    for part in parts:
        if part.size < min_size:
            raise _too_many_clients(num_clients, n, min_size)
    return _finish(parts)
