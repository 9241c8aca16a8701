"""`privet schema`: writes the schema every partner encodes with, fitted or declared."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from privet.cli import main
from privet.task.datasets import (
    encode_with_schema,
    load_dataset,
    load_schema_file,
    read_csv_table,
    schema_digest,
)

HEADER = ["age", "color", "code", "label"]
SECRET = "4417"


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def data_file(tmp_path: Path) -> Path:
    colors = ("red", "green", "blue")
    rows = [
        [str(20 + i), colors[i % 3], str(1 + i % 4), "yes" if i % 2 else "no"] for i in range(24)
    ]
    return write_csv(tmp_path / "coordinator.csv", rows)


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `privet ARGV` (argparse's exits included)."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_fits_a_schema_with_declarations_and_reports_it(tmp_path, capsys):
    source, out = data_file(tmp_path), tmp_path / "schema.json"
    status, printed, _ = run(
        capsys,
        [
            "schema",
            "--data-file",
            str(source),
            "--label-column",
            "label",
            "--out",
            str(out),
            "--categorical",
            "code",
            "--range",
            "age=0:100",
            "--missing",
            "impute",
        ],
    )
    assert status == 0
    schema = load_schema_file(out)
    kinds = {c.name: (c.kind, c.source) for c in schema.columns}
    assert kinds == {
        "age": ("numeric", "declared"),
        "color": ("categorical", "data"),
        "code": ("categorical", "data"),
    }
    assert schema.columns[2].categories == ("1", "2", "3", "4")
    assert schema.classes == ("no", "yes") and schema.missing == "impute"
    lines = printed.splitlines()
    assert "numeric columns: 1 (1 with a declared range, 0 scaled by mean/std" in lines[1]
    assert "categorical columns: 2 (0 with declared categories, 2 with categories" in lines[2]
    assert f"digest: sha256:{schema_digest(schema)}" in lines
    assert "release of facts about that file" in printed and str(source) in printed
    assert "--range COL=LO:HI avoids releasing their statistics" in printed
    # the integer-coded column is one-hot: the code-3 rows have one indicator set
    encoded = encode_with_schema(read_csv_table(source), schema)
    assert encoded.feature_shape == (1 + 3 + 4,)
    np.testing.assert_array_equal(encoded.features[2, 4:], [0, 0, 1, 0])
    # and the server encodes with it as written
    loaded = load_dataset("csv", data_file=str(source), schema_file=str(out), missing="impute")
    assert loaded.train.feature_shape == (8,)


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    source, out = data_file(tmp_path), tmp_path / "schema.json"
    out.write_text("the partner's copy")
    argv = ["schema", "--data-file", str(source), "--label-column", "label", "--out", str(out)]
    status, _, error = run(capsys, argv)
    assert status == 1 and "already exists; pass --force" in error
    assert out.read_text() == "the partner's copy"
    status, _, _ = run(capsys, [*argv, "--force"])
    assert status == 0 and load_schema_file(out).label_column == "label"


def test_writes_a_schema_from_declarations_alone(tmp_path, capsys):
    declarations = {
        "label_column": "label",
        "classes": ["no", "yes"],
        "missing": "drop",
        "columns": [
            {"name": "age", "kind": "numeric", "range": [0, 100]},
            {"name": "color", "kind": "categorical", "categories": ["red", "green", "blue"]},
            {"name": "code", "kind": "categorical", "categories": ["1", "2", "3", "4"]},
        ],
    }
    path = tmp_path / "decl.json"
    path.write_text(json.dumps(declarations))
    out = tmp_path / "schema.json"
    status, printed, _ = run(capsys, ["schema", "--declarations", str(path), "--out", str(out)])
    assert status == 0
    schema = load_schema_file(out)
    assert all(column.source == "declared" for column in schema.columns)
    assert schema.columns[1].categories == ("red", "green", "blue")  # the declared order
    assert "releases no statistic of any data file" in printed
    # a file that fits the declarations encodes; the schema needed no data to be written
    encoded = encode_with_schema(read_csv_table(data_file(tmp_path)), schema)
    assert encoded.feature_shape == (8,)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--label-column", "label", "--range", "age=9"], 2, "expected COL=LO:HI"),
        (["--label-column", "label", "--range", "age=5:1"], 2, "needs LO < HI"),
        (["--label-column", "label", "--classes", "yes"], 2, "at least two distinct"),
        (["--label-column", "label", "--missing", "zero"], 2, "invalid choice: 'zero'"),
        ([], 2, "--data-file needs --label-column"),
        (["--label-column", "label", "--categorical", "zip"], 1, "--categorical names column"),
        (
            ["--label-column", "label", "--categorical", "age", "--numeric", "age"],
            1,
            "declared both numeric and categorical",
        ),
        (["--label-column", "label", "--range", "age=0:30"], 1, "holds 13 number(s) outside"),
        (
            ["--label-column", "label", "--categories", "color=red,green"],
            1,
            "holds 1 category(ies) that --categories does not list",
        ),
        (["--label-column", "label", "--classes", "no,maybe"], 1, "holds 1 class(es)"),
        (["--label-column", "nope"], 1, "label column 'nope' is not in"),
    ],
)
def test_bad_input_exits_non_zero_and_writes_nothing(tmp_path, capsys, argv, status, message):
    source, out = data_file(tmp_path), tmp_path / "schema.json"
    got, _, error = run(capsys, ["schema", "--data-file", str(source), "--out", str(out), *argv])
    assert got == status
    assert message in error and len(error.strip().splitlines()) == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coordinator.csv"]


@pytest.mark.parametrize(
    ("declarations", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"label_column": "y", "classes": ["a", "b"]}', "declarations need 'columns'"),
        (
            '{"label_column": "y", "classes": ["a", "b"], "columns": [{"name": "x", '
            '"kind": "numeric"}]}',
            "numeric column 'x' needs \"range\": [lo, hi]",
        ),
        (
            '{"label_column": "y", "classes": ["a", "b"], "colums": []}',
            "unknown key(s) colums",
        ),
        (
            '{"label_column": "y", "classes": ["a"], "columns": [{"name": "x", '
            '"kind": "categorical", "categories": ["u"]}]}',
            "at least 2 distinct classes",
        ),
    ],
)
def test_bad_declarations_exit_1_and_write_nothing(tmp_path, capsys, declarations, message):
    path = tmp_path / "decl.json"
    path.write_text(declarations)
    out = tmp_path / "schema.json"
    status, _, error = run(capsys, ["schema", "--declarations", str(path), "--out", str(out)])
    assert status == 1 and message in error and not out.exists()


def test_declarations_exclude_the_fitting_flags(tmp_path, capsys):
    path = tmp_path / "decl.json"
    path.write_text("{}")
    out = tmp_path / "schema.json"
    argv = ["schema", "--declarations", str(path), "--out", str(out), "--label-column", "y"]
    status, _, error = run(capsys, argv)
    assert status == 2 and "--label-column cannot be combined with --declarations" in error
    status, _, error = run(capsys, ["schema", "--out", str(out)])
    assert status == 2 and "one of the arguments --data-file --declarations is required" in error
    assert not out.exists()


def test_errors_about_a_data_file_never_quote_its_values(tmp_path, capsys):
    rows = [["30", "red", "1", "no"], ["31", "red", "2", "yes"], [SECRET, "red", "1", "no"]]
    source = write_csv(tmp_path / "c.csv", rows)
    argv = ["schema", "--data-file", str(source), "--label-column", "label"]
    status, _, error = run(
        capsys, [*argv, "--out", str(tmp_path / "s.json"), "--range", "age=0:100"]
    )
    assert status == 1 and "1 number(s) outside" in error and SECRET not in error


def test_a_shell_pattern_declares_every_matching_column_and_one_matching_none_is_refused(
    tmp_path, capsys
):
    rows = [[str(i % 5), str((i * 3) % 7), "x" if i % 2 else "y"] for i in range(12)]
    source = write_csv(tmp_path / "pixels.csv", rows, header=["p0", "p1", "label"])
    out = tmp_path / "schema.json"
    status, _, _ = run(
        capsys,
        ["schema", "--data-file", str(source), "--label-column", "label"]
        + ["--range", "p*=0:16", "--out", str(out)],
    )
    assert status == 0
    columns = json.loads(out.read_text())["columns"]
    assert [(c["name"], c["range"]) for c in columns] == [("p0", [0.0, 16.0]), ("p1", [0.0, 16.0])]
    missing = tmp_path / "none.json"
    status, _, err = run(
        capsys,
        ["schema", "--data-file", str(source), "--label-column", "label"]
        + ["--range", "q*=0:16", "--out", str(missing)],
    )
    assert status == 1 and "'q*' matches no feature column" in err
    assert not missing.exists()
