"""Tests for task.datasets: bundled digits, real MNIST/Fashion-MNIST/Adult files, CSV encoding."""

import csv
import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from privet.task.datasets import (
    ADULT_COLUMNS,
    DATASETS,
    IDX_FILES,
    ArrayDataset,
    DataError,
    TabularSchema,
    TrainTest,
    encode_with_schema,
    fit_tabular_schema,
    load_dataset,
    read_csv_table,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared_dir(name: str) -> Path:
    """Return a folder of the shared test data, failing (not skipping) when it is absent."""
    folder = DATA / name
    if not folder.is_dir():
        pytest.fail(f"shared test data folder {folder} is missing; the data tests need it")
    return folder


# ---------------------------------------------------------------------------------- containers


def test_array_dataset_converts_dtypes_and_subsets():
    ds = ArrayDataset(np.arange(12, dtype=np.float64).reshape(4, 3), np.array([0, 1, 2, 1]), 3)
    assert ds.features.dtype == np.float32
    assert ds.labels.dtype == np.int64
    assert len(ds) == 4
    assert ds.feature_shape == (3,)
    sub = ds.subset(np.array([3, 1]))
    np.testing.assert_array_equal(sub.labels, [1, 1])
    np.testing.assert_array_equal(sub.features[0], [9, 10, 11])
    assert sub.num_classes == 3


@pytest.mark.parametrize(
    ("features", "labels", "num_classes", "match"),
    [
        (np.zeros((3, 2)), np.array([0, 1]), 2, "3 feature rows but 2 labels"),
        (np.zeros((2, 2)), np.array([0, 2]), 2, r"labels must lie in 0\.\.1"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), 2, "integer"),
        (np.zeros(2), np.array([0, 1]), 2, "shape"),
    ],
)
def test_array_dataset_rejects_malformed(features, labels, num_classes, match):
    with pytest.raises(DataError, match=match):
        ArrayDataset(features, labels, num_classes)


def test_subset_rejects_out_of_range():
    ds = ArrayDataset(np.zeros((3, 2)), np.array([0, 1, 0]), 2)
    with pytest.raises(DataError, match="subset indices"):
        ds.subset(np.array([0, 3]))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    assert "\n" not in message
    for name in DATASETS:
        assert name in message


# ---------------------------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_split():
    data = load_dataset("digits")
    assert isinstance(data, TrainTest)
    assert data.kind == "image"
    assert data.groups is None
    assert data.train.feature_shape == (1, 8, 8)
    assert data.train.num_classes == data.test.num_classes == 10
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == 360  # ceil(0.2 * 1797)
    for split in (data.train, data.test):
        assert split.features.dtype == np.float32
        assert split.features.min() == 0.0
        assert split.features.max() == 1.0  # 16 / 16
        assert set(np.unique(split.labels)) == set(range(10))
    # stratified: every class's test share is close to 20 %
    counts_test = np.bincount(data.test.labels, minlength=10)
    counts_all = counts_test + np.bincount(data.train.labels, minlength=10)
    assert np.all(np.abs(counts_test / counts_all - 0.2) < 0.02)


def test_digits_deterministic_per_seed_and_fraction():
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    np.testing.assert_array_equal(a.train.labels, b.train.labels)
    np.testing.assert_array_equal(a.test.features, b.test.features)
    assert not np.array_equal(a.train.labels, c.train.labels)
    half = load_dataset("digits", test_fraction=0.5)
    assert abs(len(half.test) - 1797 / 2) <= 1


def test_loaded_arrays_are_read_only_but_subsets_are_not():
    data = load_dataset("digits")
    with pytest.raises(ValueError):
        data.train.features[0, 0, 0, 0] = 5.0
    sub = data.train.subset(np.arange(5))
    sub.features[0, 0, 0, 0] = 5.0
    assert data.train.features[0, 0, 0, 0] != 5.0


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_test_fraction(fraction):
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("digits", test_fraction=fraction)


def test_tabular_options_rejected_for_images():
    with pytest.raises(DataError, match="--partition-column"):
        load_dataset("digits", partition_column="x")
    # empty strings mean "unset" (run configurations use them)
    assert len(load_dataset("digits", data_dir="", partition_column="").train) > 0


# ---------------------------------------------------------------------------------- MNIST (real)


@pytest.mark.parametrize(
    ("name", "first_train", "first_test"),
    [("mnist", 5, 7), ("fashion-mnist", 9, 9)],
)
def test_real_mnist_files(name, first_train, first_test):
    data = load_dataset(name, data_dir=str(shared_dir(name)))
    assert data.kind == "image"
    assert len(data.train) == 60000
    assert len(data.test) == 10000
    assert data.train.feature_shape == data.test.feature_shape == (1, 28, 28)
    assert data.num_classes == 10
    assert data.train.features.dtype == np.float32
    assert data.train.features.min() == 0.0
    assert data.train.features.max() == 1.0
    assert int(data.train.labels[0]) == first_train
    assert int(data.test.labels[0]) == first_test
    # the canonical files are balanced enough that every class has thousands of examples
    assert np.bincount(data.train.labels, minlength=10).min() > 5000
    # cached: a second load returns the very same arrays
    again = load_dataset(name, data_dir=str(shared_dir(name)))
    assert again.train.features is data.train.features


def test_mnist_first_image_is_known():
    data = load_dataset("mnist", data_dir=str(shared_dir("mnist")))
    image = data.train.features[0, 0]
    # the first MNIST training digit ("5"): 166 ink pixels; its top 4 rows are blank
    assert int(np.count_nonzero(image)) == 166
    assert not image[:4].any()


# ---------------------------------------------------------------------------------- IDX (synthetic)


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    with gzip.open(path, "wb") as handle:
        handle.write(header + payload)


def write_fake_mnist(folder: Path, n_train: int = 5, n_test: int = 3) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 2051, (n, 28, 28), pixels.tobytes())
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 2049, (n,), labels.tobytes())


def test_synthetic_idx_parsed_exactly(tmp_path):
    write_fake_mnist(tmp_path)
    data = load_dataset("mnist", data_dir=str(tmp_path))
    assert len(data.train) == 5 and len(data.test) == 3
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "rb") as handle:
        raw = np.frombuffer(handle.read()[16:], dtype=np.uint8).reshape(5, 1, 28, 28)
    np.testing.assert_allclose(data.train.features, raw / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.train.labels, [0, 1, 2, 3, 4])


def test_replaced_file_is_reread(tmp_path):
    write_fake_mnist(tmp_path, n_train=5)
    assert len(load_dataset("mnist", data_dir=str(tmp_path)).train) == 5
    write_fake_mnist(tmp_path, n_train=7)
    for name in IDX_FILES:  # make sure the modification time changes
        os.utime(tmp_path / name, ns=(0, 10**18))
    assert len(load_dataset("mnist", data_dir=str(tmp_path)).train) == 7


def test_truncated_gzip_names_path(tmp_path):
    write_fake_mnist(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(target) in str(info.value)
    assert "\n" not in str(info.value)


def test_not_gzip_names_path(tmp_path):
    write_fake_mnist(tmp_path)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError, match="corrupt") as info:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert str(target) in str(info.value)
    assert "Fashion-MNIST" in str(info.value)


def test_bad_magic_number(tmp_path):
    write_fake_mnist(tmp_path)
    target = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(target, 2051, (5,), bytes(5))
    with pytest.raises(DataError, match="bad magic number 0x00000803") as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(target) in str(info.value)


def test_byte_count_mismatch(tmp_path):
    write_fake_mnist(tmp_path)
    target = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(target, 2051, (3, 28, 28), bytes(3 * 28 * 28 - 1))
    with pytest.raises(DataError, match="need 2352") as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(target) in str(info.value)


def test_wrong_image_size(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051, (3, 8, 8), bytes(3 * 64))
    with pytest.raises(DataError, match="8x8"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_image_label_count_disagree(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", 2049, (4,), bytes(4))
    with pytest.raises(DataError, match="5 images but .* has 4 labels"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_label_out_of_range(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, (3,), bytes([1, 10, 2]))
    with pytest.raises(DataError, match="label 10 outside"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_missing_dir_and_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="--data-dir") as info:
        load_dataset("mnist", data_dir=str(missing))
    assert str(missing) in str(info.value)
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist")
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing") as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in str(info.value)


# ---------------------------------------------------------------------------------- CSV

CSV_HEADER = ["age", "color", "site", "score", "label"]
CSV_ROWS = [
    # age numeric with a missing value, color categorical with "?" missing, site = partition
    ["30", "red", "A", "1.5", "yes"],
    ["40", "blue", "A", "2.5", "no."],
    ["", "green", "A", "3.5", "yes"],
    ["50", "?", "B", "4.5", "no"],
    ["20", "red", "B", "0.5", "yes"],
    ["60", "blue", "B", "5.5", "no"],
    ["35", "green", "C", "2.0", "yes"],
    ["45", "red", "C", "3.0", "no"],
    ["25", "blue", "C", "1.0", "yes"],
    ["55", "green", "C", "6.0", "no"],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_encoding(tmp_path):
    # spaces around cells must be stripped
    rows = [[f" {cell} " for cell in row] for row in CSV_ROWS]
    path = write_csv(tmp_path / "t.csv", CSV_HEADER, rows)
    data = load_dataset(
        "csv",
        data_file=str(path),
        label_column="label",
        partition_column="site",
        test_fraction=0.4,
        missing="impute",  # this test checks the imputation; the default drops those rows
    )
    assert data.kind == "tabular"
    schema = data.schema
    assert schema is not None
    # age (1) + color one-hot over {blue, green, red} (3) + score (1); site and label excluded
    assert schema.feature_names == ("age", "color=blue", "color=green", "color=red", "score")
    assert data.train.feature_shape == (5,)
    assert schema.classes == ("no", "yes")  # "no." is the same class as "no"
    assert len(data.train) == 6 and len(data.test) == 4
    # recover which file rows landed in train via the raw score column (all distinct)
    scores = np.array([float(r[3]) for r in CSV_ROWS])
    score_col = schema.columns[2]
    assert score_col.name == "score"
    train_scores = data.train.features[:, 4] * score_col.std + score_col.mean
    rows_in_train = [int(np.argmin(np.abs(scores - s))) for s in train_scores]
    assert len(set(rows_in_train)) == 6
    # standardised with the TRAINING split's statistics
    np.testing.assert_allclose(score_col.mean, scores[rows_in_train].mean(), rtol=1e-9)
    np.testing.assert_allclose(score_col.std, scores[rows_in_train].std(), rtol=1e-9)
    np.testing.assert_allclose(data.train.features[:, 4].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(data.train.features[:, 4].std(), 1.0, atol=1e-5)
    for features, label, group, row in zip(
        data.train.features, data.train.labels, data.groups, rows_in_train, strict=True
    ):
        raw = CSV_ROWS[row]
        expected_onehot = {"blue": [1, 0, 0], "green": [0, 1, 0], "red": [0, 0, 1]}.get(
            raw[1], [0, 0, 0]
        )
        np.testing.assert_array_equal(features[1:4], expected_onehot)
        assert label == (1 if raw[4] == "yes" else 0)
        assert group == raw[2]
        age_col = schema.columns[0]
        if raw[0] == "":  # missing numeric -> training mean -> 0 after standardising
            assert features[0] == 0.0
        else:
            np.testing.assert_allclose(
                features[0], (float(raw[0]) - age_col.mean) / age_col.std, rtol=1e-5
            )
    present_train_ages = [float(CSV_ROWS[r][0]) for r in rows_in_train if CSV_ROWS[r][0]]
    np.testing.assert_allclose(schema.columns[0].mean, np.mean(present_train_ages), rtol=1e-9)


def test_csv_integer_groups_and_numeric_label_order(tmp_path):
    rows = [[str(i), str(i % 3), str(10 if i % 2 else 9)] for i in range(12)]
    path = write_csv(tmp_path / "g.csv", ["x", "hospital", "y"], rows)
    data = load_dataset("csv", data_file=str(path), label_column="y", partition_column="hospital")
    assert data.groups is not None and data.groups.dtype == np.int64
    assert set(data.groups.tolist()) <= {0, 1, 2}
    assert data.schema is not None and data.schema.classes == ("9", "10")


def test_csv_deterministic_split(tmp_path):
    path = write_csv(tmp_path / "t.csv", CSV_HEADER, CSV_ROWS)
    a = load_dataset("csv", data_file=str(path), label_column="label", test_fraction=0.4, seed=1)
    b = load_dataset("csv", data_file=str(path), label_column="label", test_fraction=0.4, seed=1)
    np.testing.assert_array_equal(a.train.features, b.train.features)


def test_csv_ragged_row_names_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,label\n1,2,x\n\n3,4,y\n5,6\n7,8,x\n")
    with pytest.raises(DataError, match="line 5 has 2 fields but the header has 3") as info:
        load_dataset("csv", data_file=str(path), label_column="label")
    assert str(path) in str(info.value)


def test_csv_label_column_errors(tmp_path):
    path = write_csv(tmp_path / "t.csv", CSV_HEADER, CSV_ROWS)
    with pytest.raises(DataError, match="label column 'target' is not in"):
        load_dataset("csv", data_file=str(path), label_column="target")
    with pytest.raises(DataError, match="--label-column"):
        load_dataset("csv", data_file=str(path))


def test_csv_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("csv", data_file=str(tmp_path / "none.csv"), label_column="y")
    with pytest.raises(DataError, match="--data-file"):
        load_dataset("csv", label_column="y")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_dataset("csv", data_file=str(empty), label_column="y")
    header_only = tmp_path / "header.csv"
    header_only.write_text("x,y\n\n")
    with pytest.raises(DataError, match="no data rows"):
        load_dataset("csv", data_file=str(header_only), label_column="y")


def test_csv_needs_two_classes(tmp_path):
    path = write_csv(tmp_path / "one.csv", ["x", "y"], [[str(i), "a"] for i in range(6)])
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset("csv", data_file=str(path), label_column="y")


def test_csv_missing_label_value_names_line(tmp_path):
    path = write_csv(tmp_path / "m.csv", ["x", "y"], [["1", "a"], ["2", "?"], ["3", "b"]])
    with pytest.raises(DataError, match="line 3 has no value in label column 'y'"):
        load_dataset("csv", data_file=str(path), label_column="y")


def numeric_rows(n: int = 200) -> list[list[str]]:
    return [[f"{i * 0.5:.1f}", str(i % 7), "yes" if i % 2 else "no"] for i in range(n)]


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-Infinity", "secret-4417"])
def test_one_bad_cell_is_a_missing_value_not_a_category(tmp_path, bad):
    """Issue 12 item 7: one 'nan' in 20,000 numbers made 20,001 one-hot inputs (3.4 GB)."""
    rows = numeric_rows()
    rows[57][1] = bad
    path = write_csv(tmp_path / "n.csv", ["x", "z", "y"], rows)
    dropped = load_dataset("csv", data_file=str(path), label_column="y")
    assert dropped.schema is not None
    assert [(c.name, c.kind) for c in dropped.schema.columns] == [
        ("x", "numeric"),
        ("z", "numeric"),
    ]
    assert dropped.train.feature_shape == (2,)
    assert len(dropped.train) + len(dropped.test) == 199
    report = dropped.missing
    assert report is not None and report.policy == "drop"
    assert (report.rows, report.affected_rows, report.dropped_rows) == (200, 1, 1)
    assert report.by_column == {"z": 1} and report.not_numbers == {"z": 1}
    line = report.describe(str(path))
    assert "1 of 200 row(s) have missing feature values" in line
    assert "(1 in 'z' (1 NaN, infinite or not a number))" in line and "dropped 1 example(s)" in line
    assert "secret" not in line and "\n" not in line  # counts only, never a cell's value
    assert report.to_json()["dropped_rows"] == 1
    kept = load_dataset("csv", data_file=str(path), label_column="y", missing="impute")
    assert kept.train.feature_shape == (2,)
    assert len(kept.train) + len(kept.test) == 200
    assert kept.missing is not None and kept.missing.dropped_rows == 0
    assert kept.missing.affected_rows == 1
    everything = np.concatenate([kept.train.features, kept.test.features])
    assert np.isfinite(everything).all()
    assert int(np.count_nonzero(everything[:, 1] == 0.0)) >= 1  # imputed: the training mean


def test_blank_cells_follow_the_policy_and_text_columns_stay_categorical(tmp_path):
    rows = [[r[0], r[1], ["a", "b", "c"][i % 3], r[2]] for i, r in enumerate(numeric_rows(60))]
    rows[3][0] = ""  # blank numeric cell
    rows[4][2] = "?"  # blank categorical cell
    rows[5][2] = "7"  # a number in a text column is one more category, not a type change
    path = write_csv(tmp_path / "t.csv", ["x", "z", "kind", "y"], rows)
    data = load_dataset("csv", data_file=str(path), label_column="y")
    assert data.schema is not None and data.schema.feature_names == (
        "x",
        "z",
        "kind=7",
        "kind=a",
        "kind=b",
        "kind=c",
    )
    assert data.missing is not None and data.missing.by_column == {"x": 1, "kind": 1}
    assert data.missing.not_numbers == {} and data.missing.dropped_rows == 2
    assert len(data.train) + len(data.test) == 58


def test_a_file_with_a_missing_value_in_every_row(tmp_path):
    rows = [[r[0], "", r[2]] for r in numeric_rows(20)]
    path = write_csv(tmp_path / "e.csv", ["x", "z", "y"], rows)
    with pytest.raises(DataError, match="20 of 20 row") as info:
        load_dataset("csv", data_file=str(path), label_column="y")
    assert "pass --missing impute" in str(info.value) and "\n" not in str(info.value)
    imputed = load_dataset("csv", data_file=str(path), label_column="y", missing="impute")
    assert len(imputed.train) + len(imputed.test) == 20
    with pytest.raises(DataError, match="unknown missing-value policy 'mean'"):
        load_dataset("csv", data_file=str(path), label_column="y", missing="mean")


def test_a_data_file_that_is_not_a_file_says_what_it_is(tmp_path):
    """Issue 12 item 10: a folder or /dev/zero was reported as "does not exist"."""
    with pytest.raises(DataError, match="is a folder, not a file"):
        load_dataset("csv", data_file=str(tmp_path), label_column="y")
    with pytest.raises(DataError, match="/dev/zero is a character device, not a regular file"):
        load_dataset("csv", data_file="/dev/zero", label_column="y")
    with pytest.raises(DataError, match="is a folder, not a file"):
        read_csv_table(tmp_path)
    (tmp_path / "adult.data").mkdir()
    with pytest.raises(DataError, match="adult.data is a folder, not a file"):
        load_dataset("adult", data_dir=str(tmp_path))
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("mnist", data_dir=str(not_a_folder))


def test_schema_json_round_trip_and_second_file(tmp_path):
    table = read_csv_table(write_csv(tmp_path / "a.csv", CSV_HEADER, CSV_ROWS))
    schema = fit_tabular_schema(table, "label", partition_column="site")
    restored = TabularSchema.from_json(json.loads(json.dumps(schema.to_json())))
    assert restored == schema
    assert schema.to_json()["schema_version"] == 2
    # a second node's file: different row set, columns in another order, an extra column,
    # and a category ("purple") the schema has never seen
    header = ["label", "extra", "score", "color", "age"]
    rows = [["yes", "zz", "2.0", "blue", "33"], ["no", "zz", "9.0", "purple", ""]]
    other = read_csv_table(write_csv(tmp_path / "b.csv", header, rows))
    encoded = encode_with_schema(other, restored)
    direct = encode_with_schema(other, schema)
    np.testing.assert_array_equal(encoded.features, direct.features)
    assert encoded.feature_shape == (schema.width,)
    age, score = schema.columns[0], schema.columns[2]
    np.testing.assert_allclose(
        encoded.features[0],
        [(33 - age.mean) / age.std, 1, 0, 0, (2.0 - score.mean) / score.std],
        rtol=1e-5,
    )
    np.testing.assert_allclose(encoded.features[1, :4], [0, 0, 0, 0])  # missing age, unseen color
    np.testing.assert_array_equal(encoded.labels, [1, 0])
    # the same rows encode identically whether they come from one file or another
    same = read_csv_table(write_csv(tmp_path / "c.csv", CSV_HEADER, CSV_ROWS))
    np.testing.assert_array_equal(
        encode_with_schema(same, restored).features, encode_with_schema(table, schema).features
    )


def test_schema_encoding_errors(tmp_path):
    table = read_csv_table(write_csv(tmp_path / "a.csv", CSV_HEADER, CSV_ROWS))
    schema = fit_tabular_schema(table, "label")
    bad_number = read_csv_table(
        write_csv(tmp_path / "b.csv", CSV_HEADER, [["old-4417", "red", "A", "1", "yes"]])
    )
    with pytest.raises(DataError, match="line 2: column 'age' is numeric") as info:
        encode_with_schema(bad_number, schema)
    assert "4417" not in str(info.value)  # a cell's value is never quoted
    bad_label = read_csv_table(
        write_csv(tmp_path / "c.csv", CSV_HEADER, [["1", "red", "A", "1", "maybe"]])
    )
    with pytest.raises(DataError, match="label 'maybe' is not one of"):
        encode_with_schema(bad_label, schema)
    no_column = read_csv_table(write_csv(tmp_path / "d.csv", ["age", "label"], [["1", "yes"]]))
    with pytest.raises(DataError, match="schema column 'color' is not in"):
        encode_with_schema(no_column, schema)
    data = schema.to_json()
    data["schema_version"] = 99
    with pytest.raises(DataError, match="version 99"):
        TabularSchema.from_json(data)
    data = schema.to_json()
    del data["columns"][0]["std"]
    with pytest.raises(DataError, match="malformed"):
        TabularSchema.from_json(data)


# ---------------------------------------------------------------------------------- Adult (real)


@pytest.mark.parametrize("missing", ["drop", "impute"])
def test_real_adult(missing):
    folder = shared_dir("uci-adult")
    data = load_dataset("adult", data_dir=str(folder), missing=missing)
    assert data.kind == "tabular"
    # independent count from the raw file: 2399 rows hold "?" in some feature column
    with (folder / "adult.data").open(newline="") as handle:
        every_row = [[c.strip() for c in r] for r in csv.reader(handle) if r]
    assert len(every_row) == 32561
    complete = [r for r in every_row if "?" not in r[:-1]]
    rows = complete if missing == "drop" else every_row
    assert len(data.train) + len(data.test) == len(rows) == (30162 if missing == "drop" else 32561)
    assert data.missing is not None and data.missing.policy == missing
    assert data.missing.rows == 32561 and data.missing.affected_rows == 32561 - 30162
    assert data.missing.dropped_rows == (2399 if missing == "drop" else 0)
    assert set(data.missing.by_column) == {"workclass", "occupation", "native-country"}
    assert data.missing.not_numbers == {}
    assert data.num_classes == 2
    assert data.schema is not None and data.schema.classes == ("<=50K", ">50K")
    width = 0
    columns = {column.name: column for column in data.schema.columns}
    for j, name in enumerate(ADULT_COLUMNS):
        if name == "income":
            continue
        values = {r[j] for r in rows} - {"", "?"}
        try:
            [float(v) for v in values]
            width += 1
            assert columns[name].kind == "numeric"
        except ValueError:
            width += len(values)
            assert columns[name].categories == tuple(sorted(values))
    # 6 numeric columns, 99 categories in 8 categorical columns (98 without the "?" rows: every
    # "Never-worked" row has an unknown occupation)
    assert width == 6 + (98 if missing == "drop" else 99)
    assert data.train.feature_shape == (width,)
    # about a quarter earn >50K in both splits (stratified)
    assert 0.23 < data.train.labels.mean() < 0.25
    assert abs(data.train.labels.mean() - data.test.labels.mean()) < 0.005


def test_adult_partition_column_and_missing_file(tmp_path):
    data = load_dataset(
        "adult", data_dir=str(shared_dir("uci-adult")), partition_column="sex", missing="impute"
    )
    assert data.groups is not None
    assert sorted(set(data.groups.tolist())) == ["Female", "Male"]
    assert data.train.feature_shape == (103,)  # sex (2 categories) removed from the features
    with pytest.raises(DataError, match="adult.data") as info:
        load_dataset("adult", data_dir=str(tmp_path))
    assert str(tmp_path / "adult.data") in str(info.value)
