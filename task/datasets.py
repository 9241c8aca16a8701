"""Data sets shared by clients and server: the registry of named data sets and ``load_dataset``.

Every loader returns a :class:`TrainTest` of :class:`ArrayDataset` objects (float32 features,
int64 labels), so the trainer never needs to know where the data came from. Nothing here
downloads: the default ("digits") ships inside scikit-learn, and every other data set is read
from local files the user names. Bad input raises :class:`DataError` with a one-line message
that says what is wrong and what to do about it.

This module holds the registry (:func:`register_dataset`, :func:`dataset_names`,
:func:`dataset_entry`, :data:`IMAGE_SPECS`), the built-in data sets (digits, mnist,
fashion-mnist, adult, csv) and :func:`load_dataset`, which checks the options and every load
against its registration. The work itself lives in modules with one job each, whose public
names are re-exported here so that callers need only this module:

- :mod:`privet.task.containers`: :class:`ArrayDataset`, :class:`TrainTest`, :class:`DataError`.
- :mod:`privet.task.idx_files`: reading (Fashion-)MNIST IDX files (:func:`read_idx_images`,
  :func:`read_idx_labels`), which image nodes also use for their own files.
- :mod:`privet.task.tabular`: CSV tables, the :class:`TabularSchema` that encodes them
  identically on every node (saved and read as a schema file, identified by
  :func:`schema_digest`, checked strictly by :func:`check_table_against_schema`), and the
  missing-value policy (:data:`MISSING_POLICIES`, :class:`MissingValues`).

A run may name a schema file (tabular data: encode with it instead of fitting one) and a test
file (the whole test set, instead of a held-out split); every result says in ``test_source``
what its test set is. :func:`read_npz_examples`, :func:`fit_example_shape` and
:func:`check_example_labels` check examples in an npz file, a node's own or a server's test
file.
- :mod:`privet.task.splits` (the stratified train/test split) and
  :mod:`privet.task.local_files` (:func:`not_a_file_reason`, the cache key of a file).

Loaded arrays are cached in-process (many virtual clients in one process load the same files)
and are therefore read-only; :meth:`ArrayDataset.subset` returns writable copies.
"""

import dataclasses
import functools
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privet.task.containers import KINDS, ArrayDataset, DataError, TrainTest, freeze
from privet.task.idx_files import (
    IDX_FILES,
    MNIST_CLASSES,
    MNIST_SHAPE,
    load_mnist_like,
    read_idx_images,
    read_idx_labels,
)
from privet.task.local_files import file_key, not_a_file_reason
from privet.task.splits import check_split_options, stratified_split
from privet.task.tabular import (
    ADULT_COLUMNS,
    ADULT_FILE,
    DEFAULT_MISSING_POLICY,
    MISSING_POLICIES,
    MISSING_VALUES,
    SCHEMA_VERSION,
    CsvTable,
    FeatureColumn,
    MissingValues,
    TabularSchema,
    apply_missing_policy,
    check_missing_policy,
    check_table_against_schema,
    check_table_for_schema,
    encode_with_schema,
    fit_tabular_schema,
    load_adult,
    load_csv,
    load_schema_file,
    read_csv_table,
    save_schema_file,
    schema_digest,
)

__all__ = [
    # Defined here: the registry, the built-in data sets and the entry point.
    "DATASETS",
    "DatasetEntry",
    "DatasetLoader",
    "DatasetOptions",
    "IMAGE_SPECS",
    "dataset_entry",
    "dataset_names",
    "check_example_labels",
    "fit_example_shape",
    "load_dataset",
    "read_npz_examples",
    "register_dataset",
    # Re-exported from privet.task.containers.
    "ArrayDataset",
    "DataError",
    "TrainTest",
    # Re-exported from privet.task.idx_files.
    "IDX_FILES",
    "read_idx_images",
    "read_idx_labels",
    # Re-exported from privet.task.tabular.
    "ADULT_COLUMNS",
    "ADULT_FILE",
    "DEFAULT_MISSING_POLICY",
    "MISSING_POLICIES",
    "MISSING_VALUES",
    "SCHEMA_VERSION",
    "CsvTable",
    "FeatureColumn",
    "MissingValues",
    "TabularSchema",
    "apply_missing_policy",
    "check_table_against_schema",
    "check_table_for_schema",
    "encode_with_schema",
    "fit_tabular_schema",
    "load_schema_file",
    "read_csv_table",
    "save_schema_file",
    "schema_digest",
    # Re-exported from privet.task.local_files.
    "not_a_file_reason",
]

_DIGITS_CLASSES = 10


# --------------------------------------------------------------------------------------------
# The registry of named data sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetOptions:
    """What a run says about its data; each loader uses the options that apply to it.

    Empty strings are already turned into None, and ``seed``, ``test_fraction`` and ``missing``
    already checked, when a loader sees them. ``schema_file`` (tabular data sets) names the
    agreed schema JSON to encode with instead of fitting one; ``test_file`` names a file whose
    examples are the whole test set (no split). A tabular loader must honour both:
    :func:`load_dataset` refuses a result that ignored them.
    """

    data_dir: str | None = None
    data_file: str | None = None
    label_column: str | None = None
    partition_column: str | None = None
    seed: int = 0
    test_fraction: float = 0.2
    missing: str = DEFAULT_MISSING_POLICY
    schema_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    max_length: int = 128
    model_folder: str | None = None
    prompt_column: str = "prompt"
    response_column: str = "response"


DatasetLoader = Callable[[DatasetOptions], TrainTest]
"""Loads a data set: train and test arrays, whose shapes give the feature shape and classes."""


@dataclass(frozen=True)
class DatasetEntry:
    """A named data set: how to load it, and what a run must know about it before loading.

    ``kind`` is "image" (options for tables are refused), "tabular" (a partition column may
    split it across clients) or "text" (tokenized with the run's model folder's tokenizer).
    ``feature_shape`` and ``num_classes`` are given when they are fixed in advance (images): a
    deployment node checks its own files against them without the data set, and every load is
    checked against them. ``needs`` are the run options (Flower's spelling, e.g. "data-dir")
    the data set cannot be loaded without.
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
    if kind not in KINDS:
        raise DataError(f"dataset {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
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
    train_idx, test_idx = stratified_split(labels, test_fraction, seed, "digits")
    return freeze(
        TrainTest(
            train=ArrayDataset(images[train_idx], labels[train_idx], _DIGITS_CLASSES),
            test=ArrayDataset(images[test_idx], labels[test_idx], _DIGITS_CLASSES),
            kind="image",
            test_source=f"held-out {test_fraction * 100:g}% of scikit-learn's digits "
            f"({len(test_idx)} of {len(labels)} examples)",
        )
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


@register_dataset(
    "mnist",
    kind="image",
    feature_shape=MNIST_SHAPE,
    num_classes=MNIST_CLASSES,
    needs=("data-dir",),
)
def _mnist(options: DatasetOptions) -> TrainTest:
    """The canonical MNIST IDX .gz files in ``data_dir``, with their own 60k/10k split."""
    return load_mnist_like("mnist", options.data_dir)


@register_dataset(
    "fashion-mnist",
    kind="image",
    feature_shape=MNIST_SHAPE,
    num_classes=MNIST_CLASSES,
    needs=("data-dir",),
)
def _fashion_mnist(options: DatasetOptions) -> TrainTest:
    """The canonical Fashion-MNIST IDX .gz files in ``data_dir``, with their own split."""
    return load_mnist_like("fashion-mnist", options.data_dir)


@register_dataset("adult", kind="tabular", needs=("data-dir",))
def _adult(options: DatasetOptions) -> TrainTest:
    """UCI ``adult.data`` in ``data_dir`` (or ``data_file``), label "income"."""
    return load_adult(
        options.data_dir,
        options.data_file,
        options.label_column,
        options.partition_column,
        options.seed,
        options.test_fraction,
        options.missing,
        schema_file=options.schema_file,
        test_file=options.test_file,
    )


@register_dataset("csv", kind="tabular", needs=("data-file", "label-column"))
def _csv(options: DatasetOptions) -> TrainTest:
    """A user's CSV file with a header row; ``label_column`` names the column to predict."""
    return load_csv(
        options.data_file,
        options.label_column,
        options.partition_column,
        options.seed,
        options.test_fraction,
        options.missing,
        schema_file=options.schema_file,
        test_file=options.test_file,
    )


@register_dataset("text", kind="text", needs=("data-file", "label-column"))
def _text(options: DatasetOptions) -> TrainTest:
    """A user's texts (CSV/TSV with a header, or JSON Lines), tokenized by the model folder's."""
    from privet.task.text import load_text_data  # lazy: transformers only for text runs

    return load_text_data(options)


@register_dataset("prompts", kind="text", needs=("data-file",))
def _prompts(options: DatasetOptions) -> TrainTest:
    """Prompts and responses for a causal language model (``--task causal-lm``)."""
    from privet.task.text import load_prompt_data  # lazy: transformers only for text runs

    return load_prompt_data(options)


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
    schema_file: str | None = None,
    test_file: str | None = None,
    text_column: str = "text",
    max_length: int = 128,
    model_folder: str | None = None,
    prompt_column: str = "prompt",
    response_column: str = "response",
) -> TrainTest:
    """Load data set ``name`` (one of :func:`dataset_names`) as train and test arrays.

    - digits: scikit-learn's bundled 8x8 digits, (n, 1, 8, 8) in [0, 1], stratified split.
    - mnist / fashion-mnist: the canonical IDX .gz files in ``data_dir``, (n, 1, 28, 28) in
      [0, 1]; the split is the files' own 60k/10k one (``seed``/``test_fraction`` unused).
    - adult: UCI ``adult.data`` in ``data_dir`` (or ``data_file``), label "income".
    - csv: ``data_file`` with a header row; ``label_column`` required (unless a schema names it).
    - text: ``data_file`` (CSV/TSV with a header, or JSON Lines) with ``text_column`` and
      ``label_column``, tokenized to ``max_length`` by the tokenizer in ``model_folder``.
    - prompts: ``data_file`` with ``prompt_column`` and ``response_column``, for a causal
      language model (``--task causal-lm``), tokenized likewise.
    - any data set added with :func:`register_dataset`.

    Tabular data sets may name a ``partition_column``: it is left out of the features and its
    per-training-example values are returned in ``groups``. Empty strings count as unset.
    ``missing`` is the missing-value policy of tabular data sets (:data:`MISSING_POLICIES`);
    what it did is in the result's ``missing``. ``schema_file`` (tabular) encodes with an agreed
    schema instead of fitting one; its policy must equal ``missing``. ``test_file`` makes that
    whole file the test set (CSV for tabular data sets, an npz with arrays x and y for images);
    an image data set whose own files are not named then trains on nothing (a server that only
    evaluates). The result's ``test_source`` says what the test set is. Built-in results are
    cached in-process and their arrays are read-only. A result that is not a
    :class:`TrainTest`, whose shape differs from the one registered, or that ignored the schema
    or test file, is a DataError naming the data set.
    """
    data_dir, data_file = _option(data_dir), _option(data_file)
    label_column, partition_column = _option(label_column), _option(partition_column)
    schema_file, test_file = _option(schema_file), _option(test_file)
    entry = dataset_entry(name)
    key = entry.name
    check_split_options(seed, test_fraction)
    check_missing_policy(missing)
    if entry.kind == "image":
        tabular = " and ".join(n for n, e in _DATASETS.items() if e.kind == "tabular")
        for option, value in (
            ("--label-column", label_column),
            ("--partition-column", partition_column),
            ("--data-file", data_file),
            ("--schema-file", schema_file),
        ):
            if value is not None:
                raise DataError(
                    f"{option} does not apply to the image dataset '{key}'; leave it out "
                    f"(it is for the tabular datasets {tabular})"
                )
    options = DatasetOptions(
        data_dir,
        data_file,
        label_column,
        partition_column,
        seed,
        test_fraction,
        missing,
        schema_file=schema_file,
        test_file=test_file,
        text_column=text_column,
        max_length=max_length,
        model_folder=_option(model_folder),
        prompt_column=prompt_column,
        response_column=response_column,
    )
    if entry.kind == "image" and test_file is not None:
        return _with_image_test_file(entry, options, test_file)
    return _described(entry, _checked(entry, entry.load(options), options))


def _checked(entry: DatasetEntry, data: object, options: DatasetOptions) -> TrainTest:
    """What a loader returned, checked against its registration and the files it was given."""
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
    if options.test_file is not None and not data.test_source.startswith("test-file "):
        raise DataError(
            f"dataset {entry.name!r}: its loader ignored test-file; make "
            f"{_qualified(entry.load)} evaluate on options.test_file and say so in test_source"
        )
    if options.schema_file is not None:
        wanted = schema_digest(load_schema_file(options.schema_file))
        if data.schema is None or schema_digest(data.schema) != wanted:
            raise DataError(
                f"dataset {entry.name!r}: its loader did not encode with schema-file "
                f"{options.schema_file}; make {_qualified(entry.load)} use options.schema_file"
            )
    return data


def _described(entry: DatasetEntry, data: TrainTest) -> TrainTest:
    """``data`` with a ``test_source``: a generic one when its loader gave none."""
    if data.test_source:
        return data
    return dataclasses.replace(
        data, test_source=f"the test split of data set '{entry.name}' ({len(data.test)} examples)"
    )


_OPTION_OF_NEED = {"data-dir": "data_dir", "data-file": "data_file", "label-column": "label_column"}


def _with_image_test_file(
    entry: DatasetEntry, options: DatasetOptions, test_file: str
) -> TrainTest:
    """An image data set evaluated on a whole npz test file; its own files train, if named.

    Without the options the data set needs (e.g. mnist's data-dir) the training split is empty
    with the registered shape: a server that only evaluates needs none of the training files.
    """
    if entry.feature_shape is None or entry.num_classes is None:
        raise DataError(
            f"test-file needs an image data set with a registered feature shape, and "
            f"{entry.name!r} has none; load its test data in its own loader"
        )
    shape, classes = entry.feature_shape, entry.num_classes
    if all(getattr(options, _OPTION_OF_NEED[need]) for need in entry.needs):
        train = _checked(entry, entry.load(options), dataclasses.replace(options, test_file=None))
        train_split = train.train
    else:
        train_split = ArrayDataset(
            np.zeros((0, *shape), dtype=np.float32), np.zeros(0, dtype=np.int64), classes
        )
    file = Path(test_file).expanduser()
    problem = not_a_file_reason(file)
    if problem is not None:
        raise DataError(f"test file {file} {problem}; pass test-file with the path of an npz file")
    test = _image_test_cached(*file_key(file), entry.name, shape, classes)
    return TrainTest(
        train=train_split,
        test=test,
        kind="image",
        test_source=f"test-file {file} ({len(test)} examples)",
    )


@functools.lru_cache(maxsize=4)
def _image_test_cached(
    path: Path, mtime_ns: int, size: int, dataset: str, shape: tuple[int, ...], classes: int
) -> ArrayDataset:
    """The npz test file of an image data set, checked like a node's file; read-only arrays."""
    del mtime_ns, size
    x, y = read_npz_examples(path, "test file")
    x = fit_example_shape(path, x, shape, dataset, "test file")
    outside = int(np.count_nonzero((x < 0.0) | (x > 1.0)))
    if outside:
        raise DataError(
            f"npz file {path}: {outside} pixel value(s) lie outside [0, 1], the range the "
            f"data set '{dataset}' is scaled to; scale x (e.g. uint8 / 255)"
        )
    check_example_labels(path, y, classes, dataset, "test file")
    examples = ArrayDataset(x, y.astype(np.int64), classes)
    examples.features.setflags(write=False)
    examples.labels.setflags(write=False)
    return examples


# --------------------------------------------------------------------------------------------
# Examples in an npz file (a node's own file, a server's test file)
# --------------------------------------------------------------------------------------------

_NPZ_HINT = "save it with numpy.savez(path, x=features, y=labels)"


def read_npz_examples(path: Path, role: str = "data file") -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` (float32, all finite, shape (n, ...)) and ``y`` (1-d integers) of an npz file.

    Every problem is a one-line DataError naming the file and counts, never values: the file
    may be a node's private data. ``role`` words the file in the message ("data file").
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"npz file {path} cannot be read ({type(exc).__name__}); {_NPZ_HINT}"
        ) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{role} {path} is a single .npy array, not an npz archive; {_NPZ_HINT}")
    with archive:
        for name in ("x", "y"):
            if name not in archive.files:
                held = ", ".join(archive.files) or "no arrays"
                raise DataError(
                    f"npz file {path} has no array '{name}' (it holds {held}); {_NPZ_HINT}"
                )
        try:
            x = archive["x"]
            y = archive["y"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(
                f"npz file {path} is corrupt or holds non-numeric arrays "
                f"({type(exc).__name__}); {_NPZ_HINT}"
            ) from exc
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DataError(
            f"npz file {path}: x has dtype {x.dtype}, not real numbers; save x as float32"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(
            f"npz file {path}: y has dtype {y.dtype} and shape {y.shape}, not a 1-d array of "
            "integer class labels; save y as integers, one per example"
        )
    if x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise DataError(
            f"npz file {path}: x has shape {x.shape} but y has {y.shape[0]} labels; x needs one "
            "row of features per label, shape (n, ...)"
        )
    if y.shape[0] == 0:
        raise DataError(f"{role} {path} holds no examples; pass a file with examples")
    x = x.astype(np.float32, copy=False)
    non_finite = int(np.count_nonzero(~np.isfinite(x)))
    if non_finite:
        raise DataError(
            f"npz file {path}: x holds {non_finite} NaN or infinite value(s); fix or drop those "
            "examples"
        )
    return x, y


def fit_example_shape(
    path: Path,
    features: np.ndarray,
    expected: tuple[int, ...],
    dataset: str,
    role: str = "data file",
) -> np.ndarray:
    """Return features of shape (n, *expected); an image (h, w) gains its channel axis (1, h, w)."""
    shape = tuple(int(s) for s in features.shape[1:])
    if shape == expected:
        return features
    if len(expected) == 3 and expected[0] == 1 and shape == expected[1:]:
        return features.reshape(features.shape[0], *expected)
    raise DataError(
        f"{role} {path} has examples of shape {shape} but the run's data set '{dataset}' "
        f"needs {expected}; convert the file to that shape"
    )


def check_example_labels(
    path: Path, labels: np.ndarray, num_classes: int, dataset: str, role: str = "data file"
) -> None:
    """Labels must be classes of the run's model; say how many are not, never which values."""
    outside = int(np.count_nonzero((labels < 0) | (labels >= num_classes)))
    if outside:
        raise DataError(
            f"{role} {path} has {outside} label(s) outside 0..{num_classes - 1}, the classes "
            f"of the run's data set '{dataset}'; fix or drop those examples"
        )
