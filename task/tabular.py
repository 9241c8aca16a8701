"""Tabular data: reading CSV files, the tabular schema, missing values and encoding.

A table (a user's CSV file, or UCI Adult) becomes arrays through a :class:`TabularSchema`: column
kinds, numeric means/stds and one-hot category lists. A schema can be saved as plain JSON and
agreed in advance, so that every deployment node encodes its own local CSV identically
(:func:`read_csv_table`, :func:`check_table_for_schema`, :func:`apply_missing_policy`,
:func:`encode_with_schema`). :func:`load_csv` and :func:`load_adult` do all of it for a whole
file: read, apply the missing-value policy, split stratified, fit the schema on the training
part and encode, cached in-process (keyed by the file's path, modification time and size, so a
replaced file is read again) with read-only arrays.

Missing values follow one explicit policy (:data:`MISSING_POLICIES`). A cell is missing when it
is blank or "?", when it is NaN or infinite ("nan", "inf", ...), or when it is not a number in a
numeric column. A column is numeric when more of its present cells are finite numbers than are
text, so one bad cell never turns a numeric column into one-hot categories. ``"drop"`` (the
default) leaves out every example with a missing feature value; ``"impute"`` keeps it, with the
training mean in a numeric column and no category (all zeros) in a categorical one. Either way
the counts, per column and never the values, are reported (:class:`MissingValues`).
"""

import csv
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privet.task.containers import ArrayDataset, DataError, TrainTest, freeze
from privet.task.local_files import file_key, not_a_file_reason
from privet.task.splits import stratified_split

__all__ = [
    "ADULT_COLUMNS",
    "ADULT_FILE",
    "ADULT_LABEL",
    "DEFAULT_MISSING_POLICY",
    "MISSING_POLICIES",
    "MISSING_VALUES",
    "SCHEMA_VERSION",
    "CsvTable",
    "FeatureColumn",
    "MissingValues",
    "TabularSchema",
    "apply_missing_policy",
    "check_missing_policy",
    "check_table_for_schema",
    "encode_with_schema",
    "fit_tabular_schema",
    "load_adult",
    "load_csv",
    "read_csv_table",
]

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

_NUMERIC = "numeric"
_CATEGORICAL = "categorical"


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


def check_missing_policy(policy: str) -> str:
    """Return ``policy`` when it is one of :data:`MISSING_POLICIES`, else a DataError."""
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
    check_missing_policy(policy)
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
    train_idx, test_idx = stratified_split(y, test_fraction, seed, table.source)
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
    return freeze(_split_table(table, label_column, partition_column, seed, test_fraction, missing))


def load_csv(
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
        *file_key(file),
        None,
        label_column,
        partition_column,
        int(seed),
        float(test_fraction),
        missing,
    )


def load_adult(
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
        *file_key(file),
        ADULT_COLUMNS,
        label_column or ADULT_LABEL,
        partition_column,
        int(seed),
        float(test_fraction),
        missing,
    )
