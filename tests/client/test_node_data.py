"""Node data: a shard of the run's data set (simulation) or the node's own file (deployment)."""

import csv
import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from privet.client.app import make_client_app
from privet.client.node_data import (
    LOCAL_VALIDATION_FRACTION,
    client_shards,
    load_federated_data,
    load_local_examples,
    load_node_data,
    split_shard,
)
from privet.server.evaluation import ServerEvaluator
from privet.task.config import ConfigError, RunConfig
from privet.task.datasets import (
    ADULT_COLUMNS,
    IMAGE_SPECS,
    DataError,
    FeatureColumn,
    TabularSchema,
    load_dataset,
    save_schema_file,
    schema_digest,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SECRET = "SECRET-4417"  # a data value that must never appear in an error message or log

REF_HEADER = ["age", "color", "score", "label"]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def reference_rows() -> list[list[str]]:
    """40 rows, two classes, three colours: enough for the server's stratified 80/20 split."""
    colors = ["red", "green", "blue"]
    return [
        [str(20 + i), colors[i % 3], f"{i * 0.5:.1f}", "yes" if i % 2 else "no"] for i in range(40)
    ]


def csv_config(tmp_path: Path, **extra) -> RunConfig:
    """A csv run whose server splits reference.csv, and the schema its nodes are given.

    The schema (tmp_path/schema.json) is the one the server fits on the reference file, with
    the run's missing-value policy: what a coordinator would hand to every partner.
    """
    ref = write_csv(tmp_path / "reference.csv", REF_HEADER, reference_rows())
    config = RunConfig(
        dataset="csv", data_file=str(ref), label_column="label", output=str(tmp_path), **extra
    )
    fitted = load_dataset("csv", data_file=str(ref), label_column="label", missing=config.missing)
    assert fitted.schema is not None
    save_schema_file(fitted.schema, tmp_path / "schema.json")
    return config


def node(path: Path, client_id: int = 0, **extra) -> dict:
    return {"data-file": str(path), "client-id": client_id, **extra}


def csv_node(path: Path, client_id: int = 0, **extra) -> dict:
    """A tabular node: its file and its copy of the schema (schema.json next to its file)."""
    return node(path, client_id, **{"schema-file": str(path.parent / "schema.json"), **extra})


def one_line_naming(exc: BaseException, path: Path) -> str:
    text = str(exc)
    assert "\n" not in text
    assert str(path) in text
    assert SECRET not in text
    return text


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes, gz: bool = True):
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(raw)
    else:
        path.write_bytes(raw)
    return path


def write_idx_pair(folder: Path, n: int, side: int = 28, gz: bool = True, labels=None):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
    y = np.arange(n, dtype=np.uint8) % 10 if labels is None else np.asarray(labels, np.uint8)
    suffix = ".gz" if gz else ""
    images = write_idx(
        folder / f"img-idx3-ubyte{suffix}", 2051, (n, side, side), pixels.tobytes(), gz
    )
    label_file = write_idx(folder / f"lab-idx1-ubyte{suffix}", 2049, (n,), y.tobytes(), gz)
    return images, label_file, pixels, y


# ------------------------------------------------------------------- simulation: unchanged


def test_partition_without_data_file_is_unchanged(tmp_path):
    config = RunConfig(output=str(tmp_path))
    for node_config in (
        {"partition-id": 2, "num-partitions": 5},
        {"partition-id": 2, "num-partitions": 5, "data-file": ""},  # "" means unset
    ):
        data = load_node_data(config, node_config)
        shard = client_shards(config)[2]
        train_idx, validation_idx = split_shard(shard, 2, config.seed)
        full = load_federated_data(config).train
        assert data.client_id == 2
        np.testing.assert_array_equal(data.train.features, full.features[train_idx])
        np.testing.assert_array_equal(data.validation.labels, full.labels[validation_idx])


def test_partition_errors_are_unchanged(tmp_path):
    config = RunConfig(output=str(tmp_path))
    with pytest.raises(ConfigError, match="no 'partition-id' and 'num-partitions'"):
        load_node_data(config, {})
    with pytest.raises(ConfigError, match="5 nodes but the run config says clients=4"):
        load_node_data(
            RunConfig(output=str(tmp_path), clients=4), {"partition-id": 0, "num-partitions": 5}
        )
    with pytest.raises(ConfigError, match="partition-id 5 is outside 0..4"):
        load_node_data(config, {"partition-id": 5, "num-partitions": 5})


def test_image_specs_match_what_the_loaders_yield():
    digits = load_dataset("digits")
    assert IMAGE_SPECS["digits"] == (digits.train.feature_shape, digits.num_classes)
    mnist = load_dataset("mnist", data_dir=str(SHARED / "mnist"))
    assert IMAGE_SPECS["mnist"] == (mnist.train.feature_shape, mnist.num_classes)
    assert IMAGE_SPECS["fashion-mnist"] == IMAGE_SPECS["mnist"]


# ------------------------------------------------------------------- CSV nodes


def test_two_csv_nodes_share_the_schema(tmp_path, caplog):
    config = csv_config(tmp_path, missing="impute")  # node B's missing age is imputed, kept
    server = load_dataset(
        "csv", data_file=config.data_file, label_column="label", seed=0, missing="impute"
    )
    schema = server.schema
    assert schema is not None
    age, score = schema.columns[0], schema.columns[2]
    # Node A: large ages and scores (its own statistics differ wildly from the reference's).
    rows_a = [[str(100 + i), "red", f"{50 + i}", "yes" if i % 2 else "no"] for i in range(30)]
    # Node B: columns in another order, a missing age.
    header_b = ["label", "score", "color", "age"]
    rows_b = [["no", "1.5", "green", "21"], ["yes", "3.0", "red", ""], ["no", "2", "red", "22"]]
    rows_b += [["yes", "1.0", "blue", "30"]] * 7
    file_a = write_csv(tmp_path / "a.csv", REF_HEADER, rows_a)
    file_b = write_csv(tmp_path / "b.csv", header_b, rows_b)
    with caplog.at_level(logging.INFO, logger="privet.client.node_data"):
        a = load_node_data(config, csv_node(file_a, 0))
        b = load_node_data(config, csv_node(file_b, 1))
    for data, n in ((a, 30), (b, 10)):
        assert data.train.feature_shape == server.train.feature_shape == (schema.width,)
        assert data.train.num_classes == server.num_classes == 2
        assert len(data.validation) == int(n * LOCAL_VALIDATION_FRACTION)
        assert len(data.train) + len(data.validation) == n
        assert data.schema_digest == schema_digest(schema)
        assert data.classes_present == 2
    # standardised with the schema's statistics, not the node's own
    everything_a = np.concatenate([a.train.features, a.validation.features])
    ages = np.sort(everything_a[:, 0])
    np.testing.assert_allclose(ages, (np.arange(100, 130) - age.mean) / age.std, rtol=1e-5)
    assert abs(float(ages.mean())) > 1.0  # a locally fitted standardisation would centre it
    local = load_local_examples(config, csv_node(file_b, 1))
    np.testing.assert_allclose(
        local.examples.features[0],
        [(21 - age.mean) / age.std, 0, 1, 0, (1.5 - score.mean) / score.std],
        rtol=1e-5,
    )
    np.testing.assert_allclose(local.examples.features[1, 0], 0.0)  # missing age: the mean
    np.testing.assert_array_equal(local.examples.labels[:3], [0, 1, 0])  # classes (no, yes)
    assert local.missing is not None and local.missing.by_column == {"age": 1}
    logged = [r.getMessage() for r in caplog.records]
    assert any(
        "10 row(s), 1 with missing feature values, 0 dropped, 1 imputed" in m for m in logged
    )


def test_same_rows_encode_identically_on_every_node_and_the_server(tmp_path):
    config = csv_config(tmp_path)
    rows = reference_rows()
    one = load_local_examples(config, csv_node(write_csv(tmp_path / "1.csv", REF_HEADER, rows), 1))
    two = load_local_examples(config, csv_node(write_csv(tmp_path / "2.csv", REF_HEADER, rows), 2))
    np.testing.assert_array_equal(one.examples.features, two.examples.features)
    server = load_dataset("csv", data_file=config.data_file, label_column="label", seed=0)
    server_rows = np.concatenate([server.train.features, server.test.features])
    assert sorted(map(tuple, one.examples.features.tolist())) == sorted(
        map(tuple, server_rows.tolist())
    )


def test_validation_split_is_deterministic_per_client(tmp_path):
    config = csv_config(tmp_path)
    path = write_csv(tmp_path / "a.csv", REF_HEADER, reference_rows())
    first = load_node_data(config, csv_node(path, 3))
    again = load_node_data(config, csv_node(path, 3))
    other = load_node_data(config, csv_node(path, 4))
    np.testing.assert_array_equal(first.validation.features, again.validation.features)
    assert len(first.validation) == 4
    assert not np.array_equal(first.validation.features, other.validation.features)


def test_node_may_name_its_label_column(tmp_path):
    config = csv_config(tmp_path)
    rows = reference_rows()[:10]
    path = write_csv(tmp_path / "t.csv", ["age", "color", "score", "target"], rows)
    data = load_node_data(config, csv_node(path, 0, **{"label-column": "target"}))
    assert data.train.feature_shape == (5,)
    both = write_csv(tmp_path / "both.csv", [*REF_HEADER, "target"], [r + ["x"] for r in rows])
    with pytest.raises(ConfigError, match="drop label-column") as info:
        load_node_data(config, csv_node(both, 0, **{"label-column": "target"}))
    one_line_naming(info.value, both)


def test_csv_partition_column_is_optional_on_a_node(tmp_path):
    ref_rows = [r + [str(i % 2)] for i, r in enumerate(reference_rows())]
    ref = write_csv(tmp_path / "ref.csv", [*REF_HEADER, "site"], ref_rows)
    config = RunConfig(
        dataset="csv",
        data_file=str(ref),
        label_column="label",
        partition_column="site",
        output=str(tmp_path),
    )
    fitted = load_dataset("csv", data_file=str(ref), label_column="label", partition_column="site")
    assert fitted.schema is not None and fitted.schema.partition_column == "site"
    save_schema_file(fitted.schema, tmp_path / "schema.json")
    without = write_csv(tmp_path / "n.csv", REF_HEADER, reference_rows()[:10])
    assert load_node_data(config, csv_node(without, 0)).train.feature_shape == (5,)
    with_it = write_csv(tmp_path / "w.csv", [*REF_HEADER, "site"], ref_rows[:10])
    assert load_node_data(config, csv_node(with_it, 0)).train.feature_shape == (5,)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (["age", "color", "label"], "lacks column 'score' of the schema .1 schema column"),
        (["age", "color", "score", "height", "label"], "has column 'height' that the schema"),
        (["age", "color", "score", "y"], "has no label column 'label'"),
    ],
)
def test_csv_columns_must_be_the_schemas(tmp_path, header, match):
    config = csv_config(tmp_path)
    rows = [["1"] * len(header), ["2"] * len(header)]
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError, match=match) as info:
        load_node_data(config, csv_node(path))
    one_line_naming(info.value, path)


def test_unknown_label_is_an_error_with_a_count_not_the_value(tmp_path):
    config = csv_config(tmp_path)
    rows = [["1", "red", "1", "yes"], ["2", "red", "2", "maybe"], ["3", "red", "3", "maybe"]]
    path = write_csv(tmp_path / "l.csv", REF_HEADER, rows)
    with pytest.raises(DataError) as info:
        load_node_data(config, csv_node(path))
    text = one_line_naming(info.value, path)
    assert "label column 'label' holds 2 label(s) that are not among the schema's classes" in text
    assert "(no, yes)" in text and "first on line 3" in text
    assert "maybe" not in text  # a node's values never travel to the server in an error


def test_unknown_category_is_refused_not_encoded_as_zeros(tmp_path, caplog):
    config = csv_config(tmp_path)
    rows = [["1", SECRET, "1", "yes"], ["2", "red", "2", "no"], ["3", SECRET, "3", "no"]]
    path = write_csv(tmp_path / "c.csv", REF_HEADER, rows)
    with (
        caplog.at_level(logging.DEBUG, logger="privet.client.node_data"),
        pytest.raises(DataError) as info,
    ):
        load_node_data(config, csv_node(path))
    text = one_line_naming(info.value, path)
    assert "column 'color' holds 2 value(s) that are not among the schema's 3 categories" in text
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_a_number_outside_a_declared_range_is_refused(tmp_path):
    config = csv_config(tmp_path)
    schema = TabularSchema(
        label_column="label",
        classes=("no", "yes"),
        columns=(
            FeatureColumn("age", "numeric", range=(0.0, 120.0)),
            FeatureColumn("color", "categorical", categories=("blue", "green", "red")),
            FeatureColumn("score", "numeric", mean=10.0, std=5.0),
        ),
    )
    save_schema_file(schema, tmp_path / "schema.json")
    good = write_csv(tmp_path / "g.csv", REF_HEADER, reference_rows()[:10])
    local = load_local_examples(config, csv_node(good))
    np.testing.assert_allclose(local.examples.features[:, 0], (np.arange(20, 30) - 60) / 60)
    rows = reference_rows()[:10]
    rows[3][0], rows[7][0] = "4417", "-3"
    bad = write_csv(tmp_path / "b.csv", REF_HEADER, rows)
    with pytest.raises(DataError) as info:
        load_node_data(config, csv_node(bad))
    text = one_line_naming(info.value, bad)
    assert "column 'age' holds 2 number(s) outside its declared range [0, 120]" in text
    assert "4417" not in text


def test_a_node_with_one_class_trains_with_a_warning(tmp_path, caplog):
    config = csv_config(tmp_path)
    rows = [r for r in reference_rows() if r[3] == "yes"]
    path = write_csv(tmp_path / "one.csv", REF_HEADER, rows)
    with caplog.at_level(logging.WARNING, logger="privet.client.node_data"):
        data = load_node_data(config, csv_node(path))
    assert data.classes_present == 1
    assert data.train.num_classes == 2  # the model still has the schema's classes
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("hold only 1 of the model's 2 classes" in w for w in warnings)


@pytest.mark.parametrize("cell", ["nan", "-inf", SECRET])
def test_bad_numbers_are_missing_values_counted_not_quoted(tmp_path, caplog, cell):
    """Issue 12 item 7: on a node too, NaN, inf or text in a numeric column is a missing value."""
    rows = [["1", "red", "1", "yes"], [cell, "red", "2", "no"], [cell, "red", "3", "no"]]
    rows += [[str(i), "blue", "4", "yes"] for i in range(7)]
    path = write_csv(tmp_path / "n.csv", REF_HEADER, rows)
    config = csv_config(tmp_path)
    with caplog.at_level(logging.WARNING, logger="privet.client.node_data"):
        dropped = load_local_examples(config, csv_node(path))
    assert len(dropped.examples) == 8 and dropped.examples.feature_shape == (5,)
    assert dropped.missing is not None
    assert dropped.missing.by_column == {"age": 2} and dropped.missing.not_numbers == {"age": 2}
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "2 of 10 row(s) have missing feature values" in logged
    assert "dropped 2 example(s)" in logged and SECRET not in logged
    config = csv_config(tmp_path, missing="impute")  # the schema's policy is now impute
    kept = load_local_examples(config, csv_node(path))
    assert len(kept.examples) == 10 and kept.missing is not None
    np.testing.assert_array_equal(kept.examples.features[1:3, 0], [0.0, 0.0])  # the mean
    everyone = write_csv(tmp_path / "all.csv", REF_HEADER, [r[:] for r in rows[1:3]])
    dropping = csv_config(tmp_path)  # the schema's policy is drop again
    with pytest.raises(DataError, match="leaves no examples") as info:
        load_local_examples(dropping, csv_node(everyone))
    assert "missing is 'impute'" in one_line_naming(info.value, everyone)


def test_empty_and_missing_csv_files(tmp_path):
    config = csv_config(tmp_path)
    header_only = write_csv(tmp_path / "h.csv", REF_HEADER, [])
    with pytest.raises(DataError, match="has no data rows") as info:
        load_node_data(config, csv_node(header_only))
    one_line_naming(info.value, header_only)
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty") as info:
        load_node_data(config, csv_node(empty))
    one_line_naming(info.value, empty)
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(DataError, match="does not exist on this node") as info:
        load_node_data(config, csv_node(missing))
    one_line_naming(info.value, missing)
    not_text = tmp_path / "bin.csv"
    not_text.write_bytes(b"\xff\xfe\x00\x81 binary")
    with pytest.raises(DataError, match="not UTF-8") as info:
        load_node_data(config, csv_node(not_text))
    one_line_naming(info.value, not_text)


def test_a_csv_node_without_schema_file_is_told_how_to_get_one(tmp_path):
    config = csv_config(tmp_path)
    path = write_csv(tmp_path / "a.csv", REF_HEADER, reference_rows()[:5])
    with pytest.raises(ConfigError) as info:
        load_node_data(config, node(path))
    assert str(info.value) == (
        "this node's data file is CSV but its node config has no schema-file; add "
        "schema-file='/path/schema.json' (the coordinator writes it with `privet schema`)"
    )
    with pytest.raises(DataError, match="schema-file .*nope.json does not exist on this node"):
        load_node_data(config, node(path, **{"schema-file": str(tmp_path / "nope.json")}))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json is not valid JSON"):
        load_node_data(config, node(path, **{"schema-file": str(tmp_path / "bad.json")}))


def test_a_csv_node_never_reads_the_runs_reference_file(tmp_path):
    csv_config(tmp_path)  # writes schema.json
    path = write_csv(tmp_path / "a.csv", REF_HEADER, reference_rows()[:20])
    gone = RunConfig(
        dataset="csv",
        data_file=str(tmp_path / "gone" / "reference.csv"),
        label_column="label",
        output=str(tmp_path),
    )
    data = load_node_data(gone, csv_node(path))
    assert data.train.feature_shape == (5,) and len(data.train) + len(data.validation) == 20


def test_a_replaced_schema_file_is_read_again(tmp_path):
    config = csv_config(tmp_path)
    path = write_csv(tmp_path / "a.csv", REF_HEADER, reference_rows()[:20])
    before = load_node_data(config, csv_node(path))
    schema = TabularSchema(
        label_column="label",
        classes=("no", "yes"),
        columns=(
            FeatureColumn("age", "numeric", range=(0.0, 100.0)),
            FeatureColumn("color", "categorical", categories=("blue", "green", "red")),
            FeatureColumn("score", "numeric", range=(0.0, 50.0)),
        ),
    )
    save_schema_file(schema, tmp_path / "schema.json")
    after = load_node_data(config, csv_node(path))
    assert after.schema_digest == schema_digest(schema) != before.schema_digest


def test_adult_nodes_use_the_schema(tmp_path):
    adult = SHARED / "uci-adult" / "adult.data"
    config = RunConfig(dataset="adult", data_dir=str(adult.parent), output=str(tmp_path))
    server = load_federated_data(config)
    assert server.schema is not None
    save_schema_file(server.schema, tmp_path / "schema.json")
    lines = [line for line in adult.read_text().splitlines() if line.strip()][:200]
    headerless = tmp_path / "site-a.csv"
    headerless.write_text("\n".join(lines) + "\n")
    with_header = tmp_path / "site-b.csv"
    with_header.write_text(",".join(ADULT_COLUMNS) + "\n" + "\n".join(lines[:100]) + "\n")
    elsewhere = RunConfig(dataset="adult", data_dir=str(tmp_path / "none"), output=str(tmp_path))
    a = load_node_data(elsewhere, csv_node(headerless, 0))
    b = load_node_data(elsewhere, csv_node(with_header, 1))
    # rows with "?" in a feature column are left out (the schema's policy: drop), as on the server
    complete = ["?" not in line.rsplit(",", 1)[0] for line in lines]
    assert sum(complete) < 200
    assert len(a.train) + len(a.validation) == sum(complete)
    assert len(b.train) + len(b.validation) == sum(complete[:100])
    assert a.train.feature_shape == b.train.feature_shape == server.train.feature_shape
    assert a.train.num_classes == server.num_classes == 2


# ------------------------------------------------------------------- NPZ nodes


def digits_config(tmp_path: Path, **extra) -> RunConfig:
    return RunConfig(output=str(tmp_path), **extra)


def test_npz_node_matches_the_image_data_set(tmp_path):
    digits = load_dataset("digits").train
    x, y = digits.features[:50, 0], digits.labels[:50]  # (n, 8, 8): channel axis added
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    data = load_node_data(digits_config(tmp_path), node(path, 7))
    assert data.client_id == 7
    assert data.train.feature_shape == (1, 8, 8) and data.train.num_classes == 10
    assert len(data.validation) == 5 and len(data.train) == 45
    got = np.concatenate([data.train.labels, data.validation.labels])
    assert sorted(got.tolist()) == sorted(y.tolist())


def test_npz_for_mnist_needs_no_reference_files(tmp_path):
    config = RunConfig(dataset="mnist", data_dir=str(tmp_path / "not-here"), output=str(tmp_path))
    path = tmp_path / "m.npz"
    np.savez(path, x=np.zeros((20, 1, 28, 28), np.float32), y=np.arange(20) % 10)
    assert load_node_data(config, node(path)).train.feature_shape == (1, 28, 28)


def test_npz_for_a_tabular_run_must_have_the_schema_width(tmp_path):
    config = csv_config(tmp_path)
    good = tmp_path / "g.npz"
    np.savez(good, x=np.zeros((10, 5)), y=np.arange(10) % 2)
    data = load_node_data(config, csv_node(good))
    assert data.train.feature_shape == (5,) and data.schema_digest is not None
    bad = tmp_path / "b.npz"
    np.savez(bad, x=np.zeros((10, 4)), y=np.arange(10) % 2)
    with pytest.raises(DataError, match=r"shape \(4,\) but the run's data set 'csv' needs \(5,\)"):
        load_node_data(config, csv_node(bad))
    with pytest.raises(ConfigError, match="is for a tabular run but its node config has no schema"):
        load_node_data(config, node(good))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((10, 1, 9, 9)), "y": np.zeros(10, int)}, r"shape \(1, 9, 9\) but"),
        ({"x": np.zeros((10, 8, 8)), "y": np.full(10, 12)}, r"10 label\(s\) outside 0..9"),
        ({"x": np.zeros((10, 8, 8)), "y": np.full(10, -1)}, r"10 label\(s\) outside 0..9"),
        ({"x": np.full((10, 8, 8), np.nan), "y": np.zeros(10, int)}, "640 NaN or infinite"),
        ({"x": np.full((2, 8, 8), np.inf), "y": np.zeros(2, int)}, "128 NaN or infinite"),
        ({"x": np.zeros((0, 8, 8)), "y": np.zeros(0, int)}, "holds no examples"),
        ({"x": np.zeros((10, 8, 8))}, "has no array 'y' .it holds x."),
        ({"x": np.zeros((10, 8, 8)), "y": np.zeros(10)}, "not a 1-d array of integer"),
        ({"x": np.zeros((10, 8, 8)), "y": np.zeros((10, 1), int)}, "not a 1-d array of integer"),
        ({"x": np.zeros((9, 8, 8)), "y": np.zeros(10, int)}, "y has 10 labels"),
        ({"x": np.array(["a"] * 10), "y": np.zeros(10, int)}, "not real numbers"),
        ({"x": np.full((10, 8, 8), 255.0), "y": np.zeros(10, int)}, r"outside \[0, 1\]"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_node_data(digits_config(tmp_path), node(path))
    one_line_naming(info.value, path)


def test_unreadable_npz_files(tmp_path):
    config = digits_config(tmp_path)
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(SECRET.encode() * 10)
    with pytest.raises(DataError, match="cannot be read") as info:
        load_node_data(config, node(garbage))
    one_line_naming(info.value, garbage)
    truncated = tmp_path / "t.npz"
    np.savez(truncated, x=np.zeros((10, 8, 8)), y=np.zeros(10, int))
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(DataError) as info:
        load_node_data(config, node(truncated))
    one_line_naming(info.value, truncated)
    npy = tmp_path / "single.npz"
    with npy.open("wb") as handle:
        np.save(handle, np.zeros((3, 8, 8)))
    with pytest.raises(DataError, match="single .npy array") as info:
        load_node_data(config, node(npy))
    one_line_naming(info.value, npy)
    pickled = tmp_path / "p.npz"
    np.savez(pickled, x=np.array([{"a": 1}] * 3, dtype=object), y=np.zeros(3, int))
    with pytest.raises(DataError, match="non-numeric arrays") as info:
        load_node_data(config, node(pickled))
    one_line_naming(info.value, pickled)


# ------------------------------------------------------------------- IDX nodes


def mnist_config(tmp_path: Path) -> RunConfig:
    return RunConfig(dataset="mnist", data_dir=str(SHARED / "mnist"), output=str(tmp_path))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_node_reads_like_the_mnist_loader(tmp_path, gz):
    images, labels, pixels, y = write_idx_pair(tmp_path, 20, gz=gz)
    local = load_local_examples(
        mnist_config(tmp_path), node(images, **{"label-file": str(labels)})
    ).examples
    np.testing.assert_allclose(local.features, pixels.reshape(20, 1, 28, 28) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(local.labels, y)
    data = load_node_data(mnist_config(tmp_path), node(images, 1, **{"label-file": str(labels)}))
    assert len(data.train) == 18 and len(data.validation) == 2


def test_idx_node_on_the_canonical_mnist_test_files(tmp_path):
    folder = SHARED / "mnist"
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    local = load_local_examples(
        mnist_config(tmp_path), node(images, **{"label-file": str(labels)})
    ).examples
    server = load_dataset("mnist", data_dir=str(folder)).test
    np.testing.assert_array_equal(local.features, server.features)
    np.testing.assert_array_equal(local.labels, server.labels)


def test_idx_errors(tmp_path):
    config = mnist_config(tmp_path)
    images, labels, _, _ = write_idx_pair(tmp_path, 6)
    few = write_idx(tmp_path / "few-idx1-ubyte.gz", 2049, (5,), bytes(5))
    with pytest.raises(DataError, match="6 images but .* has 5 labels") as info:
        load_node_data(config, node(images, **{"label-file": str(few)}))
    one_line_naming(info.value, images)
    high = write_idx(tmp_path / "high-idx1-ubyte.gz", 2049, (6,), bytes([12] * 6))
    with pytest.raises(DataError, match=r"6 label\(s\) outside 0..9") as info:
        load_node_data(config, node(images, **{"label-file": str(high)}))
    one_line_naming(info.value, high)
    (tmp_path / "small").mkdir()
    small, small_labels, _, _ = write_idx_pair(tmp_path / "small", 6, side=8, gz=False)
    with pytest.raises(DataError, match=r"shape \(1, 8, 8\) but the run's data set 'mnist'"):
        load_node_data(config, node(small, **{"label-file": str(small_labels)}))
    corrupt = tmp_path / "c-idx3-ubyte.gz"
    corrupt.write_bytes(images.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        load_node_data(config, node(corrupt, **{"label-file": str(labels)}))
    one_line_naming(info.value, corrupt)
    swapped = node(labels, **{"label-file": str(images), "data-format": "idx"})
    with pytest.raises(DataError, match="bad magic number") as info:
        load_node_data(config, swapped)
    one_line_naming(info.value, labels)
    empty_images = write_idx(tmp_path / "e-idx3-ubyte.gz", 2051, (0, 28, 28), b"")
    empty_labels = write_idx(tmp_path / "e-idx1-ubyte.gz", 2049, (0,), b"")
    with pytest.raises(DataError, match="holds no examples") as info:
        load_node_data(config, node(empty_images, **{"label-file": str(empty_labels)}))
    one_line_naming(info.value, empty_images)
    missing = tmp_path / "absent-idx1-ubyte.gz"
    with pytest.raises(DataError, match="label-file .* does not exist on this node") as info:
        load_node_data(config, node(images, **{"label-file": str(missing)}))
    one_line_naming(info.value, missing)


# ------------------------------------------------------------------- node config


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"client-id": None}, "no client-id in its node config"),
        ({"client-id": -1}, "client-id must be an integer >= 0, got -1"),
        ({"client-id": "two"}, "client-id must be an integer >= 0, got 'two'"),
        ({"client-id": True}, "client-id must be an integer >= 0"),
        ({"client-id": 1.5}, "client-id must be an integer >= 0"),
        ({"data-format": "parquet"}, "data-format 'parquet' is not one of csv, npz, idx"),
        ({"label-file": "/x"}, "label-file applies only to data-format idx"),
    ],
)
def test_node_config_errors(tmp_path, extra, match):
    config = csv_config(tmp_path)
    path = write_csv(tmp_path / "a.csv", REF_HEADER, reference_rows()[:5])
    node_config = {k: v for k, v in {**csv_node(path), **extra}.items() if v is not None}
    with pytest.raises(ConfigError, match=match) as info:
        load_node_data(config, node_config)
    assert "\n" not in str(info.value)


def test_client_id_falls_back_to_partition_id(tmp_path):
    config = csv_config(tmp_path)
    path = write_csv(tmp_path / "a.csv", REF_HEADER, reference_rows()[:10])
    schema = {"schema-file": str(tmp_path / "schema.json")}
    assert (
        load_node_data(config, {"data-file": str(path), "partition-id": 4, **schema}).client_id == 4
    )
    assert (
        load_node_data(config, {"data-file": str(path), "client-id": "9", **schema}).client_id == 9
    )
    both = {"data-file": str(path), "client-id": 2, "partition-id": 4, "num-partitions": 99}
    assert load_node_data(config, {**both, **schema}).client_id == 2


def test_format_is_inferred_or_named(tmp_path):
    digits = digits_config(tmp_path)
    odd = tmp_path / "data.bin"
    np.savez(tmp_path / "tmp.npz", x=np.zeros((10, 8, 8)), y=np.zeros(10, int))
    odd.write_bytes((tmp_path / "tmp.npz").read_bytes())
    with pytest.raises(ConfigError, match="cannot tell the format of data file") as info:
        load_node_data(digits, node(odd))
    one_line_naming(info.value, odd)
    assert len(load_local_examples(digits, node(odd, **{"data-format": "NPZ"})).examples) == 10
    csv_file = write_csv(tmp_path / "a.csv", REF_HEADER, reference_rows()[:5])
    with pytest.raises(ConfigError, match="is CSV but the run trains on the image data set"):
        load_node_data(digits, node(csv_file))
    images, labels, _, _ = write_idx_pair(tmp_path, 4)
    with pytest.raises(ConfigError, match="is IDX images but the run trains on the tabular"):
        load_node_data(csv_config(tmp_path), node(images, **{"label-file": str(labels)}))
    with pytest.raises(ConfigError, match="need their labels: add label-file"):
        load_node_data(mnist_config(tmp_path), node(images))
    with pytest.raises(ConfigError, match="label-column applies only to data-format csv"):
        load_node_data(digits, node(odd, **{"data-format": "npz", "label-column": "y"}))
    with pytest.raises(ConfigError, match="schema-file applies only to tabular runs"):
        load_node_data(digits, node(odd, **{"data-format": "npz", "schema-file": "/s.json"}))


# ------------------------------------------------------------------- through the ClientApp


@pytest.fixture
def task_identity():
    """Flower stamps replies with the identity of the running task; give it one."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def train_message(weights):
    content = RecordDict(
        {"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": 1})}
    )
    return Message(content=content, dst_node_id=7, message_type="train")


def test_a_csv_node_trains_the_model_the_server_builds(tmp_path, task_identity):
    config = csv_config(tmp_path, rounds=1, local_epochs=1, clients=2)
    rows = [[str(30 + i), "blue", f"{i}", "yes" if i % 3 else "no"] for i in range(60)]
    path = write_csv(tmp_path / "site.csv", REF_HEADER, rows)
    context = Context(
        run_id=1, node_id=7, node_config=csv_node(path, 1), state=RecordDict(), run_config={}
    )
    weights = ServerEvaluator(config).initial_weights()
    reply = make_client_app(config)(train_message(weights), context)
    assert not reply.has_error()
    metrics = dict(reply.content["metrics"])
    assert metrics["client-id"] == 1
    assert metrics["num-examples"] == 54  # 60 less the 10% held out
    update = reply.content["arrays"].to_numpy_ndarrays()
    assert [u.shape for u in update] == [w.shape for w in weights]


def test_node_config_as_flower_parses_it_from_the_command_line(tmp_path):
    from flwr.common.config import parse_config_args

    config = csv_config(tmp_path)
    path = write_csv(tmp_path / "site a.csv", REF_HEADER, reference_rows()[:20])
    schema = tmp_path / "schema.json"
    node_config = parse_config_args(
        [f"client-id=3 data-file='{path}' data-format='csv' schema-file='{schema}'"]
    )
    data = load_node_data(config, node_config)
    assert data.client_id == 3 and len(data.train) == 18 and len(data.validation) == 2


def test_a_data_file_that_is_a_folder_or_a_device_says_so(tmp_path):
    """Issue 12 item 10: these were reported as "does not exist"."""
    config = csv_config(tmp_path)
    folder = tmp_path / "site.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="is a folder, not a file; point data-file at") as info:
        load_node_data(config, csv_node(folder))
    one_line_naming(info.value, folder)
    with pytest.raises(DataError, match="is a character device, not a regular file") as info:
        load_node_data(config, csv_node(Path("/dev/zero"), **{"data-format": "csv"}))
    one_line_naming(info.value, Path("/dev/zero"))


def test_a_nodes_messages_share_its_encoded_file_only_under_its_seal(tmp_path, monkeypatch):
    """Under `privet node` (a data cache folder and the node's secret), the first message encodes
    the file and the next ones load the same arrays and counts; a changed file misses, and an
    entry edited or sealed by another node is encoded again, never used."""
    import secrets

    from privet.client import node_data, node_data_cache
    from privet.privacy.seal import SEAL_ENV

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(node_data_cache.CACHE_ENV, str(cache))
    monkeypatch.setenv(SEAL_ENV, secrets.token_hex(32))
    rows = [["1", "red", "1", "yes"], ["", "red", "2", "no"]]
    rows += [[str(i), "blue", "4", "yes" if i % 2 else "no"] for i in range(8)]
    path = write_csv(tmp_path / "n.csv", REF_HEADER, rows)
    config = csv_config(tmp_path, missing="impute")
    encodings = []
    real = node_data._load_local_cached.__wrapped__

    def counted(*args):
        encodings.append(1)
        return real(*args)

    monkeypatch.setattr(node_data, "_load_local_cached", counted)
    first = load_local_examples(config, csv_node(path))
    assert encodings == [1] and len(list(cache.glob("*.npz"))) == 1
    again = load_local_examples(config, csv_node(path))
    assert encodings == [1]  # loaded, not encoded
    np.testing.assert_array_equal(again.examples.features, first.examples.features)
    np.testing.assert_array_equal(again.examples.labels, first.examples.labels)
    assert again.missing == first.missing and again.missing.affected_rows == 1
    assert (again.classes_present, again.schema_digest) == (
        first.classes_present,
        first.schema_digest,
    )
    assert not again.examples.features.flags.writeable
    # A changed file is another entry.
    write_csv(path, REF_HEADER, rows + [["3", "green", "1", "no"]])
    assert len(load_local_examples(config, csv_node(path)).examples) == 11
    assert encodings == [1, 1]
    # An edited entry (one label flipped) fails its seal: encoded again, the truth returned.
    newest = max(cache.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    with np.load(newest) as arrays:
        features, labels = arrays["features"], arrays["labels"].copy()
    labels[0] = 1 - labels[0]
    with newest.open("wb") as handle:
        np.savez(handle, features=features, labels=labels)
    truth = load_local_examples(config, csv_node(path))
    assert encodings == [1, 1, 1] and truth.examples.labels[0] != labels[0]
    # Another node's secret: not trusted either.
    monkeypatch.setenv(SEAL_ENV, secrets.token_hex(32))
    load_local_examples(config, csv_node(path))
    assert encodings == [1, 1, 1, 1]
    # Without the secret (a simulation) nothing is kept.
    monkeypatch.delenv(SEAL_ENV)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(node_data_cache.CACHE_ENV, str(empty))
    load_local_examples(config, csv_node(path))
    assert not list(empty.iterdir())
