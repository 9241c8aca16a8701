"""Tabular data: reading CSV files, the tabular schema, missing values and encoding.

A table (a user's CSV file, or UCI Adult) becomes arrays through a :class:`TabularSchema`: the
label column and its classes, the missing-value policy, and per feature column its kind and
either numeric scaling constants (fitted mean/std, or a declared range mapped onto [-1, 1]) or
a one-hot category list (fitted or declared).

A schema is agreed in advance as a JSON file (:func:`save_schema_file`, :func:`load_schema_file`;
``privet schema`` writes one), so that every deployment node encodes its own CSV identically
without reading anyone else's data: :func:`check_table_against_schema` refuses a file that does
not fit it exactly, then :func:`apply_missing_policy` and :func:`encode_with_schema`.
:func:`schema_digest` identifies a schema's content, whatever the file's formatting.

Schema JSON, version 2 (version 1, without ``missing``, ``source`` and ``range``, is still read)::

    {"schema_version": 2, "label_column": "income", "classes": ["<=50K", ">50K"],
     "partition_column": null, "missing": "drop",
     "columns": [
       {"name": "age", "kind": "numeric", "source": "data", "mean": 38.4, "std": 13.1},
       {"name": "hours", "kind": "numeric", "source": "declared", "range": [0, 100]},
       {"name": "sex", "kind": "categorical", "source": "declared",
        "categories": ["Female", "Male"]}]}

:func:`load_csv` and :func:`load_adult` load a run's files: without a schema file they fit the
schema on the data file (column kinds on the whole file, numeric constants on its training part)
and split it stratified; with one, they encode with it (its ``missing`` policy must be the
run's); with a test file, the test set is exactly that whole file. Results are cached
in-process (keyed by the files' paths, modification times and sizes, so a replaced file is read
again) with read-only arrays.

Missing values follow one explicit policy (:data:`MISSING_POLICIES`). A cell is missing when it
is blank or "?", when it is NaN or infinite ("nan", "inf", ...), or when it is not a number in a
numeric column. A column is numeric when more of its present cells are finite numbers than are
text, so one bad cell never turns a numeric column into one-hot categories. ``"drop"`` (the
default) leaves out every example with a missing feature value; ``"impute"`` keeps it, with the
training mean in a numeric column and no category (all zeros) in a categorical one. Either way
the counts, per column and never the values, are reported (:class:`MissingValues`).
"""

import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
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
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "SOURCES",
    "SOURCE_DATA",
    "SOURCE_DECLARED",
    "CsvTable",
    "FeatureColumn",
    "MissingValues",
    "TabularSchema",
    "apply_missing_policy",
    "check_missing_policy",
    "check_table_against_schema",
    "check_table_for_schema",
    "encode_with_schema",
    "fit_tabular_schema",
    "load_adult",
    "load_csv",
    "load_schema_file",
    "read_csv_table",
    "save_schema_file",
    "schema_digest",
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

SCHEMA_VERSION = 2
"""Schema version written by :meth:`TabularSchema.to_json`.

2 added the missing-value policy, declared numeric ranges and each column's ``source``.
"""

READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
"""Schema versions :meth:`TabularSchema.from_json` reads."""

SOURCE_DATA = "data"
"""A column whose constants or categories were fitted on a data file (facts about that file)."""
SOURCE_DECLARED = "declared"
"""A column whose range or categories were declared by the coordinator, not fitted."""
SOURCES: tuple[str, ...] = (SOURCE_DATA, SOURCE_DECLARED)

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
    """How one input column becomes features: numeric (1 scaled value) or one-hot.

    Numeric: missing → ``mean``, then (x - mean) / std. The constants are fitted on data
    (``source`` "data") or follow from a declared ``range`` (lo, hi) (``source`` "declared"):
    mean is the range's midpoint and std its half-width, so the range maps onto [-1, 1] and no
    statistic of anyone's data is released. Categorical: one indicator per entry of
    ``categories`` (in order), fitted on data or declared; a missing value encodes as all zeros.
    """

    name: str
    kind: str
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()
    source: str = SOURCE_DATA
    range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        """Validate the kind and parameters, so a hand-edited schema fails early."""
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"schema column name must be a non-empty string, got {self.name!r}")
        if self.kind not in (_NUMERIC, _CATEGORICAL):
            raise DataError(
                f"schema column '{self.name}' has kind {self.kind!r}; use 'numeric' or "
                "'categorical'"
            )
        if self.source not in SOURCES:
            raise DataError(
                f"schema column '{self.name}' has source {self.source!r}; use 'data' or 'declared'"
            )
        if self.range is not None:
            self._use_range()
        elif self.kind == _NUMERIC and self.source == SOURCE_DECLARED:
            raise DataError(
                f"schema column '{self.name}' is a declared numeric column without a range; "
                'give it "range": [lo, hi]'
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

    def _use_range(self) -> None:
        """Check a declared range and derive the scaling constants from it."""
        if self.kind != _NUMERIC:
            raise DataError(
                f"schema column '{self.name}' is categorical but has a range; ranges are for "
                "numeric columns"
            )
        low, high = (float(value) for value in self.range or ())
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise DataError(
                f"schema column '{self.name}' has range [{low:g}, {high:g}]; a range needs "
                "finite bounds with lo < hi"
            )
        object.__setattr__(self, "range", (low, high))
        object.__setattr__(self, "source", SOURCE_DECLARED)
        object.__setattr__(self, "mean", (low + high) / 2.0)
        object.__setattr__(self, "std", (high - low) / 2.0)

    @property
    def width(self) -> int:
        """Number of feature values this column produces."""
        return 1 if self.kind == _NUMERIC else len(self.categories)

    def to_json(self) -> dict[str, Any]:
        """The column as a plain dict: fitted constants, a declared range, or categories."""
        item: dict[str, Any] = {"name": self.name, "kind": self.kind, "source": self.source}
        if self.kind == _CATEGORICAL:
            item["categories"] = list(self.categories)
        elif self.range is not None:
            item["range"] = [self.range[0], self.range[1]]
        else:
            item["mean"] = self.mean
            item["std"] = self.std
        return item


@dataclass(frozen=True)
class TabularSchema:
    """Everything needed to encode a table identically on every node.

    ``columns`` lists the feature columns in encoding order; ``classes`` lists the label
    strings, whose positions are the integer labels; ``missing`` is the missing-value policy
    (:data:`MISSING_POLICIES`) every node applies with it. Save it with :meth:`to_json` (plain
    dicts/lists, JSON-serialisable; always the current :data:`SCHEMA_VERSION`) and restore it
    with :meth:`from_json` (which also reads version 1); ``schema_version`` records the version
    it was read as.
    """

    label_column: str
    classes: tuple[str, ...]
    columns: tuple[FeatureColumn, ...]
    partition_column: str | None = None
    schema_version: int = SCHEMA_VERSION
    missing: str = DEFAULT_MISSING_POLICY

    def __post_init__(self) -> None:
        """Validate class and column lists and the missing-value policy."""
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise DataError(
                f"schema needs at least 2 distinct classes, got {len(self.classes)} "
                f"({len(set(self.classes))} distinct); list every class once"
            )
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names) or self.label_column in names:
            raise DataError(
                "schema column names must be distinct and must not include the label column; "
                "fit the schema again"
            )
        if self.partition_column is not None and (
            self.partition_column in names or self.partition_column == self.label_column
        ):
            raise DataError(
                f"schema partition column '{self.partition_column}' is also a feature or the "
                "label column; name a column that is neither"
            )
        if self.missing not in MISSING_POLICIES:
            raise DataError(
                f"schema missing-value policy {self.missing!r} is not one of "
                f'{", ".join(MISSING_POLICIES)}; fix "missing" in the schema'
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
        """Return the schema as plain dicts and lists (for json.dumps), in the current version."""
        return {
            "schema_version": SCHEMA_VERSION,
            "label_column": self.label_column,
            "partition_column": self.partition_column,
            "classes": list(self.classes),
            "missing": self.missing,
            "columns": [column.to_json() for column in self.columns],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TabularSchema":
        """Rebuild a schema from :meth:`to_json` output (version 1 or 2), checking field types.

        Version 1 has no ``missing`` (it reads as "drop") and only fitted numeric columns.
        """
        if not isinstance(data, Mapping):
            raise DataError(f"a tabular schema must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
            readable = ", ".join(str(v) for v in READABLE_SCHEMA_VERSIONS)
            raise DataError(
                f"tabular schema version {version!r:.20} is not supported (this release reads "
                f"versions {readable}); re-create the schema with this release"
            )
        try:
            label_column = data["label_column"]
            classes = data["classes"]
            raw_columns = data["columns"]
            partition_column = data.get("partition_column")
            missing = data.get("missing", DEFAULT_MISSING_POLICY) if version >= 2 else None
            if not isinstance(label_column, str) or not isinstance(classes, list):
                raise TypeError("label_column must be a string and classes a list")
            if not all(isinstance(c, str) for c in classes):
                raise TypeError("classes must be strings")
            if partition_column is not None and not isinstance(partition_column, str):
                raise TypeError("partition_column must be a string or null")
            if missing is not None and not isinstance(missing, str):
                raise TypeError("missing must be a string")
            if not isinstance(raw_columns, list):
                raise TypeError("columns must be a list")
            columns = tuple(_column_from_json(item, version) for item in raw_columns)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(
                f"tabular schema is malformed ({type(exc).__name__}: {exc}); re-create it with "
                "`privet schema`"
            ) from exc
        return cls(
            label_column=label_column,
            classes=tuple(classes),
            columns=columns,
            partition_column=partition_column,
            schema_version=int(version),
            missing=missing or DEFAULT_MISSING_POLICY,
        )


def _number(value: Any, what: str) -> float:
    """A JSON number as a float; booleans and strings are not numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number")
    return float(value)


def _column_from_json(item: Any, version: int = SCHEMA_VERSION) -> FeatureColumn:
    """Rebuild one :class:`FeatureColumn` from its JSON dict (schema version ``version``)."""
    if not isinstance(item, Mapping):
        raise TypeError("each column must be an object")
    name = item["name"]
    if not isinstance(name, str):
        raise TypeError("column name must be a string")
    kind = item["kind"]
    source = item.get("source", SOURCE_DATA) if version >= 2 else SOURCE_DATA
    if not isinstance(source, str):
        raise TypeError(f"column {name!r}: source must be a string")
    if kind == _NUMERIC:
        if version >= 2 and "range" in item:
            bounds = item["range"]
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise TypeError(f"column {name!r}: range must be [lo, hi]")
            low, high = (_number(bound, f"column {name!r}: range bound") for bound in bounds)
            if source != SOURCE_DECLARED:
                raise TypeError(f"column {name!r}: a range needs source 'declared'")
            return FeatureColumn(name, _NUMERIC, source=source, range=(low, high))
        mean = _number(item["mean"], f"column {name!r}: mean")
        std = _number(item["std"], f"column {name!r}: std")
        return FeatureColumn(name, _NUMERIC, mean=mean, std=std, source=source)
    categories = item["categories"] if kind == _CATEGORICAL else None
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise TypeError(f"column {name!r}: categories must be a list of strings")
    return FeatureColumn(name, str(kind), categories=tuple(categories), source=source)


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


def check_table_against_schema(table: CsvTable, schema: TabularSchema) -> None:
    """Refuse a file that does not fit an agreed schema exactly: the strict check of a node.

    The file's columns must be the schema's feature columns and its label column, in any
    order (the schema's partition column may be present or not, and is not a feature). Every
    present category must be one of its column's categories, every label one of the classes,
    and every number in a column with a declared range inside that range. The first problem
    found is a one-line DataError naming the file, the column, how many rows and the first
    line; never a cell's value, since a node's error travels to the server's log. Missing
    values are not problems here: :func:`apply_missing_policy` handles them.
    """
    optional = {schema.partition_column} if schema.partition_column is not None else set()
    expected = [column.name for column in schema.columns] + [schema.label_column]
    absent = [name for name in expected if name not in table.header]
    if absent:
        raise DataError(
            f"{table.source} lacks column '{absent[0]}' of the schema ({len(absent)} schema "
            f"column(s) missing); give the file exactly the schema's {len(schema.columns)} "
            f"feature columns and the label column '{schema.label_column}'"
        )
    extra = [name for name in table.header if name not in expected and name not in optional]
    if extra:
        raise DataError(
            f"{table.source} has column '{extra[0]}' that the schema does not have "
            f"({len(extra)} extra column(s)); drop it from the file or agree a new schema"
        )
    for column in schema.columns:
        index = table.column_index(column.name, "schema column")
        if column.kind == _CATEGORICAL:
            known = set(column.categories)
            lines = [
                line
                for row, line in zip(table.rows, table.line_numbers, strict=True)
                if not _is_absent(row[index], numeric=False) and row[index] not in known
            ]
            if lines:
                raise DataError(
                    f"{table.source}: column '{column.name}' holds {len(lines)} value(s) that "
                    f"are not among the schema's {len(column.categories)} categories (first on "
                    f"line {lines[0]}); fix or drop those rows, or have the coordinator add "
                    "the category to the schema"
                )
        elif column.range is not None:
            low, high = column.range
            lines = []
            for row, line in zip(table.rows, table.line_numbers, strict=True):
                value = _parse_float(row[index])
                if value is not None and not low <= value <= high:
                    lines.append(line)
            if lines:
                raise DataError(
                    f"{table.source}: column '{column.name}' holds {len(lines)} number(s) "
                    f"outside its declared range [{low:g}, {high:g}] (first on line {lines[0]}); "
                    "fix or drop those rows, or have the coordinator widen the range"
                )
    label_index = table.column_index(schema.label_column, "label column")
    classes = set(schema.classes)
    strangers = [
        line
        for label, line in zip(_label_strings(table, label_index), table.line_numbers, strict=True)
        if label not in classes
    ]
    if strangers:
        raise DataError(
            f"{table.source}: label column '{schema.label_column}' holds {len(strangers)} "
            f"label(s) that are not among the schema's classes ({', '.join(schema.classes)}) "
            f"(first on line {strangers[0]}); fix or drop those rows"
        )


def schema_digest(schema: TabularSchema) -> str:
    """SHA-256 (hex) of the schema's canonical JSON: the same for the same content.

    The canonical form is :meth:`TabularSchema.to_json` with sorted keys and no whitespace, so
    neither a file's formatting nor its key order (nor having been written as version 1)
    changes the digest, while any change to a class, column, constant or policy does. Nodes
    and the server can compare digests to prove they encode with the same schema.
    """
    canonical = json.dumps(
        schema.to_json(),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_SCHEMA_FIX = "pass the schema JSON the coordinator wrote with `privet schema`"


def load_schema_file(path: str | Path) -> TabularSchema:
    """Read a schema JSON file (version 1 or 2); a one-line DataError names any problem."""
    file = Path(path).expanduser()
    problem = not_a_file_reason(file)
    if problem is not None:
        raise DataError(f"schema file {file} {problem}; {_SCHEMA_FIX}")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(
            f"cannot read schema file {file} ({exc.strerror or type(exc).__name__}); check its "
            "permissions"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"schema file {file} is not UTF-8 text; {_SCHEMA_FIX}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"schema file {file} is not valid JSON ({exc.msg} at line {exc.lineno}); {_SCHEMA_FIX}"
        ) from exc
    try:
        return TabularSchema.from_json(data)
    except DataError as exc:
        raise DataError(f"schema file {file}: {exc}") from exc


def save_schema_file(schema: TabularSchema, path: str | Path) -> Path:
    """Write ``schema`` as indented JSON to ``path`` atomically; return the path written.

    The text goes to a temporary file in the same folder, is flushed to disk and then renamed
    over ``path`` (``os.replace``), so a reader never sees half a schema and a failed write
    leaves any earlier file as it was.
    """
    file = Path(path).expanduser()
    text = json.dumps(schema.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    folder = file.parent if str(file.parent) else Path(".")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise DataError(
            f"cannot write schema file {file} ({exc.strerror or type(exc).__name__}); choose a "
            "folder that exists and that you can write to"
        ) from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, file)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DataError(
                f"cannot write schema file {file} ({exc.strerror or type(exc).__name__}); "
                "check the folder's permissions and free space"
            ) from exc
        raise
    return file


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
    missing: str,
    role: str,
) -> TrainTest:
    """Apply the missing-value policy, split stratified by label, fit the schema, and encode.

    Column kinds are decided on the whole file, before any row is dropped, and kept.
    """
    whole = fit_tabular_schema(table, label_column, partition_column=partition_column)
    table, report = apply_missing_policy(table, whole, missing)
    _require_rows(table, report, "data")
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
    schema = dataclasses.replace(schema, missing=missing)
    encoded = encode_with_schema(table, schema)
    return TrainTest(
        train=encoded.subset(train_idx),
        test=encoded.subset(test_idx),
        kind="tabular",
        groups=None if groups is None else groups[train_idx],
        schema=schema,
        missing=report,
        test_source=_held_out(test_fraction, role, table.source, len(test_idx), len(encoded)),
    )


def _held_out(test_fraction: float, role: str, source: str, test: int, total: int) -> str:
    """The evaluation set of a split file, in words: what fraction of which file, how many."""
    return f"held-out {test_fraction * 100:g}% of {role} {source} ({test} of {total} examples)"


def _require_rows(table: CsvTable, report: MissingValues, what: str) -> None:
    """A file that the missing-value policy empties is an error that says so and what to do."""
    if not table.rows:
        raise DataError(
            f"{report.describe(table.source)}, which leaves no {what}; fill in the missing "
            "values or pass --missing impute (with a schema file: one whose missing is 'impute')"
        )


def _read_table(path: Path, column_names: tuple[str, ...] | None) -> CsvTable:
    """Read a table file; a header-less format's file that has a header anyway loses that row."""
    table = read_csv_table(path, column_names=column_names)
    if column_names is not None and table.rows[0] == table.header:
        table = CsvTable(table.source, table.header, table.rows[1:], table.line_numbers[1:])
        if not table.rows:
            raise DataError(f"data file {path} has no data rows; pass a file with data rows")
    return table


def _encode_test_file(
    path: Path, schema: TabularSchema, column_names: tuple[str, ...] | None
) -> tuple[ArrayDataset, MissingValues, str]:
    """The whole test file, strictly checked and encoded with ``schema`` under its policy.

    Returns the examples, the missing-value counts and the evaluation set in words.
    """
    table = _read_table(path, column_names)
    check_table_against_schema(table, schema)
    table, report = apply_missing_policy(table, schema, schema.missing)
    _require_rows(table, report, "test examples")
    examples = encode_with_schema(table, schema)
    dropped = (
        f"; {report.dropped_rows} of {report.rows} rows dropped for missing values"
        if report.dropped_rows
        else ""
    )
    return examples, report, f"test-file {table.source} ({len(examples)} examples{dropped})"


def _agree_with_schema(
    schema: TabularSchema,
    schema_file: Path,
    label_column: str | None,
    partition_column: str | None,
    missing: str,
) -> None:
    """The run's data options must not contradict the schema it encodes with."""
    if label_column is not None and label_column != schema.label_column:
        raise DataError(
            f"the run's label-column '{label_column}' is not the label column "
            f"'{schema.label_column}' of schema file {schema_file}; drop label-column (the "
            "schema names it) or use the schema written for this data"
        )
    if partition_column is not None and partition_column != schema.partition_column:
        raise DataError(
            f"the run's partition-column '{partition_column}' is not the partition column of "
            f"schema file {schema_file} ({schema.partition_column or 'none'}); write the schema "
            "with --partition-column, or drop partition-column"
        )
    if missing != schema.missing:
        raise DataError(
            f"schema file {schema_file} handles missing values by '{schema.missing}' but the "
            f"run's missing is '{missing}'; set missing='{schema.missing}' (every node applies "
            "the schema's policy)"
        )


def _empty_examples(schema: TabularSchema) -> ArrayDataset:
    """No examples, with the schema's width and classes: a server that only evaluates."""
    return ArrayDataset(
        np.zeros((0, schema.width), dtype=np.float32),
        np.zeros(0, dtype=np.int64),
        schema.num_classes,
    )


FileKey = tuple[Path, int, int]
"""(resolved path, mtime_ns, size): a file as a cache key that notices a replaced file."""


@functools.lru_cache(maxsize=8)
def _load_table_cached(
    data: FileKey | None,
    test: FileKey | None,
    schema_key: FileKey | None,
    column_names: tuple[str, ...] | None,
    label_column: str | None,
    partition_column: str | None,
    seed: int,
    test_fraction: float,
    missing: str,
    role: str,
) -> TrainTest:
    """Read, split or pair, and encode table files once per process and argument set.

    The files' modification times and sizes are part of the cache key only, so that a replaced
    file is read again.
    """
    return freeze(
        _load_tables(
            None if data is None else data[0],
            None if test is None else test[0],
            None if schema_key is None else schema_key[0],
            column_names,
            label_column,
            partition_column,
            seed,
            test_fraction,
            missing,
            role,
        )
    )


def _load_tables(
    data_file: Path | None,
    test_file: Path | None,
    schema_file: Path | None,
    column_names: tuple[str, ...] | None,
    label_column: str | None,
    partition_column: str | None,
    seed: int,
    test_fraction: float,
    missing: str,
    role: str,
) -> TrainTest:
    """The training and test examples of a tabular run, from whichever files it names.

    Without a schema file the schema is fitted on the data file (as before); with one, every
    file is strictly checked against it (:func:`check_table_against_schema`) and encoded with
    it. Without a test file the data file is split stratified; with one, the test set is that
    whole file and the data file (if any) all trains. A schema and a test file without a data
    file make an empty training set of the schema's width: a server that only evaluates.
    """
    schema = None if schema_file is None else load_schema_file(schema_file)
    if schema is not None:
        assert schema_file is not None
        _agree_with_schema(schema, schema_file, label_column, partition_column, missing)
        label_column = schema.label_column
    table = None if data_file is None else _read_table(data_file, column_names)
    if label_column is None:
        raise DataError("a tabular data set needs a label column; pass --label-column NAME")
    if table is None:
        if schema is None or test_file is None:
            raise DataError(
                "a tabular run needs a data file, or a schema-file and a test-file; pass "
                "--data-file FILE.csv"
            )
        test, report, source = _encode_test_file(test_file, schema, column_names)
        return TrainTest(
            train=_empty_examples(schema),
            test=test,
            kind="tabular",
            schema=schema,
            missing=report,
            test_source=source,
        )
    if schema is None and test_file is None:
        return _split_table(
            table, label_column, partition_column, seed, test_fraction, missing, role
        )
    if schema is None:
        whole = fit_tabular_schema(table, label_column, partition_column=partition_column)
        table, report = apply_missing_policy(table, whole, missing)
        _require_rows(table, report, "data")
        fitted = fit_tabular_schema(
            table,
            label_column,
            partition_column=partition_column,
            kinds={column.name: column.kind for column in whole.columns},
        )
        schema = dataclasses.replace(fitted, missing=missing)
    else:
        check_table_against_schema(table, schema)
        table, report = apply_missing_policy(table, schema, schema.missing)
        _require_rows(table, report, "data")
    encoded = encode_with_schema(table, schema)
    groups = _group_values(table, partition_column) if partition_column is not None else None
    if test_file is None:
        train_idx, test_idx = stratified_split(encoded.labels, test_fraction, seed, table.source)
        return TrainTest(
            train=encoded.subset(train_idx),
            test=encoded.subset(test_idx),
            kind="tabular",
            groups=None if groups is None else groups[train_idx],
            schema=schema,
            missing=report,
            test_source=_held_out(test_fraction, role, table.source, len(test_idx), len(encoded)),
        )
    test, _, source = _encode_test_file(test_file, schema, column_names)
    return TrainTest(
        train=encoded,
        test=test,
        kind="tabular",
        groups=groups,
        schema=schema,
        missing=report,
        test_source=source,
    )


def _existing(path: str | None, role: str, fix: str) -> FileKey | None:
    """The cache key of a file the run names, or None when it names none; an error if absent."""
    if path is None:
        return None
    file = Path(path).expanduser()
    problem = not_a_file_reason(file)
    if problem is not None:
        raise DataError(f"{role} {file} {problem}; {fix}")
    return file_key(file)


def load_csv(
    data_file: str | None,
    label_column: str | None,
    partition_column: str | None,
    seed: int,
    test_fraction: float,
    missing: str,
    *,
    schema_file: str | None = None,
    test_file: str | None = None,
) -> TrainTest:
    """Load a user CSV file with a header row, with an optional schema file and test file.

    See :func:`_load_tables` for what the schema and test files change.
    """
    if data_file is None and (schema_file is None or test_file is None):
        raise DataError(
            "dataset 'csv' needs --data-file with the path of a CSV file (or, on a server that "
            "only evaluates, schema-file and test-file)"
        )
    if label_column is None and schema_file is None:
        raise DataError("dataset 'csv' needs --label-column naming the column to predict")
    return _load_table_cached(
        _existing(
            data_file,
            "CSV file",
            "pass --data-file with the path of a CSV file that has a header row",
        ),
        _existing(test_file, "test file", "pass test-file with the path of a CSV file"),
        _existing(schema_file, "schema file", _SCHEMA_FIX),
        None,
        label_column,
        partition_column,
        int(seed),
        float(test_fraction),
        missing,
        "data-file",
    )


def load_adult(
    data_dir: str | None,
    data_file: str | None,
    label_column: str | None,
    partition_column: str | None,
    seed: int,
    test_fraction: float,
    missing: str,
    *,
    schema_file: str | None = None,
    test_file: str | None = None,
) -> TrainTest:
    """Load UCI Adult (``adult.data``, no header) through the CSV code path.

    A ``test_file`` in Adult's format (a header row optional) may replace the split; with a
    ``schema_file`` too, the training file may be left out (a server that only evaluates).
    """
    fix = f"pass --data-dir pointing at a folder with {ADULT_FILE} (the UCI Adult training file)"
    if data_file is not None:
        file: str | None = data_file
        role = "data-file"
    elif data_dir is not None:
        file = str(Path(data_dir).expanduser() / ADULT_FILE)
        role = "data-dir file"
    elif schema_file is not None and test_file is not None:
        file, role = None, "data-file"
    else:
        raise DataError(f"dataset 'adult' needs its file: {fix}")
    return _load_table_cached(
        _existing(file, "UCI Adult file", fix),
        _existing(test_file, "test file", "pass test-file with the path of a UCI Adult file"),
        _existing(schema_file, "schema file", _SCHEMA_FIX),
        ADULT_COLUMNS,
        label_column or (None if schema_file is not None else ADULT_LABEL),
        partition_column,
        int(seed),
        float(test_fraction),
        missing,
        role,
    )
