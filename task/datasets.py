"""Data sets shared by clients and server: loading, parsing and encoding into in-memory arrays.

Every loader returns a :class:`TrainTest` of :class:`ArrayDataset` objects (float32 features,
int64 labels), so the trainer never needs to know where the data came from. Nothing here
downloads: the default ("digits") ships inside scikit-learn, and every other data set is read
from local files the user names. Bad input raises :class:`DataError` with a one-line message
that says what is wrong and what to do about it.

Tabular data (a CSV file, or UCI Adult) is encoded through a :class:`TabularSchema`: column
kinds, numeric means/stds and one-hot category lists. A schema can be saved as plain JSON and
agreed in advance, so that every deployment node encodes its own local CSV identically
(:func:`read_csv_table`, :func:`check_table_for_schema`, :func:`apply_missing_policy`,
:func:`encode_with_schema`). Image
nodes check their own files against :data:`IMAGE_SPECS` and read IDX files with
:func:`read_idx_images` / :func:`read_idx_labels`.

Loaded arrays are cached in-process (many virtual clients in one process load the same files)
and are therefore read-only; :meth:`ArrayDataset.subset` returns writable copies.

Missing values in tabular data follow one explicit policy (:data:`MISSING_POLICIES`). A cell is
missing when it is blank or "?", when it is NaN or infinite ("nan", "inf", ...), or when it is
not a number in a numeric column. A column is numeric when more of its present cells are finite
numbers than are text, so one bad cell never turns a numeric column into one-hot categories.
``"drop"`` (the default) leaves out every example with a missing feature value; ``"impute"``
keeps it, with the training mean in a numeric column and no category (all zeros) in a
categorical one. Either way the counts, per column and never the values, are reported
(:class:`MissingValues`).
"""

import csv
import functools
import gzip
import math
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ADULT_COLUMNS",
    "ADULT_FILE",
    "DATASETS",
    "DatasetEntry",
    "DatasetLoader",
    "DatasetOptions",
    "IDX_FILES",
    "IMAGE_SPECS",
    "DEFAULT_MISSING_POLICY",
    "MISSING_POLICIES",
    "MISSING_VALUES",
    "SCHEMA_VERSION",
    "ArrayDataset",
    "CsvTable",
    "DataError",
    "FeatureColumn",
    "MissingValues",
    "TabularSchema",
    "TrainTest",
    "apply_missing_policy",
    "check_table_for_schema",
    "dataset_entry",
    "dataset_names",
    "encode_with_schema",
    "fit_tabular_schema",
    "load_dataset",
    "not_a_file_reason",
    "read_csv_table",
    "read_idx_images",
    "read_idx_labels",
    "register_dataset",
]

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
"""The four canonical (Fashion-)MNIST files that ``data_dir`` must hold."""

ADULT_COLUMNS: tuple[str, ...] = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
"""Column names of UCI ``adult.data``, which has no header row."""

ADULT_FILE = "adult.data"
ADULT_LABEL = "income"

MISSING_VALUES: frozenset[str] = frozenset({"", "?"})
"""Cell values (after stripping whitespace) that mean "missing" (so do NaN and infinite numbers)."""

MISSING_POLICIES: tuple[str, ...] = ("drop", "impute")
"""What happens to an example with a missing feature value: left out, or imputed."""

DEFAULT_MISSING_POLICY = "drop"

SCHEMA_VERSION = 1
"""Schema version written by :meth:`TabularSchema.to_json`, the only one ``from_json`` reads."""

_IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IMAGE_SIDE = 28
_MNIST_CLASSES = 10
_DIGITS_CLASSES = 10
_KINDS = ("image", "tabular")

_NUMERIC = "numeric"
_CATEGORICAL = "categorical"


class DataError(ValueError):
    """Bad data or data options; the message is one line naming the problem and the fix."""


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


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
    """

    train: ArrayDataset
    test: ArrayDataset
    kind: str
    groups: np.ndarray | None = None
    schema: "TabularSchema | None" = None
    missing: "MissingValues | None" = None

    def __post_init__(self) -> None:
        """Check that the two splits are compatible and ``groups`` matches the training split."""
        if self.kind not in _KINDS:
            raise DataError(f"kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
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


# --------------------------------------------------------------------------------------------
# The registry of named data sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetOptions:
    """What a run says about its data; each loader uses the options that apply to it.

    Empty strings are already turned into None, and ``seed``, ``test_fraction`` and ``missing``
    already checked, when a loader sees them.
    """

    data_dir: str | None = None
    data_file: str | None = None
    label_column: str | None = None
    partition_column: str | None = None
    seed: int = 0
    test_fraction: float = 0.2
    missing: str = DEFAULT_MISSING_POLICY


DatasetLoader = Callable[[DatasetOptions], TrainTest]
"""Loads a data set: train and test arrays, whose shapes give the feature shape and classes."""


@dataclass(frozen=True)
class DatasetEntry:
    """A named data set: how to load it, and what a run must know about it before loading.

    ``kind`` is "image" (options for tables are refused) or "tabular" (a partition column may
    split it across clients). ``feature_shape`` and ``num_classes`` are given when they are fixed
    in advance (images): a deployment node checks its own files against them without the data
    set, and every load is checked against them. ``needs`` are the run options (Flower's
    spelling, e.g. "data-dir") the data set cannot be loaded without.
    """

    name: str
    load: DatasetLoader
    kind: str
    feature_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    needs: tuple[str, ...] = ()


_DATASETS: dict[str, DatasetEntry] = {}
_NEEDABLE = ("data-dir", "data-file", "label-column")


def register_dataset(
    name: str,
    *,
    kind: str,
    feature_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    needs: Sequence[str] = (),
) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a data set loader under `name` (a decorator); the loader is returned unchanged.

    The loader takes :class:`DatasetOptions` and returns a :class:`TrainTest`. Once registered,
    ``--dataset NAME`` works in this process: the CLI lists it, the configuration accepts it and
    :func:`load_dataset` loads it (cached per process, arrays read-only). Registering another
    loader under a taken name is an error; registering the same one again replaces it.
    """
    if not isinstance(name, str) or not name or name != name.strip().lower():
        raise DataError(f"dataset name must be a non-empty lowercase string, got {name!r}")
    if kind not in _KINDS:
        raise DataError(f"dataset {name!r}: kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    if (feature_shape is None) != (num_classes is None):
        raise DataError(
            f"dataset {name!r}: give feature_shape and num_classes together, or neither"
        )
    unknown = [option for option in needs if option not in _NEEDABLE]
    if unknown:
        raise DataError(
            f"dataset {name!r}: needs may name {', '.join(_NEEDABLE)}, got {', '.join(unknown)}"
        )
    shape = None if feature_shape is None else tuple(int(size) for size in feature_shape)
    classes = None if num_classes is None else int(num_classes)

    def register(loader: DatasetLoader) -> DatasetLoader:
        if not callable(loader):
            raise DataError(f"register_dataset({name!r}) needs a function (options) -> TrainTest")
        current = _DATASETS.get(name)
        if current is not None and _qualified(current.load) != _qualified(loader):
            raise DataError(
                f"dataset {name!r} is already registered (by {_qualified(current.load)}); choose "
                "another name"
            )
        _DATASETS[name] = DatasetEntry(name, loader, kind, shape, classes, tuple(needs))
        return loader

    return register


def dataset_names() -> tuple[str, ...]:
    """The registered data set names, in registration order (the built-in ones first)."""
    return tuple(_DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of data set `name`; a one-line DataError listing the known names."""
    entry = _DATASETS.get(str(name).strip().lower())
    if entry is None:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    return entry


def _qualified(function: Callable[..., object]) -> str:
    module = getattr(function, "__module__", "?")
    return f"{module}:{getattr(function, '__qualname__', repr(function))}"


class _FixedShapes(Mapping[str, tuple[tuple[int, ...], int]]):
    """The registered image data sets whose (feature shape, classes) are known in advance."""

    def _entries(self) -> dict[str, tuple[tuple[int, ...], int]]:
        return {
            entry.name: (entry.feature_shape, entry.num_classes)
            for entry in _DATASETS.values()
            if entry.kind == "image"
            and entry.feature_shape is not None
            and entry.num_classes is not None
        }

    def __getitem__(self, name: str) -> tuple[tuple[int, ...], int]:
        return self._entries()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


IMAGE_SPECS: Mapping[str, tuple[tuple[int, ...], int]] = _FixedShapes()
"""(feature shape of one example, number of classes) that each image data set loads as.

A deployment node that brings its own image file checks it against this without loading the
reference data set (which it may not have); :func:`load_dataset` checks every load against it.
A live view of the registry: data sets registered later appear in it.
"""


def _read_only(array: np.ndarray) -> np.ndarray:
    """Mark ``array`` read-only, so a cached array shared by many clients cannot be corrupted."""
    array.setflags(write=False)
    return array


def _freeze(result: TrainTest) -> TrainTest:
    """Make every array of a cached :class:`TrainTest` read-only and return it."""
    for array in (
        result.train.features,
        result.train.labels,
        result.test.features,
        result.test.labels,
    ):
        _read_only(array)
    if result.groups is not None:
        _read_only(result.groups)
    return result


def _check_split_options(seed: int, test_fraction: float) -> None:
    """Validate the split options shared by the loaders that split a single file."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be an integer in 0..2**32-1, got {seed!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float | np.floating):
        raise DataError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, test) index arrays of a stratified split, with sklearn errors as DataError."""
    from sklearn.model_selection import train_test_split  # lazy: keeps client imports lean

    positions = np.arange(labels.shape[0], dtype=np.int64)
    try:
        train_idx, test_idx = train_test_split(
            positions, test_size=float(test_fraction), random_state=int(seed), stratify=labels
        )
    except ValueError as exc:
        detail = str(exc).replace("\n", " ")
        raise DataError(
            f"cannot split {what} into stratified train/test parts with "
            f"test_fraction={test_fraction} ({detail}); change --test-fraction or use a file "
            "with more examples per class"
        ) from exc
    return np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# digits (bundled with scikit-learn)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_digits(seed: int, test_fraction: float) -> TrainTest:
    """Load scikit-learn's bundled 8x8 digits as images in [0, 1], split stratified."""
    from sklearn.datasets import load_digits  # lazy: keeps client imports lean

    bunch = load_digits()
    images = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = _stratified_split(labels, test_fraction, seed, "digits")
    return _freeze(
        TrainTest(
            train=ArrayDataset(images[train_idx], labels[train_idx], _DIGITS_CLASSES),
            test=ArrayDataset(images[test_idx], labels[test_idx], _DIGITS_CLASSES),
            kind="image",
        )
    )


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST (canonical IDX .gz files)
# --------------------------------------------------------------------------------------------


_CANONICAL_IDX_FIX = "re-download the canonical IDX .gz files"
_GZIP_MAGIC = b"\x1f\x8b"


def _idx_corrupt(title: str, path: Path, problem: str, fix: str = _CANONICAL_IDX_FIX) -> DataError:
    """Build the error for an unreadable IDX file; ``fix`` says what the user should do."""
    return DataError(f"{title} file {path} is corrupt ({problem}); {fix}")


def _read_idx(
    path: Path, title: str, magic: int, fix: str = _CANONICAL_IDX_FIX
) -> tuple[tuple[int, ...], bytes]:
    """Read an IDX file (gzip-compressed or plain) and return (dims, payload) after checks.

    Compression is recognised by the gzip magic bytes rather than the file name, so a plain
    ``*-ubyte`` file and a ``*-ubyte.gz`` file both load. Every problem is a :class:`DataError`
    naming ``path``; ``fix`` is the advice appended to it.
    """
    try:
        with path.open("rb") as handle:
            compressed = handle.read(2) == _GZIP_MAGIC
        if compressed:
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{title} file {path} is corrupt or truncated ({type(exc).__name__}: {exc}); {fix}"
        ) from exc
    if len(raw) < 4:
        raise _idx_corrupt(title, path, f"only {len(raw)} bytes after decompression", fix)
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _idx_corrupt(
            title, path, f"bad magic number 0x{found:08x}, expected 0x{magic:08x}", fix
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise _idx_corrupt(title, path, "header cut short", fix)
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    payload = raw[header_size:]
    expected = math.prod(dims)
    if len(payload) != expected:
        raise _idx_corrupt(
            title,
            path,
            f"{len(payload)} data bytes but the header dimensions {dims} need {expected}",
            fix,
        )
    return dims, payload


def read_idx_images(path: str | Path, *, title: str = "IDX images", fix: str) -> np.ndarray:
    """Read one IDX image file (any n x height x width) as float32 (n, 1, height, width) in [0, 1].

    Pixels are scaled exactly as the MNIST loader scales them (divided by 255), so examples read
    here are interchangeable with :func:`load_dataset`'s. ``fix`` is the advice errors end with.
    """
    file = Path(path).expanduser()
    dims, payload = _read_idx(file, title, _IMAGE_MAGIC, fix)
    images = np.frombuffer(payload, dtype=np.uint8).astype(np.float32)
    images /= np.float32(255.0)
    return images.reshape(dims[0], 1, dims[1], dims[2])


def read_idx_labels(path: str | Path, *, title: str = "IDX labels", fix: str) -> np.ndarray:
    """Read one IDX label file as int64 (n,); the caller checks the range against its classes."""
    file = Path(path).expanduser()
    _, payload = _read_idx(file, title, _LABEL_MAGIC, fix)
    return np.frombuffer(payload, dtype=np.uint8).astype(np.int64)


@functools.lru_cache(maxsize=8)
def _load_idx_images(path: Path, mtime_ns: int, size: int, title: str) -> np.ndarray:
    """Parse an IDX image file into read-only float32 (n, 1, 28, 28) in [0, 1].

    ``mtime_ns`` and ``size`` are part of the cache key only, so that a replaced file is re-read.
    """
    del mtime_ns, size
    dims, payload = _read_idx(path, title, _IMAGE_MAGIC)
    if dims[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise _idx_corrupt(
            title, path, f"images are {dims[1]}x{dims[2]}, expected {_IMAGE_SIDE}x{_IMAGE_SIDE}"
        )
    images = np.frombuffer(payload, dtype=np.uint8).astype(np.float32)
    images /= np.float32(255.0)
    return _read_only(images.reshape(dims[0], 1, _IMAGE_SIDE, _IMAGE_SIDE))


@functools.lru_cache(maxsize=8)
def _load_idx_labels(path: Path, mtime_ns: int, size: int, title: str) -> np.ndarray:
    """Parse an IDX label file into read-only int64 labels in 0..9.

    ``mtime_ns`` and ``size`` are part of the cache key only, so that a replaced file is re-read.
    """
    del mtime_ns, size
    _, payload = _read_idx(path, title, _LABEL_MAGIC)
    labels = np.frombuffer(payload, dtype=np.uint8).astype(np.int64)
    if labels.size and int(labels.max()) >= _MNIST_CLASSES:
        raise _idx_corrupt(
            title, path, f"label {int(labels.max())} outside 0..{_MNIST_CLASSES - 1}"
        )
    return _read_only(labels)


def not_a_file_reason(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data file, or None when it is a regular file.

    The reason completes "FILE ...": "does not exist", "is a folder, not a file", "is a
    character device, not a regular file" (e.g. /dev/zero), and so on. A link counts as what it
    points to.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of the path is a file, not a folder)"
    except OSError as error:
        return f"cannot be read ({error.strerror or type(error).__name__})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    for test, what in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return f"is {what}, not a regular file"
    return "is not a regular file"


def _file_key(path: Path) -> tuple[Path, int, int]:
    """Return (resolved path, mtime_ns, size): the cache key that notices a replaced file."""
    stat = path.stat()
    return path.resolve(), stat.st_mtime_ns, stat.st_size


def _load_mnist_like(name: str, data_dir: str | None) -> TrainTest:
    """Load MNIST or Fashion-MNIST from the four canonical IDX .gz files in ``data_dir``."""
    title = "MNIST" if name == "mnist" else "Fashion-MNIST"
    wanted = ", ".join(IDX_FILES)
    if data_dir is None:
        raise DataError(
            f"dataset '{name}' needs its files: pass --data-dir pointing at a folder with "
            f"the four canonical files ({wanted})"
        )
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(
            f"{title} data folder {folder} {problem}; pass --data-dir pointing at a "
            f"folder with the four canonical files ({wanted})"
        )
    missing = [str(folder / f) for f in IDX_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{title} file(s) missing: {', '.join(missing)}; pass --data-dir pointing at a "
            f"folder with the four canonical files ({wanted})"
        )
    train_x_path, train_y_path, test_x_path, test_y_path = (folder / f for f in IDX_FILES)
    train_x = _load_idx_images(*_file_key(train_x_path), title)
    train_y = _load_idx_labels(*_file_key(train_y_path), title)
    test_x = _load_idx_images(*_file_key(test_x_path), title)
    test_y = _load_idx_labels(*_file_key(test_y_path), title)
    for images, labels, x_path, y_path in (
        (train_x, train_y, train_x_path, train_y_path),
        (test_x, test_y, test_x_path, test_y_path),
    ):
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{title} files disagree: {x_path} has {images.shape[0]} images but {y_path} "
                f"has {labels.shape[0]} labels; re-download the canonical IDX .gz files"
            )
    return TrainTest(
        train=ArrayDataset(train_x, train_y, _MNIST_CLASSES),
        test=ArrayDataset(test_x, test_y, _MNIST_CLASSES),
        kind="image",
    )


# --------------------------------------------------------------------------------------------
# Tabular data: CSV tables, schemas, encoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CsvTable:
    """A parsed CSV file: whitespace-stripped string cells and the file line each row ends on.

    Line numbers are kept so that every later error (a bad number, an unknown label) can name
    the line to fix.
    """

    source: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    line_numbers: tuple[int, ...]

    def __len__(self) -> int:
        """Return the number of data rows."""
        return len(self.rows)

    def column_index(self, name: str, role: str = "column") -> int:
        """Return the position of column ``name``; ``role`` words the error ("label column")."""
        try:
            return self.header.index(name)
        except ValueError:
            raise DataError(
                f"{role} '{name}' is not in {self.source} (columns: {', '.join(self.header)}); "
                f"pass one of those names"
            ) from None

    def column(self, name: str) -> list[str]:
        """Return the cells of column ``name``, one per row."""
        index = self.column_index(name)
        return [row[index] for row in self.rows]


def read_csv_table(path: str | Path, *, column_names: Sequence[str] | None = None) -> CsvTable:
    """Read a CSV file with the stdlib csv module into a :class:`CsvTable`.

    The first non-blank row is the header unless ``column_names`` is given (for header-less
    files such as UCI Adult). Cells are stripped of surrounding whitespace; blank lines are
    skipped; a row whose field count differs from the header's is an error naming its line.
    """
    file = Path(path).expanduser()
    problem = not_a_file_reason(file)
    if problem is not None:
        raise DataError(f"data file {file} {problem}; pass the path of an existing CSV file")
    header: tuple[str, ...] | None = None
    if column_names is not None:
        header = tuple(str(c).strip() for c in column_names)
        _check_header(header, file)
    rows: list[tuple[str, ...]] = []
    lines: list[int] = []
    try:
        with file.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            for raw in reader:
                cells = tuple(cell.strip() for cell in raw)
                if len(cells) == 0 or (len(cells) == 1 and cells[0] == ""):
                    continue  # blank line
                if header is None:
                    header = cells
                    _check_header(header, file, reader.line_num)
                    continue
                if len(cells) != len(header):
                    raise DataError(
                        f"{file} line {reader.line_num} has {len(cells)} fields but the header "
                        f"has {len(header)}; fix that row so every row has {len(header)} fields"
                    )
                rows.append(cells)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{file} is not valid CSV ({exc}); fix the file") from exc
    except OSError as exc:
        raise DataError(f"cannot read data file {file} ({exc}); check its permissions") from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV"
        ) from exc
    if header is None:
        raise DataError(f"data file {file} is empty; pass a CSV file with a header and data rows")
    if not rows:
        raise DataError(f"data file {file} has no data rows; pass a CSV file with data rows")
    return CsvTable(str(file), header, tuple(rows), tuple(lines))


def _check_header(header: tuple[str, ...], file: Path, line: int | None = None) -> None:
    """Reject empty or duplicate column names, which would make columns ambiguous."""
    where = f"{file} header" if line is None else f"{file} header (line {line})"
    for position, name in enumerate(header, start=1):
        if not name:
            raise DataError(f"{where} has an empty name for column {position}; name every column")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{where} names column '{name}' twice; give every column its own name")
        seen.add(name)


@dataclass(frozen=True)
class FeatureColumn:
    """How one input column becomes features: numeric (1 standardised value) or one-hot.

    Numeric: missing → ``mean``, then (x - mean) / std. Categorical: one indicator per entry of
    ``categories`` (in order); missing or unknown values encode as all zeros.
    """

    name: str
    kind: str
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Validate the kind and parameters, so a hand-edited schema fails early."""
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"schema column name must be a non-empty string, got {self.name!r}")
        if self.kind not in (_NUMERIC, _CATEGORICAL):
            raise DataError(
                f"schema column '{self.name}' has kind {self.kind!r}; use 'numeric' or "
                "'categorical'"
            )
        if self.kind == _NUMERIC:
            if not math.isfinite(self.mean) or not math.isfinite(self.std) or self.std <= 0:
                raise DataError(
                    f"schema column '{self.name}' needs a finite mean and a positive finite std, "
                    f"got mean={self.mean} std={self.std}"
                )
        elif len(set(self.categories)) != len(self.categories):
            raise DataError(
                f"schema column '{self.name}' lists a category twice; list each category once"
            )

    @property
    def width(self) -> int:
        """Number of feature values this column produces."""
        return 1 if self.kind == _NUMERIC else len(self.categories)


@dataclass(frozen=True)
class TabularSchema:
    """Everything needed to encode a table identically on every node.

    ``columns`` lists the feature columns in encoding order; ``classes`` lists the label
    strings, whose positions are the integer labels. Save it with :meth:`to_json` (plain
    dicts/lists, JSON-serialisable) and restore it with :meth:`from_json`.
    """

    label_column: str
    classes: tuple[str, ...]
    columns: tuple[FeatureColumn, ...]
    partition_column: str | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        """Validate class and column lists."""
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise DataError(
                f"schema needs at least 2 distinct classes, got {list(self.classes)}; "
                "fit the schema on data with at least two label values"
            )
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names) or self.label_column in names:
            raise DataError(
                "schema column names must be distinct and must not include the label column; "
                "fit the schema again"
            )

    @property
    def num_classes(self) -> int:
        """Number of label classes."""
        return len(self.classes)

    @property
    def width(self) -> int:
        """Number of features per example after encoding."""
        return sum(c.width for c in self.columns)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Name of every encoded feature: the column name, or ``column=category`` for one-hot."""
        names: list[str] = []
        for column in self.columns:
            if column.kind == _NUMERIC:
                names.append(column.name)
            else:
                names.extend(f"{column.name}={category}" for category in column.categories)
        return tuple(names)

    def to_json(self) -> dict[str, Any]:
        """Return the schema as plain dicts and lists (for json.dumps)."""
        columns: list[dict[str, Any]] = []
        for column in self.columns:
            if column.kind == _NUMERIC:
                columns.append(
                    {"name": column.name, "kind": _NUMERIC, "mean": column.mean, "std": column.std}
                )
            else:
                columns.append(
                    {
                        "name": column.name,
                        "kind": _CATEGORICAL,
                        "categories": list(column.categories),
                    }
                )
        return {
            "schema_version": self.schema_version,
            "label_column": self.label_column,
            "partition_column": self.partition_column,
            "classes": list(self.classes),
            "columns": columns,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TabularSchema":
        """Rebuild a schema from :meth:`to_json` output, checking version and field types."""
        if not isinstance(data, Mapping):
            raise DataError(f"a tabular schema must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(
                f"tabular schema version {version!r} is not supported (this release reads "
                f"version {SCHEMA_VERSION}); re-create the schema with this release"
            )
        try:
            label_column = data["label_column"]
            classes = data["classes"]
            raw_columns = data["columns"]
            partition_column = data.get("partition_column")
            if not isinstance(label_column, str) or not isinstance(classes, list):
                raise TypeError("label_column must be a string and classes a list")
            if not all(isinstance(c, str) for c in classes):
                raise TypeError("classes must be strings")
            if partition_column is not None and not isinstance(partition_column, str):
                raise TypeError("partition_column must be a string or null")
            if not isinstance(raw_columns, list):
                raise TypeError("columns must be a list")
            columns = tuple(_column_from_json(item) for item in raw_columns)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(
                f"tabular schema is malformed ({type(exc).__name__}: {exc}); re-create it with "
                "TabularSchema.to_json()"
            ) from exc
        return cls(
            label_column=label_column,
            classes=tuple(classes),
            columns=columns,
            partition_column=partition_column,
            schema_version=version,
        )


def _column_from_json(item: Any) -> FeatureColumn:
    """Rebuild one :class:`FeatureColumn` from its JSON dict."""
    if not isinstance(item, Mapping):
        raise TypeError("each column must be an object")
    kind = item["kind"]
    if kind == _NUMERIC:
        mean, std = item["mean"], item["std"]
        if isinstance(mean, bool) or isinstance(std, bool):
            raise TypeError("mean and std must be numbers")
        return FeatureColumn(str(item["name"]), _NUMERIC, mean=float(mean), std=float(std))
    categories = item["categories"] if kind == _CATEGORICAL else None
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise TypeError(f"column {item.get('name')!r}: categories must be a list of strings")
    return FeatureColumn(str(item["name"]), str(kind), categories=tuple(categories))


def _is_missing(cell: str) -> bool:
    """Return True for a missing cell ("" or "?" after stripping)."""
    return cell in MISSING_VALUES


_BLANK, _NON_FINITE, _NUMBER, _TEXT = "blank", "non-finite", "number", "text"


def _cell_kind(cell: str) -> str:
    """Classify a cell: blank ("" or "?"), a non-finite number (NaN, inf), a number, or text."""
    if cell in MISSING_VALUES:
        return _BLANK
    try:
        value = float(cell)
    except ValueError:
        return _TEXT
    return _NUMBER if math.isfinite(value) else _NON_FINITE


def _is_absent(cell: str, numeric: bool) -> bool:
    """Whether a feature cell is a missing value: blank, NaN or infinite, or text if numeric."""
    kind = _cell_kind(cell)
    return kind in (_BLANK, _NON_FINITE) or (numeric and kind == _TEXT)


def _parse_float(cell: str) -> float | None:
    """Return the cell as a finite float, or None when it is not one."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _normalise_label(cell: str) -> str:
    """Strip one trailing '.', so that UCI's "<=50K." (test file) equals "<=50K"."""
    return cell[:-1].rstrip() if cell.endswith(".") else cell


def _sorted_classes(values: set[str]) -> tuple[str, ...]:
    """Sort label strings: numerically when all are integers (so "10" follows "9"), else as text."""
    try:
        return tuple(sorted(values, key=int))
    except ValueError:
        return tuple(sorted(values))


def _label_strings(table: CsvTable, label_index: int) -> list[str]:
    """Return the normalised label of every row; a missing label is an error naming its line."""
    labels: list[str] = []
    for row, line in zip(table.rows, table.line_numbers, strict=True):
        cell = row[label_index]
        if _is_missing(cell):
            raise DataError(
                f"{table.source} line {line} has no value in label column "
                f"'{table.header[label_index]}'; fill it in or drop that row"
            )
        labels.append(_normalise_label(cell))
    return labels


def _classes_of(table: CsvTable, label_column: str) -> tuple[str, ...]:
    """Return the sorted distinct labels of the table; fewer than two is an error."""
    index = table.column_index(label_column, "label column")
    classes = _sorted_classes(set(_label_strings(table, index)))
    if len(classes) < 2:
        raise DataError(
            f"label column '{label_column}' of {table.source} has {len(classes)} distinct "
            f"value(s) ({', '.join(classes)}); classification needs at least 2 classes"
        )
    return classes


def fit_tabular_schema(
    table: CsvTable,
    label_column: str,
    *,
    partition_column: str | None = None,
    fit_rows: np.ndarray | None = None,
    kinds: Mapping[str, str] | None = None,
) -> TabularSchema:
    """Decide how to encode ``table``: column kinds, categories, numeric statistics and classes.

    A column is numeric when more of its present cells (not blank, "?", NaN or infinite) are
    finite numbers than are text, else categorical; ``kinds`` (column name → "numeric" or
    "categorical") fixes the kinds instead, e.g. as decided on a file before rows were dropped.
    In a numeric column, text cells are missing values (see :func:`apply_missing_policy`), so a
    stray "nan" or "n/a" never turns it into one-hot categories. Classes and category lists come
    from the whole table (so every client encodes identically);
    numeric means and stds come from ``fit_rows`` only (the training split; all rows if None),
    so test data does not leak into the standardisation. Every column except the label and
    partition columns becomes a feature, in header order.
    """
    label_index = table.column_index(label_column, "label column")
    skip = {label_index}
    if partition_column is not None:
        partition_index = table.column_index(partition_column, "partition column")
        if partition_index == label_index:
            raise DataError(
                f"'{partition_column}' cannot be both the label column and the partition column; "
                "pass a different --partition-column"
            )
        skip.add(partition_index)
    classes = _classes_of(table, label_column)
    if fit_rows is None:
        fit_positions = np.arange(len(table), dtype=np.int64)
    else:
        fit_positions = np.asarray(fit_rows, dtype=np.int64)
        if fit_positions.ndim != 1 or (
            fit_positions.size and (fit_positions.min() < 0 or fit_positions.max() >= len(table))
        ):
            raise DataError(f"fit_rows must be 1-d row positions in 0..{len(table) - 1}")
    columns: list[FeatureColumn] = []
    for index, name in enumerate(table.header):
        if index in skip:
            continue
        cells = [row[index] for row in table.rows]
        cell_kinds = [_cell_kind(cell) for cell in cells]
        if kinds is not None and name in kinds:
            numeric = kinds[name] == _NUMERIC
        else:
            numeric = cell_kinds.count(_NUMBER) > cell_kinds.count(_TEXT)
        if numeric:
            values = _numeric_values(cells)[fit_positions]
            values = values[~np.isnan(values)]
            mean = float(values.mean()) if values.size else 0.0
            std = float(values.std()) if values.size else 1.0
            if not (math.isfinite(std) and std > 0.0):
                std = 1.0
            columns.append(FeatureColumn(name, _NUMERIC, mean=mean, std=std))
        else:
            present = {
                cell
                for cell, kind in zip(cells, cell_kinds, strict=True)
                if kind in (_NUMBER, _TEXT)
            }
            columns.append(FeatureColumn(name, _CATEGORICAL, categories=tuple(sorted(present))))
    return TabularSchema(
        label_column=label_column,
        classes=classes,
        columns=tuple(columns),
        partition_column=partition_column,
    )


def _numeric_values(cells: Sequence[str]) -> np.ndarray:
    """Parse cells to float64, with NaN for every cell that is not a finite number."""
    values = [_parse_float(cell) for cell in cells]
    return np.array([math.nan if value is None else value for value in values], dtype=np.float64)


def encode_with_schema(table: CsvTable, schema: TabularSchema) -> ArrayDataset:
    """Encode a table with an agreed schema into an :class:`ArrayDataset`.

    Columns are matched by name, so their order in the file does not matter and extra columns
    are ignored. Blank and "?" cells are imputed (numeric: the schema's mean; categorical: all
    zeros), as is a category the schema does not know. A NaN, infinite or text cell in a numeric
    column, or a label the schema does not know, is an error naming the line: apply the missing-
    value policy first (:func:`apply_missing_policy`), which drops or blanks those cells.
    """
    label_index = table.column_index(schema.label_column, "label column")
    features = np.zeros((len(table), schema.width), dtype=np.float32)
    offset = 0
    for column in schema.columns:
        index = table.column_index(column.name, "schema column")
        cells = [row[index] for row in table.rows]
        if column.kind == _NUMERIC:
            for cell, line in zip(cells, table.line_numbers, strict=True):
                if not _is_missing(cell) and _parse_float(cell) is None:
                    raise DataError(
                        f"{table.source} line {line}: column '{column.name}' is numeric in the "
                        "schema but holds NaN, an infinity or text there; apply the missing-value "
                        "policy first, fix the value or agree a new schema"
                    )
            values = _numeric_values(cells)
            values[np.isnan(values)] = column.mean
            features[:, offset] = (values - column.mean) / column.std
        else:
            lookup = {category: i for i, category in enumerate(column.categories)}
            codes = np.array([lookup.get(cell, -1) for cell in cells], dtype=np.int64)
            known = np.flatnonzero(codes >= 0)
            features[known, offset + codes[known]] = 1.0
        offset += column.width
    class_index = {label: i for i, label in enumerate(schema.classes)}
    labels = np.empty(len(table), dtype=np.int64)
    for position, (label, line) in enumerate(
        zip(_label_strings(table, label_index), table.line_numbers, strict=True)
    ):
        code = class_index.get(label)
        if code is None:
            raise DataError(
                f"{table.source} line {line}: label {label!r} is not one of the schema's classes "
                f"({', '.join(schema.classes)}); fix the label or agree a new schema"
            )
        labels[position] = code
    return ArrayDataset(features, labels, schema.num_classes)


def check_table_for_schema(table: CsvTable, schema: TabularSchema) -> dict[str, int]:
    """Check that ``table`` can be encoded with ``schema``, without putting cell values in errors.

    Meant for a node's private file before :func:`apply_missing_policy` and
    :func:`encode_with_schema`: a label that is not one of the schema's classes is an error that
    gives a count and the first line (the classes are named, since they are schema information
    the server shares; the node's own value is not). NaN, infinite or text cells in a numeric
    column are not errors: they are missing values, which :func:`apply_missing_policy` handles.
    Returns, per categorical column, how many present cells hold a category the schema does not
    know (they encode as all zeros); columns with none are left out.
    """
    unknown: dict[str, int] = {}
    for column in schema.columns:
        index = table.column_index(column.name, "schema column")
        if column.kind == _CATEGORICAL:
            known = set(column.categories)
            count = sum(
                1
                for row in table.rows
                if not _is_absent(row[index], numeric=False) and row[index] not in known
            )
            if count:
                unknown[column.name] = count
    label_index = table.column_index(schema.label_column, "label column")
    classes = set(schema.classes)
    strangers = [
        (label, line)
        for label, line in zip(_label_strings(table, label_index), table.line_numbers, strict=True)
        if label not in classes
    ]
    if strangers:
        # The value itself is not named: a client's error text travels to the server's log.
        _, line = strangers[0]
        raise DataError(
            f"{table.source}: the label on line {line} ({len(strangers)} row(s) in all) is not "
            f"one of the reference classes ({', '.join(schema.classes)}); fix those labels "
            "or drop those rows"
        )
    return unknown


@dataclass(frozen=True)
class MissingValues:
    """How many feature values of a table were missing, and what the policy did with them.

    Only counts are kept, never cell values: a node's report may travel to the server's log.
    ``by_column`` counts the missing cells of each column that has any (blank, "?", NaN,
    infinite, or text in a numeric column); ``not_numbers`` counts, per numeric column, those
    that held NaN, an infinity or text (a file that was meant to hold numbers there).
    """

    policy: str
    rows: int
    affected_rows: int
    by_column: Mapping[str, int] = field(default_factory=dict)
    not_numbers: Mapping[str, int] = field(default_factory=dict)

    @property
    def dropped_rows(self) -> int:
        """Examples left out (policy "drop"), else 0."""
        return self.affected_rows if self.policy == "drop" else 0

    def describe(self, source: str) -> str:
        """One line for a console or log: the counts and the action, no data values."""
        if not self.affected_rows:
            return f"{source}: no missing values"
        columns = []
        for name, count in self.by_column.items():
            odd = self.not_numbers.get(name, 0)
            note = f" ({odd} NaN, infinite or not a number)" if odd else ""
            columns.append(f"{count} in '{name}'{note}")
        if self.policy == "drop":
            action = (
                f"dropped {self.affected_rows} example(s) (--missing drop; --missing impute "
                "keeps them)"
            )
        else:
            action = (
                "imputed (--missing impute: the training mean in numeric columns, no category "
                "in categorical ones)"
            )
        return (
            f"{source}: {self.affected_rows} of {self.rows} row(s) have missing feature values "
            f"({', '.join(columns)}); {action}"
        )

    def to_json(self) -> dict[str, Any]:
        """Plain counts for results.json."""
        return {
            "policy": self.policy,
            "rows": self.rows,
            "rows_with_missing_values": self.affected_rows,
            "dropped_rows": self.dropped_rows,
            "missing_by_column": dict(self.by_column),
            "not_numbers_by_column": dict(self.not_numbers),
        }


def _check_missing_policy(policy: str) -> str:
    if policy not in MISSING_POLICIES:
        raise DataError(
            f"unknown missing-value policy {policy!r}; choose one of: {', '.join(MISSING_POLICIES)}"
        )
    return policy


def _take_rows(table: CsvTable, keep: np.ndarray) -> CsvTable:
    """The rows of ``table`` where ``keep`` is true, with their line numbers."""
    positions = np.flatnonzero(keep).tolist()
    return CsvTable(
        table.source,
        table.header,
        tuple(table.rows[i] for i in positions),
        tuple(table.line_numbers[i] for i in positions),
    )


def apply_missing_policy(
    table: CsvTable, schema: TabularSchema, policy: str = DEFAULT_MISSING_POLICY
) -> tuple[CsvTable, MissingValues]:
    """Find the missing feature values of ``table`` under ``schema`` and apply ``policy``.

    A feature cell is missing when it is blank or "?", NaN or infinite, or (in a numeric column)
    not a number. ``"drop"`` returns the table without the rows that have any; ``"impute"``
    returns every row, with those cells blanked so that :func:`encode_with_schema` imputes them
    (numeric: the schema's mean; categorical: all zeros). Labels and the partition column are
    not features: their own checks apply. Returns the table and the counts.
    """
    _check_missing_policy(policy)
    rows = len(table)
    absent = np.zeros(rows, dtype=bool)
    by_column: dict[str, int] = {}
    not_numbers: dict[str, int] = {}
    blank_cells: list[tuple[int, int]] = []
    for column in schema.columns:
        index = table.column_index(column.name, "schema column")
        numeric = column.kind == _NUMERIC
        count = odd = 0
        for position, row in enumerate(table.rows):
            cell = row[index]
            kind = _cell_kind(cell)
            if kind == _BLANK:
                count += 1
            elif kind == _NON_FINITE or (numeric and kind == _TEXT):
                count += 1
                odd += numeric
                blank_cells.append((position, index))
            else:
                continue
            absent[position] = True
        if count:
            by_column[column.name] = count
        if odd:
            not_numbers[column.name] = odd
    report = MissingValues(policy, rows, int(absent.sum()), by_column, not_numbers)
    if not report.affected_rows:
        return table, report
    if policy == "drop":
        return _take_rows(table, ~absent), report
    cleaned = [list(row) for row in table.rows]
    for position, index in blank_cells:
        cleaned[position][index] = ""
    rows_out = tuple(tuple(row) for row in cleaned)
    return CsvTable(table.source, table.header, rows_out, table.line_numbers), report


def _group_values(table: CsvTable, partition_column: str) -> np.ndarray:
    """Return the partition column as int64 when every value is an integer, else as strings."""
    index = table.column_index(partition_column, "partition column")
    cells = [row[index] for row in table.rows]
    for cell, line in zip(cells, table.line_numbers, strict=True):
        if _is_missing(cell):
            raise DataError(
                f"{table.source} line {line} has no value in partition column "
                f"'{partition_column}'; fill it in so every row belongs to a client"
            )
    try:
        return np.array([int(cell) for cell in cells], dtype=np.int64)
    except ValueError:
        return np.array(cells, dtype=str)


def _split_table(
    table: CsvTable,
    label_column: str,
    partition_column: str | None,
    seed: int,
    test_fraction: float,
    missing: str = DEFAULT_MISSING_POLICY,
) -> TrainTest:
    """Apply the missing-value policy, split stratified by label, fit the schema, and encode.

    Column kinds are decided on the whole file, before any row is dropped, and kept.
    """
    whole = fit_tabular_schema(table, label_column, partition_column=partition_column)
    table, report = apply_missing_policy(table, whole, missing)
    if not table.rows:
        raise DataError(
            f"{report.describe(table.source)}, which leaves no data; fill in the missing "
            "values or pass --missing impute"
        )
    classes = _classes_of(table, label_column)
    class_index = {label: i for i, label in enumerate(classes)}
    label_index = table.column_index(label_column, "label column")
    y = np.array([class_index[s] for s in _label_strings(table, label_index)], dtype=np.int64)
    groups = _group_values(table, partition_column) if partition_column is not None else None
    train_idx, test_idx = _stratified_split(y, test_fraction, seed, table.source)
    schema = fit_tabular_schema(
        table,
        label_column,
        partition_column=partition_column,
        fit_rows=train_idx,
        kinds={column.name: column.kind for column in whole.columns},
    )
    encoded = encode_with_schema(table, schema)
    return TrainTest(
        train=encoded.subset(train_idx),
        test=encoded.subset(test_idx),
        kind="tabular",
        groups=None if groups is None else groups[train_idx],
        schema=schema,
        missing=report,
    )


@functools.lru_cache(maxsize=8)
def _load_table_cached(
    path: Path,
    mtime_ns: int,
    size: int,
    column_names: tuple[str, ...] | None,
    label_column: str,
    partition_column: str | None,
    seed: int,
    test_fraction: float,
    missing: str,
) -> TrainTest:
    """Read, split and encode a table file once per process and argument set.

    ``mtime_ns`` and ``size`` are part of the cache key only, so that a replaced file is re-read.
    """
    del mtime_ns, size
    table = read_csv_table(path, column_names=column_names)
    if column_names is not None and table.rows[0] == table.header:
        # A header-less format given a file that has a header anyway: drop that row.
        table = CsvTable(table.source, table.header, table.rows[1:], table.line_numbers[1:])
        if not table.rows:
            raise DataError(f"data file {path} has no data rows; pass a file with data rows")
    return _freeze(
        _split_table(table, label_column, partition_column, seed, test_fraction, missing)
    )


def _load_csv(
    data_file: str | None,
    label_column: str | None,
    partition_column: str | None,
    seed: int,
    test_fraction: float,
    missing: str,
) -> TrainTest:
    """Load a user CSV file with a header row."""
    if data_file is None:
        raise DataError("dataset 'csv' needs --data-file with the path of a CSV file")
    if label_column is None:
        raise DataError("dataset 'csv' needs --label-column naming the column to predict")
    file = Path(data_file).expanduser()
    problem = not_a_file_reason(file)
    if problem is not None:
        raise DataError(
            f"CSV file {file} {problem}; pass --data-file with the path of a CSV file "
            "that has a header row"
        )
    return _load_table_cached(
        *_file_key(file),
        None,
        label_column,
        partition_column,
        int(seed),
        float(test_fraction),
        missing,
    )


def _load_adult(
    data_dir: str | None,
    data_file: str | None,
    label_column: str | None,
    partition_column: str | None,
    seed: int,
    test_fraction: float,
    missing: str,
) -> TrainTest:
    """Load UCI Adult (``adult.data``, no header) through the CSV code path."""
    if data_file is not None:
        file = Path(data_file).expanduser()
    elif data_dir is not None:
        file = Path(data_dir).expanduser() / ADULT_FILE
    else:
        raise DataError(
            f"dataset 'adult' needs its file: pass --data-dir pointing at a folder with "
            f"{ADULT_FILE} (the UCI Adult training file)"
        )
    problem = not_a_file_reason(file)
    if problem is not None:
        raise DataError(
            f"UCI Adult file {file} {problem}; pass --data-dir pointing at a folder with "
            f"{ADULT_FILE} (the UCI Adult training file)"
        )
    return _load_table_cached(
        *_file_key(file),
        ADULT_COLUMNS,
        label_column or ADULT_LABEL,
        partition_column,
        int(seed),
        float(test_fraction),
        missing,
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _option(value: str | None) -> str | None:
    """Treat an empty string like None: run configurations spell "unset" as ""."""
    if value is None:
        return None
    value = str(value).strip()
    return value or None


@register_dataset("digits", kind="image", feature_shape=(1, 8, 8), num_classes=_DIGITS_CLASSES)
def _digits(options: DatasetOptions) -> TrainTest:
    """scikit-learn's bundled 8x8 digits, (n, 1, 8, 8) in [0, 1], stratified split."""
    return _load_digits(int(options.seed), float(options.test_fraction))


_MNIST_SHAPE = (1, _IMAGE_SIDE, _IMAGE_SIDE)


@register_dataset(
    "mnist",
    kind="image",
    feature_shape=_MNIST_SHAPE,
    num_classes=_MNIST_CLASSES,
    needs=("data-dir",),
)
def _mnist(options: DatasetOptions) -> TrainTest:
    """The canonical MNIST IDX .gz files in ``data_dir``, with their own 60k/10k split."""
    return _load_mnist_like("mnist", options.data_dir)


@register_dataset(
    "fashion-mnist",
    kind="image",
    feature_shape=_MNIST_SHAPE,
    num_classes=_MNIST_CLASSES,
    needs=("data-dir",),
)
def _fashion_mnist(options: DatasetOptions) -> TrainTest:
    """The canonical Fashion-MNIST IDX .gz files in ``data_dir``, with their own split."""
    return _load_mnist_like("fashion-mnist", options.data_dir)


@register_dataset("adult", kind="tabular", needs=("data-dir",))
def _adult(options: DatasetOptions) -> TrainTest:
    """UCI ``adult.data`` in ``data_dir`` (or ``data_file``), label "income"."""
    return _load_adult(
        options.data_dir,
        options.data_file,
        options.label_column,
        options.partition_column,
        options.seed,
        options.test_fraction,
        options.missing,
    )


@register_dataset("csv", kind="tabular", needs=("data-file", "label-column"))
def _csv(options: DatasetOptions) -> TrainTest:
    """A user's CSV file with a header row; ``label_column`` names the column to predict."""
    return _load_csv(
        options.data_file,
        options.label_column,
        options.partition_column,
        options.seed,
        options.test_fraction,
        options.missing,
    )


DATASETS: tuple[str, ...] = dataset_names()
"""The built-in data set names (what this module registers); :func:`dataset_names` has them all."""


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    data_file: str | None = None,
    label_column: str | None = None,
    partition_column: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    missing: str = DEFAULT_MISSING_POLICY,
) -> TrainTest:
    """Load data set ``name`` (one of :func:`dataset_names`) as train and test arrays.

    - digits: scikit-learn's bundled 8x8 digits, (n, 1, 8, 8) in [0, 1], stratified split.
    - mnist / fashion-mnist: the canonical IDX .gz files in ``data_dir``, (n, 1, 28, 28) in
      [0, 1]; the split is the files' own 60k/10k one (``seed``/``test_fraction`` unused).
    - adult: UCI ``adult.data`` in ``data_dir`` (or ``data_file``), label "income".
    - csv: ``data_file`` with a header row; ``label_column`` required.
    - any data set added with :func:`register_dataset`.

    Tabular data sets may name a ``partition_column``: it is left out of the features and its
    per-training-example values are returned in ``groups``. Empty strings count as unset.
    ``missing`` is the missing-value policy of tabular data sets (:data:`MISSING_POLICIES`);
    what it did is in the result's ``missing``. Built-in results are cached in-process and
    their arrays are read-only. A result that is not a :class:`TrainTest`, or whose shape
    differs from the one registered, is a DataError naming the data set.
    """
    data_dir, data_file = _option(data_dir), _option(data_file)
    label_column, partition_column = _option(label_column), _option(partition_column)
    entry = dataset_entry(name)
    key = entry.name
    _check_split_options(seed, test_fraction)
    _check_missing_policy(missing)
    if entry.kind == "image":
        tabular = " and ".join(n for n, e in _DATASETS.items() if e.kind == "tabular")
        for option, value in (
            ("--label-column", label_column),
            ("--partition-column", partition_column),
            ("--data-file", data_file),
        ):
            if value is not None:
                raise DataError(
                    f"{option} does not apply to the image dataset '{key}'; leave it out "
                    f"(it is for the tabular datasets {tabular})"
                )
    options = DatasetOptions(
        data_dir, data_file, label_column, partition_column, seed, test_fraction, missing
    )
    return _checked(entry, entry.load(options))


def _checked(entry: DatasetEntry, data: object) -> TrainTest:
    """What a loader returned, checked against its registration."""
    if not isinstance(data, TrainTest):
        raise DataError(
            f"dataset {entry.name!r}: its loader returned {type(data).__name__}, not a "
            f"TrainTest; make {_qualified(entry.load)} return TrainTest(train, test, kind)"
        )
    if data.kind != entry.kind:
        raise DataError(
            f"dataset {entry.name!r} is registered as {entry.kind} data but loaded as "
            f"{data.kind}; make the two agree"
        )
    expected = (entry.feature_shape, entry.num_classes)
    if entry.feature_shape is not None and (data.train.feature_shape, data.num_classes) != expected:
        raise DataError(
            f"dataset {entry.name!r} loaded examples of shape {data.train.feature_shape} with "
            f"{data.num_classes} classes, but was registered with shape {entry.feature_shape} "
            f"and {entry.num_classes} classes; make the two agree"
        )
    return data
