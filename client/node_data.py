"""The data a node trains and evaluates on.

A node finds its examples in one of two ways, chosen by its node config:

- **Its own local file** (a real federation): `data-file` names a CSV, NPZ or IDX file on the
  node, which is read there and never leaves it. The examples must fit the model the server
  builds from the run config's data set, so they are checked against it: image files against
  the shape and classes that data set loads as, tabular files against the agreed schema that
  node config `schema-file` names (the partner's own copy of the coordinator's schema, written
  by `privet schema`). A node never reads anyone else's data: not the run config's `data-file`
  or `data-dir`. It encodes its CSV with that schema, never with one fitted on its own rows, so
  the feature layout, categories, scaling and classes agree across all nodes and the server
  (the digest of the schema it used is on `NodeData.schema_digest`, for comparison). The check
  is strict: a missing or extra column, an unknown category or label, or a number outside a
  declared range is an error naming the file, the column and a count, and the node does not
  train. A file that holds fewer than two of the classes is accepted with a warning
  (`NodeData.classes_present`).
- **A shard of the run's data set** (a simulation): every virtual node derives its shard from
  the shared data set and its `partition-id`; the split is deterministic for a seed, so each
  node finds the same shard in any process.

Either way, a slice of the node's examples is held out for its local evaluation and never
trained on. Missing values in a CSV follow the schema's `missing` policy, as on the server
(`task.datasets.apply_missing_policy`: a NaN, infinite or text cell in a numeric column is a
missing value, never an error and never a new category); the node logs the counts. Errors are
one line naming the file and the fix, and never quote data values.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privet.client import node_data_cache
from privet.task.config import ConfigError, RunConfig
from privet.task.datasets import (
    ADULT_COLUMNS,
    IMAGE_SPECS,
    ArrayDataset,
    CsvTable,
    DataError,
    DatasetOptions,
    MissingValues,
    TabularSchema,
    TrainTest,
    apply_missing_policy,
    check_example_labels,
    check_table_against_schema,
    dataset_entry,
    encode_with_schema,
    fit_example_shape,
    load_schema_file,
    not_a_file_reason,
    read_csv_table,
    read_idx_images,
    read_idx_labels,
    read_npz_examples,
    schema_digest,
)
from privet.task.models import model_folder
from privet.task.partition import partition_indices
from privet.task.task import task_named
from privet.task.text import (
    folder_label_index,
    load_tokenizer,
    read_text_file,
    text_classes,
    text_dataset,
)

__all__ = [
    "DATA_FORMATS",
    "LOCAL_VALIDATION_FRACTION",
    "LocalDataSpec",
    "LocalExamples",
    "NodeData",
    "client_shards",
    "load_federated_data",
    "load_local_examples",
    "load_node_data",
    "local_data_spec",
    "node_client_id",
    "split_shard",
    "with_node_model_folder",
]

logger = logging.getLogger(__name__)

LOCAL_VALIDATION_FRACTION = 0.1

DATA_FORMATS: tuple[str, ...] = ("csv", "npz", "idx", "text")
"""Formats a node's `data-file` may have (node config `data-format`, else from its name).

``text`` is a text file (CSV/TSV with a header, or JSON Lines) in a run on text data; every
node file of a text run is one."""

_IDX_IMAGES_HINT = "data-file must name an IDX image file (idx3-ubyte, plain or .gz)"
_IDX_LABELS_HINT = "label-file must name an IDX label file (idx1-ubyte, plain or .gz)"


@dataclass(frozen=True)
class NodeData:
    """A node's training examples and its held-out local validation examples.

    For a node's own file: `schema_digest` is the SHA-256 of the tabular schema it encoded with
    (None for image data), so that a caller can compare it with the server's; `classes_present`
    counts the distinct classes among its examples (fewer than 2 was logged as a warning). Both
    are None for a shard of a simulation's data set.
    """

    client_id: int
    train: ArrayDataset
    validation: ArrayDataset
    schema_digest: str | None = None
    classes_present: int | None = None


@dataclass(frozen=True)
class LocalDataSpec:
    """Where a node's own examples are and how to read them, from its node config.

    `label_file` is the IDX label file (format `idx` only); `label_column` is the CSV column to
    predict when it is named differently on this node than in the schema (`csv`), or the label
    column of a text file (`text`, default: the run's); `text_column` is a text file's column of
    texts (default: the run's); `schema_file` is the node's copy of the agreed tabular schema
    (tabular runs only).
    """

    path: Path
    data_format: str
    label_file: Path | None = None
    label_column: str | None = None
    schema_file: Path | None = None
    text_column: str | None = None


@dataclass(frozen=True)
class LocalExamples:
    """A node's own examples, encoded for the run's model, and what encoding them noticed.

    `missing` counts the CSV's missing feature values and says what the schema's policy did
    with them; `classes_present` counts the distinct classes among the examples;
    `schema_digest` identifies the tabular schema used (None for image data). Only counts are
    kept, never values.
    """

    examples: ArrayDataset
    missing: MissingValues | None = None
    classes_present: int = 0
    schema_digest: str | None = None


# --------------------------------------------------------------------------------------------
# Simulation: a shard of the run's data set
# --------------------------------------------------------------------------------------------


def load_federated_data(config: RunConfig) -> TrainTest:
    """The run's data set, loaded once per process (many virtual nodes can share one process)."""
    return _load_cached(config.task, config.dataset, config.dataset_options())


@functools.lru_cache(maxsize=4)
def _load_cached(task: str, dataset: str, options: DatasetOptions) -> TrainTest:
    """The data set as the run's task loads it (`Task.load_data`)."""
    return task_named(task).load_data(dataset, options)


def client_shards(config: RunConfig) -> list[np.ndarray]:
    """Training-set indices of every client, in client order (read-only arrays).

    Computed once per process for a data set and split: a simulation asks for one node's shard
    on every message, and partitioning 60,000 labels across 1,000 clients each time would cost
    more than a small client's training.
    """
    return list(
        _shards_cached(
            config.task,
            config.dataset,
            config.dataset_options(),
            config.clients,
            config.partition,
            config.alpha,
        )
    )


@functools.lru_cache(maxsize=4)
def _shards_cached(
    task: str,
    dataset: str,
    options: DatasetOptions,
    clients: int,
    partition: str,
    alpha: float,
) -> tuple[np.ndarray, ...]:
    data = _load_cached(task, dataset, options)
    if len(data.train) == 0 and options.test_file and not options.data_file:
        # A deployment server needs only the test-file; simulated clients need rows to train on.
        raise DataError(
            f"test-file {options.test_file} is only the server's test set, and the simulated "
            "clients have no rows to train on; add --data-file (split among the clients)"
        )
    shards = partition_indices(
        data.train.labels, clients, partition, alpha=alpha, groups=data.groups, seed=options.seed
    )
    for shard in shards:
        shard.flags.writeable = False
    return tuple(shards)


def split_shard(shard: np.ndarray, client_id: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's shard into (train, validation) indices; validation may be empty."""
    rng = np.random.default_rng([seed, client_id, 7])
    shuffled = rng.permutation(shard)
    held_out = int(len(shard) * LOCAL_VALIDATION_FRACTION)
    return np.sort(shuffled[held_out:]), np.sort(shuffled[:held_out])


def load_node_data(config: RunConfig, node_config: Mapping[str, object]) -> NodeData:
    """The node's examples: its own `data-file` when the node config names one, else its shard.

    Without `data-file` the shard is found from Flower's `partition-id` / `num-partitions`
    node config (a simulation). With it, the file is read on this node and checked against
    the run's data set (a real federation); the node's client id is `client-id`, else
    `partition-id`. Either way the same fraction is held out for local validation.
    """
    if _text_value(node_config, "data-file") is None:
        return _partition_node_data(config, node_config)
    client_id = node_client_id(node_config)
    local = load_local_examples(config, node_config)
    examples = local.examples
    train_idx, validation_idx = split_shard(
        np.arange(len(examples), dtype=np.int64), client_id, config.seed
    )
    return NodeData(
        client_id=client_id,
        train=examples.subset(train_idx),
        validation=examples.subset(validation_idx),
        schema_digest=local.schema_digest,
        classes_present=local.classes_present,
    )


def _partition_node_data(config: RunConfig, node_config: Mapping[str, object]) -> NodeData:
    """The shard of this node, found from Flower's `partition-id` / `num-partitions` node config."""
    try:
        client_id = int(node_config["partition-id"])  # type: ignore[call-overload]
        num_partitions = int(node_config["num-partitions"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            "this node has no 'partition-id' and 'num-partitions' in its node config; "
            'start it with --node-config "partition-id=K num-partitions=N" (simulation) or '
            "--node-config \"client-id=K data-file='/path/to/local.csv'\" (its own data)"
        ) from None
    if num_partitions != config.clients:
        raise ConfigError(
            f"the federation has {num_partitions} nodes but the run config says clients="
            f"{config.clients}; make them equal"
        )
    if not 0 <= client_id < num_partitions:
        raise ConfigError(f"partition-id {client_id} is outside 0..{num_partitions - 1}")
    data = load_federated_data(config)
    shard = client_shards(config)[client_id]
    train_idx, validation_idx = split_shard(shard, client_id, config.seed)
    return NodeData(
        client_id=client_id,
        train=data.train.subset(train_idx),
        validation=data.train.subset(validation_idx),
    )


# --------------------------------------------------------------------------------------------
# A real federation: the node's own file, read from its node config
# --------------------------------------------------------------------------------------------


def _text_value(node_config: Mapping[str, object], key: str) -> str | None:
    """A node-config value as stripped text; absent or "" means unset (Flower cannot say None)."""
    value = node_config.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def node_client_id(node_config: Mapping[str, object]) -> int:
    """The node's client id: node config `client-id`, else `partition-id`; an integer >= 0.

    The id names the node's privacy ledger and its seeds, and the server samples clients by it,
    so each node of a federation needs its own.
    """
    for key in ("client-id", "partition-id"):
        raw = node_config.get(key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, float) and raw.is_integer():
            value = int(raw)
        elif isinstance(raw, str) and re.fullmatch(r"\d+", raw.strip()):
            value = int(raw.strip())
        if value is None or value < 0:
            raise ConfigError(
                f"node config {key} must be an integer >= 0, got {raw!r}; give each node its "
                "own, e.g. --node-config \"client-id=3 data-file='...'\""
            )
        return value
    raise ConfigError(
        "this node has a data-file but no client-id in its node config; add client-id=K "
        "(an integer >= 0, different on every node) to its --node-config"
    )


def _infer_format(path: Path) -> str | None:
    """The format implied by a file name: .csv, .npz, or an IDX name (.gz, .idx*, *ubyte*)."""
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".gz") or re.search(r"\.idx\d?$", name) or "ubyte" in name:
        return "idx"
    return None


def local_data_spec(config: RunConfig, node_config: Mapping[str, object]) -> LocalDataSpec:
    """Read and check the node-config keys that describe the node's own data file.

    Only the node config is checked here (a `ConfigError`); the files are checked when read.
    """
    data_file = _text_value(node_config, "data-file")
    if data_file is None:
        raise ConfigError("this node has no data-file in its node config; add data-file='/path'")
    path = Path(data_file).expanduser()
    if dataset_entry(config.dataset).kind == "text":
        return _text_spec(config, node_config, path)
    if _text_value(node_config, "text-column") is not None:
        raise ConfigError(
            f"node config text-column applies only to runs on text data, and '{config.dataset}' "
            "is not; drop text-column"
        )
    fmt = _text_value(node_config, "data-format")
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in DATA_FORMATS:
            raise ConfigError(
                f"node config data-format {fmt!r} is not one of {', '.join(DATA_FORMATS)}; "
                "fix data-format or leave it out to infer it from the data-file name"
            )
    else:
        fmt = _infer_format(path)
        if fmt is None:
            raise ConfigError(
                f"cannot tell the format of data file {path} from its name; add "
                "data-format='csv' (or 'npz' or 'idx') to the node config"
            )
    label_file = _text_value(node_config, "label-file")
    label_column = _text_value(node_config, "label-column")
    schema_file = _text_value(node_config, "schema-file")
    tabular = _is_tabular(config)
    if fmt == "idx" and label_file is None:
        raise ConfigError(
            f"data file {path} is IDX images, which need their labels: add "
            "label-file='/path/labels-idx1-ubyte.gz' to the node config"
        )
    if fmt != "idx" and label_file is not None:
        raise ConfigError(
            f"node config label-file applies only to data-format idx, but data file {path} is "
            f"{fmt}; drop label-file"
        )
    if fmt != "csv" and label_column is not None:
        raise ConfigError(
            f"node config label-column applies only to data-format csv, but data file {path} is "
            f"{fmt}; drop label-column"
        )
    if fmt == "csv" and not tabular:
        raise ConfigError(
            f"data file {path} is CSV but the run trains on the image data set "
            f"'{config.dataset}'; give this node an npz or idx file"
        )
    if fmt == "idx" and tabular:
        raise ConfigError(
            f"data file {path} is IDX images but the run trains on the tabular data set "
            f"'{config.dataset}'; give this node a csv or npz file"
        )
    if schema_file is not None and not tabular:
        raise ConfigError(
            f"node config schema-file applies only to tabular runs, and '{config.dataset}' is "
            "image data; drop schema-file"
        )
    if schema_file is None and tabular:
        what = "CSV" if fmt == "csv" else "for a tabular run"
        raise ConfigError(
            f"this node's data file is {what} but its node config has no schema-file; add "
            "schema-file='/path/schema.json' (the coordinator writes it with `privet schema`)"
        )
    return LocalDataSpec(
        path=path,
        data_format=fmt,
        label_file=None if label_file is None else Path(label_file).expanduser(),
        label_column=label_column,
        schema_file=None if schema_file is None else Path(schema_file).expanduser(),
    )


def _text_spec(config: RunConfig, node_config: Mapping[str, object], path: Path) -> LocalDataSpec:
    """A text run's node file: its text and label columns (default: the run's)."""
    fmt = _text_value(node_config, "data-format")
    if fmt is not None and fmt.lower() != "text":
        raise ConfigError(
            f"the run trains on text, so this node's data file {path} is read as text; drop "
            f"data-format={fmt!r} (or set it to 'text')"
        )
    for key in ("label-file", "schema-file"):
        if _text_value(node_config, key) is not None:
            raise ConfigError(f"node config {key} does not apply to text data; drop {key}")
    label_column = _text_value(node_config, "label-column") or config.label_column
    if label_column is None:
        raise ConfigError(
            "this node's text file needs its label column: add label-column='NAME' to the node "
            "config"
        )
    return LocalDataSpec(
        path=path,
        data_format="text",
        label_column=label_column,
        text_column=_text_value(node_config, "text-column") or config.text_column,
    )


def with_node_model_folder(config: RunConfig, node_config: Mapping[str, object]) -> RunConfig:
    """The run config with this node's own copy of the model folder (node config model-folder).

    A partner keeps the pretrained model wherever it likes; the run's ``--model hf:FOLDER``
    names the coordinator's path. Discovery then checks the two hold the same backbone.
    """
    folder = _text_value(node_config, "model-folder")
    if folder is None:
        return config
    if model_folder(config.model) is None:
        raise ConfigError(
            f"node config model-folder applies to runs on a pretrained model (--model "
            f"hf:FOLDER), and this run's model is {config.model}; drop model-folder"
        )
    return dataclasses.replace(config, model=f"hf:{folder}")


def _is_tabular(config: RunConfig) -> bool:
    """Whether the run's data set is a table (its registration says so)."""
    return dataset_entry(config.dataset).kind == "tabular"


def _file_key(path: Path, role: str) -> tuple[Path, int, int]:
    """(resolved path, mtime_ns, size) of an existing file: a cache key that notices changes."""
    problem = not_a_file_reason(path)
    if problem == "does not exist":
        raise DataError(
            f"{role} {path} does not exist on this node; fix {role} in this node's --node-config "
            "(an absolute path is safest)"
        )
    if problem is not None:
        raise DataError(f"{role} {path} {problem}; point {role} at a data file")
    stat = path.stat()
    return path.resolve(), stat.st_mtime_ns, stat.st_size


def load_local_examples(config: RunConfig, node_config: Mapping[str, object]) -> LocalExamples:
    """Read the node's own `data-file`, checked and encoded for the model of the run config.

    Cached per process (keyed by the files' modification times, the schema file's included),
    so that the several messages one process may serve read the file once. The cached arrays
    are read-only.
    """
    spec = local_data_spec(config, node_config)
    data_key = _file_key(spec.path, "data-file")
    label_key = None if spec.label_file is None else _file_key(spec.label_file, "label-file")
    schema_key = None if spec.schema_file is None else _file_key(spec.schema_file, "schema-file")
    # Under `privet node`, the node's earlier messages may have encoded these very files already.
    name = node_data_cache.entry_name((config, spec, data_key, label_key, schema_key))
    kept = node_data_cache.load(name)
    if kept is not None:
        restored = _restore_local(*kept)
        if restored is not None:
            return restored
    local = _load_local_cached(config, spec, data_key, label_key, schema_key)
    node_data_cache.store(name, *_keepable_local(local))
    return local


def _keepable_local(local: LocalExamples) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """A node's encoded examples as arrays and JSON counts (`client.node_data_cache`)."""
    arrays = {"features": local.examples.features, "labels": local.examples.labels}
    missing = local.missing
    meta: dict[str, object] = {
        "num_classes": local.examples.num_classes,
        "classes_present": local.classes_present,
        "schema_digest": local.schema_digest,
        "missing": None
        if missing is None
        else {
            "policy": missing.policy,
            "rows": missing.rows,
            "affected_rows": missing.affected_rows,
            "by_column": dict(missing.by_column),
            "not_numbers": dict(missing.not_numbers),
        },
    }
    return arrays, meta


def _restore_local(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> LocalExamples | None:
    """`_keepable_local` undone; None if the entry does not hold what it should."""
    try:
        missing_meta = meta["missing"]
        missing = None
        if missing_meta is not None:
            assert isinstance(missing_meta, dict)
            missing = MissingValues(
                str(missing_meta["policy"]),
                int(missing_meta["rows"]),
                int(missing_meta["affected_rows"]),
                {str(k): int(v) for k, v in missing_meta["by_column"].items()},
                {str(k): int(v) for k, v in missing_meta["not_numbers"].items()},
            )
        digest = meta["schema_digest"]
        examples = ArrayDataset(
            arrays["features"],
            arrays["labels"],
            int(meta["num_classes"]),  # type: ignore[call-overload]
        )
        local = LocalExamples(
            examples,
            missing,
            int(meta["classes_present"]),  # type: ignore[call-overload]
            None if digest is None else str(digest),
        )
    except (KeyError, TypeError, ValueError, AssertionError, DataError):
        return None
    local.examples.features.setflags(write=False)
    local.examples.labels.setflags(write=False)
    return local


@functools.lru_cache(maxsize=4)
def _load_local_cached(
    config: RunConfig,
    spec: LocalDataSpec,
    data_key: tuple[Path, int, int],
    label_key: tuple[Path, int, int] | None,
    schema_key: tuple[Path, int, int] | None,
) -> LocalExamples:
    """Dispatch on the format; the keys only make a replaced file miss the cache."""
    del data_key, label_key, schema_key
    schema = None if spec.schema_file is None else load_schema_file(spec.schema_file)
    if spec.data_format == "text":
        local = _load_local_text(config, spec)
    elif spec.data_format == "csv":
        assert schema is not None  # local_data_spec requires it for csv
        local = _load_local_csv(config, spec, schema)
    elif spec.data_format == "npz":
        local = _load_local_npz(config, spec, schema)
    else:
        local = _load_local_idx(config, spec)
    local.examples.features.setflags(write=False)
    local.examples.labels.setflags(write=False)
    logger.info(
        "node data file %s: %d examples, feature shape %s, %d classes (%d present)%s",
        spec.path,
        len(local.examples),
        local.examples.feature_shape,
        local.examples.num_classes,
        local.classes_present,
        "" if local.schema_digest is None else f", schema {local.schema_digest}",
    )
    if local.classes_present < 2:
        logger.warning(
            "data file %s: its examples hold only %d of the model's %d classes; this node "
            "trains anyway, but its updates can only pull the model towards what it holds",
            spec.path,
            local.classes_present,
            local.examples.num_classes,
        )
    return local


def _present(examples: ArrayDataset) -> int:
    """How many distinct classes the examples hold."""
    return int(np.unique(examples.labels).size)


def _expected_examples(
    config: RunConfig, schema: TabularSchema | None
) -> tuple[tuple[int, ...], int]:
    """(feature shape, number of classes) of the examples the run's model is built for.

    From the image data set's registration, or the node's schema: never from anyone's data,
    except an image data set registered without a fixed shape, whose shape only its files know.
    """
    if config.dataset in IMAGE_SPECS:
        return IMAGE_SPECS[config.dataset]
    if schema is not None:
        return (schema.width,), schema.num_classes
    reference = _reference(config)
    return reference.train.feature_shape, reference.num_classes


def _reference(config: RunConfig) -> TrainTest:
    """An image data set registered without a fixed shape: its files give the shape."""
    try:
        return load_federated_data(config)
    except (DataError, ConfigError) as exc:
        raise DataError(
            f"this node cannot load the run's data set '{config.dataset}' to learn its example "
            f"shape ({exc}); register the data set with its feature_shape and num_classes"
        ) from exc


def _require_examples(path: Path, count: int) -> None:
    """An empty file would train nothing and divide by zero in the sampling rate."""
    if count == 0:
        raise DataError(f"data file {path} holds no examples; give this node a file with data")


def _load_local_csv(config: RunConfig, spec: LocalDataSpec, schema: TabularSchema) -> LocalExamples:
    """Encode the node's CSV with its copy of the agreed schema, after the strict checks."""
    table = _read_adult_like(spec.path) if config.dataset == "adult" else read_csv_table(spec.path)
    table = _rename_label(table, schema, spec)
    check_table_against_schema(table, schema)
    table, missing = apply_missing_policy(table, schema, schema.missing)
    logger.info(
        "data file %s: %d row(s), %d with missing feature values, %d dropped, %d imputed "
        "(the schema's policy: %s)",
        spec.path,
        missing.rows,
        missing.affected_rows,
        missing.dropped_rows,
        missing.affected_rows - missing.dropped_rows,
        missing.policy,
    )
    if missing.affected_rows:
        logger.warning("%s", missing.describe(f"data file {spec.path}"))
    if not table.rows:
        raise DataError(
            f"{missing.describe(f'data file {spec.path}')}, which leaves no examples; fill in "
            "the missing values or ask the coordinator for a schema whose missing is 'impute'"
        )
    examples = encode_with_schema(table, schema)
    return LocalExamples(examples, missing, _present(examples), schema_digest(schema))


def _read_adult_like(path: Path) -> CsvTable:
    """Read a node's UCI Adult file like the server: header row optional, Adult's columns."""
    table = read_csv_table(path, column_names=ADULT_COLUMNS)
    if table.rows[0] == table.header:
        table = CsvTable(table.source, table.header, table.rows[1:], table.line_numbers[1:])
        _require_examples(path, len(table))
    return table


def _rename_label(table: CsvTable, schema: TabularSchema, spec: LocalDataSpec) -> CsvTable:
    """The table with the node's label column renamed to the schema's (node config label-column).

    A node may name its label column differently; the schema's name is then given to it so that
    the schema finds it. The columns themselves are checked by the strict check that follows.
    """
    label = spec.label_column or schema.label_column
    header = table.header
    if label not in header:
        raise DataError(
            f"data file {spec.path} has no label column '{label}'; name the label column with "
            "label-column='NAME' in the node config"
        )
    if label != schema.label_column and schema.label_column in header:
        raise ConfigError(
            f"data file {spec.path} has the schema's label column '{schema.label_column}' but "
            f"node config label-column names '{label}'; drop label-column from the node config"
        )
    if label == schema.label_column:
        return table
    renamed = tuple(schema.label_column if name == label else name for name in header)
    return CsvTable(table.source, renamed, table.rows, table.line_numbers)


def _load_local_text(config: RunConfig, spec: LocalDataSpec) -> LocalExamples:
    """Tokenize the node's text file with its model folder's tokenizer, labels by their names.

    The classes must be the ones the model folder names (``id2label``): a node sees only its own
    labels, so only the folder can number them as the server does.
    """
    folder_name = model_folder(config.model)
    assert folder_name is not None and spec.label_column and spec.text_column  # config checks
    folder = Path(folder_name).expanduser()
    table = read_text_file(spec.path, spec.text_column, spec.label_column)
    named = folder_label_index(folder)
    if named is None:
        raise DataError(
            f"model folder {folder} names no labels (config.json id2label), so this node cannot "
            "number its classes as the server does; save the model with id2label"
        )
    classes = text_classes(folder, table.labels)
    examples = text_dataset(table, load_tokenizer(folder), config.max_length, classes)
    return LocalExamples(examples, None, _present(examples))


def _load_local_npz(
    config: RunConfig, spec: LocalDataSpec, schema: TabularSchema | None
) -> LocalExamples:
    """Read arrays `x` (features) and `y` (integer labels) and check them against the run."""
    path = spec.path
    x, y = read_npz_examples(path)
    expected, num_classes = _expected_examples(config, schema)
    x = fit_example_shape(path, x, expected, config.dataset)
    if config.dataset in IMAGE_SPECS:
        outside = int(np.count_nonzero((x < 0.0) | (x > 1.0)))
        if outside:
            raise DataError(
                f"npz file {path}: {outside} pixel value(s) lie outside [0, 1], the range the "
                f"run's data set '{config.dataset}' is scaled to; scale x (e.g. uint8 / 255)"
            )
    check_example_labels(path, y, num_classes, config.dataset)
    examples = ArrayDataset(x, y.astype(np.int64), num_classes)
    digest = None if schema is None else schema_digest(schema)
    return LocalExamples(examples, None, _present(examples), digest)


def _load_local_idx(config: RunConfig, spec: LocalDataSpec) -> LocalExamples:
    """Read an IDX image file and its IDX label file, scaled as the MNIST loader scales them."""
    assert spec.label_file is not None  # local_data_spec requires it for idx
    images = read_idx_images(spec.path, title="IDX image", fix=_IDX_IMAGES_HINT)
    labels = read_idx_labels(spec.label_file, title="IDX label", fix=_IDX_LABELS_HINT)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"IDX files disagree: {spec.path} has {images.shape[0]} images but "
            f"{spec.label_file} has {labels.shape[0]} labels; pair each image file with its "
            "own label file"
        )
    _require_examples(spec.path, int(labels.shape[0]))
    expected, num_classes = _expected_examples(config, None)
    images = fit_example_shape(spec.path, images, expected, config.dataset)
    check_example_labels(spec.label_file, labels, num_classes, config.dataset)
    examples = ArrayDataset(images, labels, num_classes)
    return LocalExamples(examples, None, _present(examples))
