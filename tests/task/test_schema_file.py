"""Schema files (version 2): format, digest, strict checks, runs naming a schema or test file."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from privet.task.config import ConfigError, RunConfig
from privet.task.datasets import (
    DataError,
    FeatureColumn,
    TabularSchema,
    check_table_against_schema,
    encode_with_schema,
    load_dataset,
    load_schema_file,
    read_csv_table,
    save_schema_file,
    schema_digest,
)
from privet.task.task import DEFAULT_TASK, task_named

SECRET = "4417"  # a cell value that must never appear in an error message
HEADER = ["age", "color", "code", "label"]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def rows(n: int, offset: int = 0) -> list[list[str]]:
    """n rows: an age, a colour, an integer-coded category (1..3) and a label (no/yes)."""
    colors = ("red", "green", "blue")
    return [
        [str(20 + i + offset), colors[i % 3], str(1 + i % 3), "yes" if i % 2 else "no"]
        for i in range(n)
    ]


def mixed_schema(missing: str = "drop") -> TabularSchema:
    """Every kind of column: fitted numeric, declared range, fitted and declared categories."""
    return TabularSchema(
        label_column="label",
        classes=("no", "yes"),
        columns=(
            FeatureColumn("age", "numeric", range=(0.0, 100.0)),
            FeatureColumn("color", "categorical", categories=("blue", "green", "red")),
            FeatureColumn("code", "categorical", categories=("1", "2", "3"), source="declared"),
        ),
        missing=missing,
    )


# ------------------------------------------------------------------------- the format


def test_round_trip_and_the_json_form(tmp_path):
    schema = TabularSchema(
        label_column="label",
        classes=("no", "yes"),
        columns=(
            FeatureColumn("age", "numeric", mean=31.5, std=4.25),
            FeatureColumn("hours", "numeric", range=(0, 80)),
            FeatureColumn("color", "categorical", categories=("blue", "red")),
        ),
        partition_column="site",
        missing="impute",
    )
    path = save_schema_file(schema, tmp_path / "schema.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["missing"] == "impute"
    assert data["columns"] == [
        {"name": "age", "kind": "numeric", "source": "data", "mean": 31.5, "std": 4.25},
        {"name": "hours", "kind": "numeric", "source": "declared", "range": [0.0, 80.0]},
        {"name": "color", "kind": "categorical", "source": "data", "categories": ["blue", "red"]},
    ]
    restored = load_schema_file(path)
    assert restored == schema
    hours = restored.columns[1]
    assert (hours.mean, hours.std) == (40.0, 40.0)  # [0, 80] maps onto [-1, 1]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_digest_ignores_formatting_and_key_order_but_not_content(tmp_path):
    schema = mixed_schema()
    digest = schema_digest(schema)
    assert len(digest) == 64 and int(digest, 16) >= 0
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(schema.to_json(), separators=(",", ":")))
    shuffled = tmp_path / "shuffled.json"
    data = schema.to_json()
    reordered = {key: data[key] for key in reversed(list(data))}
    reordered["columns"] = [dict(reversed(list(c.items()))) for c in data["columns"]]
    reordered["columns"][0]["range"] = [0, 100]  # integers in the file: the same numbers
    shuffled.write_text(json.dumps(reordered, indent=7))
    assert schema_digest(load_schema_file(compact)) == digest
    assert schema_digest(load_schema_file(shuffled)) == digest
    assert schema_digest(mixed_schema(missing="impute")) != digest
    other = schema.to_json()
    other["classes"] = ["yes", "no"]  # the order of classes is the label coding
    assert schema_digest(TabularSchema.from_json(other)) != digest


def test_version_1_files_are_still_read(tmp_path):
    version_1 = {
        "schema_version": 1,
        "label_column": "label",
        "partition_column": None,
        "classes": ["no", "yes"],
        "columns": [
            {"name": "age", "kind": "numeric", "mean": 30.0, "std": 5.0},
            {"name": "color", "kind": "categorical", "categories": ["blue", "red"]},
        ],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(version_1))
    schema = load_schema_file(path)
    assert schema.schema_version == 1 and schema.missing == "drop"
    assert [c.source for c in schema.columns] == ["data", "data"]
    assert schema.width == 3
    rewritten = save_schema_file(schema, tmp_path / "new.json")
    assert json.loads(rewritten.read_text())["schema_version"] == 2
    assert schema_digest(load_schema_file(rewritten)) == schema_digest(schema)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "schema file .*absent.json does not exist; pass the schema JSON"),
        ("{oops", r"is not valid JSON \(Expecting property name"),
        ('{"schema_version": 3}', "version 3 is not supported .this release reads versions 1, 2"),
        ('{"schema_version": true}', "version True is not supported"),
        ('{"schema_version": 2, "classes": []}', "malformed .KeyError"),
        ("[1, 2]", "must be a JSON object"),
        (
            '{"schema_version": 2, "label_column": "y", "classes": ["a", "b"], "columns": '
            '[{"name": "x", "kind": "numeric", "source": "declared", "range": [5, 1]}]}',
            r"column 'x' has range \[5, 1\]; a range needs finite bounds with lo < hi",
        ),
        (
            '{"schema_version": 2, "label_column": "y", "classes": ["a", "b"], "missing": "zero",'
            ' "columns": []}',
            "missing-value policy 'zero' is not one of drop, impute",
        ),
        (
            '{"schema_version": 2, "label_column": "y", "classes": ["a", "b"], "columns": '
            '[{"name": "x", "kind": "numeric", "source": "declared", "mean": 1, "std": 1}]}',
            "declared numeric column without a range",
        ),
    ],
)
def test_bad_schema_files_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / ("absent.json" if text is None else "schema.json")
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        load_schema_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_save_replaces_atomically_and_reports_an_unwritable_folder(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text("old")
    save_schema_file(mixed_schema(), path)
    assert load_schema_file(path) == mixed_schema()
    with pytest.raises(DataError, match="cannot write schema file .*no-such-folder"):
        save_schema_file(mixed_schema(), tmp_path / "no-such-folder" / "schema.json")


def test_integer_coded_category_declared_categorical_is_one_hot(tmp_path):
    path = write_csv(tmp_path / "a.csv", HEADER, rows(6))
    encoded = encode_with_schema(read_csv_table(path), mixed_schema())
    assert encoded.feature_shape == (1 + 3 + 3,)
    # codes 1, 2, 3, 1, 2, 3: one indicator each, not one linear feature
    np.testing.assert_array_equal(encoded.features[:, 4:], np.tile(np.eye(3), (2, 1)))
    np.testing.assert_allclose(encoded.features[:, 0], (np.arange(20, 26) - 50) / 50)


# ------------------------------------------------------------------------- strict checks


def strict_error(tmp_path: Path, header: list[str], body: list[list[str]]) -> str:
    path = write_csv(tmp_path / "node.csv", header, body)
    with pytest.raises(DataError) as info:
        check_table_against_schema(read_csv_table(path), mixed_schema())
    text = str(info.value)
    assert "\n" not in text and str(path) in text and SECRET not in text
    return text


def test_strict_check_accepts_a_fitting_file_in_any_column_order(tmp_path):
    body = [[r[3], r[2], r[0], r[1]] for r in rows(9)]
    path = write_csv(tmp_path / "node.csv", ["label", "code", "age", "color"], body)
    check_table_against_schema(read_csv_table(path), mixed_schema())


def test_strict_check_missing_column(tmp_path):
    text = strict_error(tmp_path, ["age", "label"], [[SECRET, "no"]])
    assert "lacks column 'color' of the schema (2 schema column(s) missing)" in text


def test_strict_check_extra_column(tmp_path):
    text = strict_error(tmp_path, [*HEADER, "zip"], [r + [SECRET] for r in rows(3)])
    assert "has column 'zip' that the schema does not have (1 extra column(s))" in text


def test_strict_check_unknown_category(tmp_path):
    body = rows(6)
    body[1][2] = SECRET
    body[4][2] = "9"
    text = strict_error(tmp_path, HEADER, body)
    assert "column 'code' holds 2 value(s) that are not among the schema's 3 categories" in text
    assert "first on line 3" in text


def test_strict_check_label_outside_the_classes(tmp_path):
    body = rows(6)
    for row in body[2:5]:
        row[3] = SECRET
    text = strict_error(tmp_path, HEADER, body)
    assert "label column 'label' holds 3 label(s) that are not among the schema's classes" in text


def test_strict_check_number_outside_a_declared_range(tmp_path):
    body = rows(6)
    body[0][0] = SECRET
    text = strict_error(tmp_path, HEADER, body)
    assert "column 'age' holds 1 number(s) outside its declared range [0, 100]" in text


def test_missing_values_are_not_strict_errors(tmp_path):
    body = rows(6)
    body[0][0], body[1][1] = "", "?"
    path = write_csv(tmp_path / "node.csv", HEADER, body)
    check_table_against_schema(read_csv_table(path), mixed_schema())


# ------------------------------------------------------------------------- runs


def schema_and_files(tmp_path: Path, missing: str = "drop") -> tuple[Path, Path, Path]:
    schema = save_schema_file(mixed_schema(missing), tmp_path / "schema.json")
    data = write_csv(tmp_path / "data.csv", HEADER, rows(50))
    test_rows = rows(13, offset=30)
    test_rows[5][0] = ""  # one missing value: dropped under "drop"
    test = write_csv(tmp_path / "test.csv", HEADER, test_rows)
    return schema, data, test


def test_a_run_with_schema_and_test_file_evaluates_on_exactly_that_file(tmp_path):
    schema, data, test = schema_and_files(tmp_path)
    config = RunConfig(
        dataset="csv",
        data_file=str(data),
        schema_file=str(schema),
        test_file=str(test),
        output=str(tmp_path),
    )
    loaded = load_dataset(
        config.dataset,
        data_file=config.data_file,
        schema_file=config.schema_file,
        test_file=config.test_file,
    )
    assert len(loaded.test) == 12 and len(loaded.train) == 50  # no split
    assert loaded.test_source == (
        f"test-file {test} (12 examples; 1 of 13 rows dropped for missing values)"
    )
    assert loaded.schema is not None
    assert schema_digest(loaded.schema) == schema_digest(mixed_schema())
    expected = encode_with_schema(read_csv_table(test), mixed_schema())
    np.testing.assert_array_equal(loaded.test.features, np.delete(expected.features, 5, axis=0))


def test_a_run_config_with_schema_and_test_file_reaches_the_task(tmp_path):
    """What the server loads: the run's task with the run config's data options."""
    schema, data, test = schema_and_files(tmp_path, missing="impute")
    config = RunConfig(
        dataset="csv",
        data_file=str(data),
        schema_file=str(schema),
        test_file=str(test),
        missing="impute",
        output=str(tmp_path),
    )
    loaded = task_named(DEFAULT_TASK).load_data(config.dataset, config.dataset_options())
    assert len(loaded.test) == 13
    assert loaded.test_source == f"test-file {test} (13 examples)"


def test_a_server_that_only_evaluates_needs_no_training_file(tmp_path):
    schema, _, test = schema_and_files(tmp_path)
    config = RunConfig(
        dataset="csv", schema_file=str(schema), test_file=str(test), output=str(tmp_path)
    )
    options = config.dataset_options()
    loaded = load_dataset("csv", schema_file=options.schema_file, test_file=options.test_file)
    assert len(loaded.train) == 0 and loaded.train.feature_shape == (7,)
    assert loaded.train.num_classes == 2 and len(loaded.test) == 12
    assert loaded.missing is not None and loaded.missing.rows == 13


def test_a_simulation_with_only_a_test_file_says_its_clients_need_a_data_file(tmp_path):
    """The deployment server above needs no training file; simulated clients do."""
    from privet.client.node_data import client_shards

    schema, _, test = schema_and_files(tmp_path)
    config = RunConfig(
        dataset="csv", schema_file=str(schema), test_file=str(test), output=str(tmp_path)
    )
    with pytest.raises(DataError, match="no rows to train on; add --data-file") as raised:
        client_shards(config)
    assert "\n" not in str(raised.value) and str(test) in str(raised.value)


def test_schema_with_data_file_splits_and_encodes_with_the_schema(tmp_path):
    schema, data, _ = schema_and_files(tmp_path)
    loaded = load_dataset("csv", data_file=str(data), schema_file=str(schema))
    assert len(loaded.train) + len(loaded.test) == 50
    assert loaded.train.feature_shape == (7,)  # the schema's width, not a fitted one
    assert loaded.test_source == f"held-out 20% of data-file {data} (10 of 50 examples)"
    without = load_dataset("csv", data_file=str(data), label_column="label")
    assert without.test_source == f"held-out 20% of data-file {data} (10 of 50 examples)"
    assert without.train.feature_shape == (5,)  # fitted: "code" looks numeric


def test_a_test_file_that_breaks_the_schema_is_refused(tmp_path):
    schema, _, _ = schema_and_files(tmp_path)
    body = rows(5)
    body[2][1] = "purple"
    test = write_csv(tmp_path / "bad-test.csv", HEADER, body)
    with pytest.raises(DataError, match="column 'color' holds 1 value"):
        load_dataset("csv", schema_file=str(schema), test_file=str(test))


def test_schema_and_run_options_must_agree(tmp_path):
    schema, data, _ = schema_and_files(tmp_path)
    with pytest.raises(DataError, match="handles missing values by 'drop' but the run's missing"):
        load_dataset("csv", data_file=str(data), schema_file=str(schema), missing="impute")
    with pytest.raises(DataError, match="label-column 'code' is not the label column 'label'"):
        load_dataset("csv", data_file=str(data), schema_file=str(schema), label_column="code")


def test_a_test_file_without_a_schema_uses_the_schema_fitted_on_the_data_file(tmp_path):
    data = write_csv(tmp_path / "data.csv", HEADER, rows(40))
    test = write_csv(tmp_path / "test.csv", HEADER, rows(9, offset=3))
    loaded = load_dataset("csv", data_file=str(data), label_column="label", test_file=str(test))
    assert len(loaded.train) == 40 and len(loaded.test) == 9
    assert loaded.test_source == f"test-file {test} (9 examples)"


def test_an_image_data_set_evaluates_on_an_npz_test_file(tmp_path):
    digits = load_dataset("digits")
    path = tmp_path / "test.npz"
    np.savez(path, x=digits.test.features[:30, 0], y=digits.test.labels[:30])
    loaded = load_dataset("digits", test_file=str(path))
    assert len(loaded.train) == len(digits.train) and len(loaded.test) == 30
    np.testing.assert_array_equal(loaded.test.features, digits.test.features[:30])
    assert loaded.test_source == f"test-file {path} (30 examples)"
    np.savez(tmp_path / "m.npz", x=np.zeros((4, 28, 28)), y=np.arange(4))
    mnist = load_dataset("mnist", test_file=str(tmp_path / "m.npz"))
    assert len(mnist.train) == 0 and mnist.train.feature_shape == (1, 28, 28)
    assert len(mnist.test) == 4
    assert "held-out 20% of scikit-learn's digits" in digits.test_source


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"dataset": "csv", "schema-file": "/s.json"}, "schema-file alone gives the server"),
        ({"dataset": "digits", "schema-file": "/s.json"}, "schema-file applies only to tabular"),
        ({"dataset": "csv", "test-file": "/t.csv"}, "dataset 'csv' needs --data-file"),
    ],
)
def test_run_config_checks(tmp_path, values, match):
    with pytest.raises(ConfigError, match=match) as info:
        RunConfig.from_mapping({**values, "output": str(tmp_path)})
    assert "\n" not in str(info.value)


def test_run_config_accepts_the_server_only_forms(tmp_path):
    for values in (
        {"dataset": "csv", "schema-file": "/s.json", "test-file": "/t.csv"},
        {"dataset": "csv", "schema-file": "/s.json", "data-file": "/d.csv"},
        {"dataset": "adult", "schema-file": "/s.json", "test-file": "/t.csv"},
        {"dataset": "mnist", "test-file": "/t.npz"},
    ):
        options = RunConfig.from_mapping({**values, "output": str(tmp_path)}).dataset_options()
        assert (options.schema_file, options.test_file) == (
            values.get("schema-file"),
            values.get("test-file"),
        )


def test_a_test_file_that_does_not_exist_is_one_line_naming_it(tmp_path):
    schema, _, _ = schema_and_files(tmp_path)
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(DataError, match="test file .*nowhere.csv does not exist") as raised:
        load_dataset("csv", schema_file=str(schema), test_file=str(missing))
    assert "\n" not in str(raised.value)
