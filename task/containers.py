"""The in-memory form of a data set: what every loader returns and the trainer consumes.

:class:`ArrayDataset` holds examples (float32 features, int64 labels) and checks them when it is
built, so a malformed data set fails there rather than deep inside training; :class:`TrainTest`
pairs a training and a test split with what partitioning needs. :class:`DataError` is the one
error that every data module raises, with a one-line message naming the problem and the fix.

They live in a module of their own so that every loader (the registry in
:mod:`privet.task.datasets`, :mod:`privet.task.idx_files`, :mod:`privet.task.tabular`) builds
them without importing the others: the imports run one way, from the loaders to this module.
Loaded arrays are cached in-process (many virtual clients in one process load the same files),
so :func:`freeze` makes a cached result read-only; :meth:`ArrayDataset.subset` returns writable
copies.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: privet.task.tabular imports this module at run time
    from privet.task.tabular import MissingValues, TabularSchema

__all__ = ["KINDS", "ArrayDataset", "DataError", "TrainTest", "freeze", "read_only"]

KINDS = ("image", "tabular", "text")
"""The kinds of data set: images (a fixed feature shape), tables (encoded by a schema) and texts
(token ids and masks from a model folder's tokenizer, :mod:`privet.task.text`)."""


class DataError(ValueError):
    """Bad data or data options; the message is one line naming the problem and the fix."""


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Examples in memory: float32 features (n, *feature_shape) and int64 labels (n,).

    The constructor converts features to float32 and labels to int64 (without copying when they
    already have those types) and checks that shapes agree and labels lie in 0..num_classes-1,
    so that a malformed dataset fails here rather than deep inside training.
    """

    features: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        """Normalise dtypes and validate shapes and label range."""
        features = np.asarray(self.features)
        labels = np.asarray(self.labels)
        if not (np.issubdtype(features.dtype, np.number) or features.dtype == np.bool_):
            raise DataError(f"features must be numeric, got dtype {features.dtype}")
        if features.ndim < 2:
            raise DataError(
                f"features must have shape (n, *feature_shape), got shape {features.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
            raise DataError(
                f"labels must be a 1-d integer array, got dtype {labels.dtype} "
                f"and shape {labels.shape}"
            )
        if labels.shape[0] != features.shape[0]:
            raise DataError(
                f"{features.shape[0]} feature rows but {labels.shape[0]} labels; "
                "pass one label per example"
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int | np.integer):
            raise DataError(f"num_classes must be an integer, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise DataError(f"num_classes must be at least 1, got {self.num_classes}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(
                f"labels must lie in 0..{self.num_classes - 1}, "
                f"found values {labels.min()}..{labels.max()}"
            )
        object.__setattr__(self, "features", features.astype(np.float32, copy=False))
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "num_classes", int(self.num_classes))

    def __len__(self) -> int:
        """Return the number of examples."""
        return int(self.labels.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example's features: (1, 28, 28) for MNIST, (d,) for tabular data."""
        return tuple(int(s) for s in self.features.shape[1:])

    def subset(self, indices: np.ndarray) -> "ArrayDataset":
        """Return the examples at ``indices`` (integer positions) as a new, writable dataset."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise DataError(
                f"subset indices must be a 1-d integer array, got dtype {idx.dtype} "
                f"and shape {idx.shape}"
            )
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(
                f"subset indices must lie in 0..{len(self) - 1}, "
                f"found values {idx.min()}..{idx.max()}"
            )
        return ArrayDataset(self.features[idx], self.labels[idx], self.num_classes)


@dataclass(frozen=True, eq=False)
class TrainTest:
    """A training and a test split of one data set, plus what partitioning needs to know.

    ``groups`` holds, for each training example, the value of the partition column (strings or
    integers) when one was requested, so that the 'column' partition can split clients by it.
    ``schema`` is the tabular encoding used (None for images); deployment nodes can reuse it.
    ``missing`` counts the tabular file's missing values and says what the policy did with them.
    ``test_source`` says in words what the test split is, so that a server can print and record
    what it evaluated on: e.g. "test-file /abs/test.csv (312 examples)" or "held-out 20% of
    data-file /abs/x.csv (51 of 254 examples)". The training split may be empty (a server that
    only evaluates a test file), but it still carries the feature shape and classes.
    """

    train: ArrayDataset
    test: ArrayDataset
    kind: str
    groups: np.ndarray | None = None
    schema: "TabularSchema | None" = None
    missing: "MissingValues | None" = None
    test_source: str = ""

    def __post_init__(self) -> None:
        """Check that the two splits are compatible and ``groups`` matches the training split."""
        if self.kind not in KINDS:
            raise DataError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.train.num_classes != self.test.num_classes:
            raise DataError(
                f"train has {self.train.num_classes} classes but test has "
                f"{self.test.num_classes}; build both splits with the same label mapping"
            )
        if self.train.feature_shape != self.test.feature_shape:
            raise DataError(
                f"train features have shape {self.train.feature_shape} but test features have "
                f"{self.test.feature_shape}; encode both splits the same way"
            )
        if self.groups is not None and np.asarray(self.groups).shape != (len(self.train),):
            raise DataError(
                f"groups must have one value per training example ({len(self.train)}), "
                f"got shape {np.asarray(self.groups).shape}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes (the same for both splits)."""
        return self.train.num_classes


def read_only(array: np.ndarray) -> np.ndarray:
    """Mark ``array`` read-only, so a cached array shared by many clients cannot be corrupted."""
    array.setflags(write=False)
    return array


def freeze(result: TrainTest) -> TrainTest:
    """Make every array of a cached :class:`TrainTest` read-only and return it."""
    for array in (
        result.train.features,
        result.train.labels,
        result.test.features,
        result.test.labels,
    ):
        read_only(array)
    if result.groups is not None:
        read_only(result.groups)
    return result
