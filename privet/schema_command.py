"""`privet schema`: write the tabular schema that every partner of a federation encodes with.

A federation on tables needs one encoding: the same feature columns, categories, scaling and
label classes on every node. The coordinator writes it once with this command and hands the file
to every partner (node config ``schema-file``) and to the server (run config ``schema-file``);
nobody then needs anyone else's data. Two ways to write it:

From a data file the coordinator chooses::

    privet schema --data-file FILE --label-column NAME --out schema.json
        [--categorical COL ...] [--numeric COL ...] [--range COL=LO:HI ...]
        [--categories COL=A,B,... ...] [--classes A,B,...] [--missing drop|impute]
        [--partition-column COL] [--force]

Column kinds are detected as ``privet simulate`` detects them (a column is numeric when most of
its present cells are numbers), and the declarations override them: ``--categorical COL`` makes
COL one-hot with the categories found in FILE (so integer-coded categories do not become one
linear feature); ``--numeric COL`` makes it numeric, scaled by the mean and std fitted on FILE;
``--range COL=LO:HI`` makes it numeric, scaled so that [LO, HI] maps onto [-1, 1], with nothing
fitted (every node then refuses a value outside the range); ``--categories COL=A,B`` makes it
one-hot with exactly those categories, in that order, with nothing fitted; ``--classes A,B``
declares the label classes and their order. Declared values must cover FILE: a label, category
or number of FILE outside a declaration is an error. Names and values are split at "," and
":", so they cannot contain those characters here (write a declarations file instead).

From declarations alone, without any data::

    privet schema --declarations decl.json --out schema.json [--force]

where ``decl.json`` declares everything (``missing`` and ``partition_column`` are optional)::

    {"label_column": "income",
     "classes": ["<=50K", ">50K"],
     "missing": "drop",
     "partition_column": null,
     "columns": [{"name": "age", "kind": "numeric", "range": [17, 90]},
                 {"name": "sex", "kind": "categorical", "categories": ["Female", "Male"]}]}

Every numeric column needs a ``range`` and every categorical one its ``categories``.

The schema is written atomically and never over an existing file without ``--force``. What
is fitted from FILE (means and stds, category lists, the label set) is a release of facts about
that file to every partner who receives the schema; the command says so, and declarations avoid
it. Exit status: 0 written, 1 a problem with the files (nothing written), 2 bad flags.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from privet.task.containers import DataError
from privet.task.tabular import (
    DEFAULT_MISSING_POLICY,
    MISSING_POLICIES,
    SOURCE_DECLARED,
    CsvTable,
    FeatureColumn,
    TabularSchema,
    apply_missing_policy,
    fit_tabular_schema,
    read_csv_table,
    save_schema_file,
    schema_digest,
)

__all__ = ["add_schema_parser", "declared_schema", "fitted_schema", "run_schema"]

EXIT_DATA = 1
_DECLARATION_KEYS = {"label_column", "classes", "missing", "partition_column", "columns"}
_DECLARATION_FLAGS = (
    "label_column",
    "categorical",
    "numeric",
    "range",
    "categories",
    "classes",
    "partition_column",
)


def _range_value(text: str) -> tuple[str, float, float]:
    """Parse ``COL=LO:HI`` (argparse type): a column and a finite range with LO < HI."""
    name, equals, bounds = text.rpartition("=")
    low_text, colon, high_text = bounds.partition(":")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        low = high = math.nan
    if not (name and equals and colon) or not (math.isfinite(low) and math.isfinite(high)):
        raise argparse.ArgumentTypeError(f"expected COL=LO:HI with numbers, got {text!r}")
    if not low < high:
        raise argparse.ArgumentTypeError(f"range of {name!r} needs LO < HI, got {text!r}")
    return name, low, high


def _categories_value(text: str) -> tuple[str, tuple[str, ...]]:
    """Parse ``COL=A,B,...`` (argparse type): a column and its distinct, non-empty categories."""
    name, equals, listed = text.partition("=")
    categories = tuple(item.strip() for item in listed.split(","))
    if not (name and equals) or not all(categories):
        raise argparse.ArgumentTypeError(f"expected COL=A,B,... with no empty names, got {text!r}")
    if len(set(categories)) != len(categories):
        raise argparse.ArgumentTypeError(f"categories of {name!r} list one twice: {text!r}")
    return name, categories


def _classes_value(text: str) -> tuple[str, ...]:
    """Parse ``A,B,...`` (argparse type): at least two distinct, non-empty classes."""
    classes = tuple(item.strip() for item in text.split(","))
    if len(classes) < 2 or not all(classes) or len(set(classes)) != len(classes):
        raise argparse.ArgumentTypeError(
            f"expected at least two distinct, non-empty classes A,B,..., got {text!r}"
        )
    return classes


def add_schema_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `schema` subcommand."""
    parser = commands.add_parser(
        "schema",
        help="write the tabular schema every partner encodes with (schema-file)",
        description=(
            "Write a tabular schema JSON: the label classes, the missing-value policy and how "
            "each feature column is encoded. Fit it on a data file you choose (--data-file, "
            "with declarations overriding what is fitted) or write it from declarations alone "
            "(--declarations decl.json: {label_column, classes, missing?, partition_column?, "
            "columns: [{name, kind: numeric, range: [lo, hi]} | {name, kind: categorical, "
            "categories: [...]}]}). Give the file to every node (node config schema-file) and "
            "to the server (run config schema-file). Scaling constants, category lists and "
            "classes fitted from FILE are facts about FILE that every partner receives; "
            "--range, --categories and --classes declare them instead."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-file", metavar="FILE", help="CSV file (header row) to fit on")
    source.add_argument(
        "--declarations", metavar="FILE", help="JSON declarations of every column (no data)"
    )
    parser.add_argument("--out", metavar="FILE", required=True, help="where to write the schema")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--label-column", metavar="NAME", help="the column to predict")
    parser.add_argument(
        "--categorical",
        metavar="COL",
        action="append",
        default=[],
        help="one-hot with the categories found in FILE (e.g. integer-coded categories)",
    )
    parser.add_argument(
        "--numeric",
        metavar="COL",
        action="append",
        default=[],
        help="numeric, scaled by the mean and std fitted on FILE",
    )
    parser.add_argument(
        "--range",
        metavar="COL=LO:HI",
        action="append",
        default=[],
        type=_range_value,
        help="numeric, [LO, HI] scaled onto [-1, 1]; nothing fitted; nodes refuse values outside "
        "(COL may be a shell pattern such as 'p*', as in every column declaration)",
    )
    parser.add_argument(
        "--categories",
        metavar="COL=A,B,...",
        action="append",
        default=[],
        type=_categories_value,
        help="one-hot with exactly these categories; nothing fitted",
    )
    parser.add_argument(
        "--classes",
        metavar="A,B,...",
        type=_classes_value,
        help="the label classes, in this order (default: those of FILE, sorted)",
    )
    parser.add_argument(
        "--missing",
        choices=MISSING_POLICIES,
        default=None,
        help=f"what every node does with a missing feature value (default: "
        f"{DEFAULT_MISSING_POLICY})",
    )
    parser.add_argument(
        "--partition-column", metavar="COL", help="a column that is neither feature nor label"
    )


def run_schema(args: argparse.Namespace) -> int:
    """Write the schema the flags describe and report it; returns the exit status."""
    from privet.cli import CliError

    if args.declarations is not None:
        given = [
            f"--{name.replace('_', '-')}" for name in _DECLARATION_FLAGS if getattr(args, name)
        ]
        if args.missing is not None:
            given.append("--missing")
        if given:
            raise CliError(
                f"{', '.join(given)} cannot be combined with --declarations, which declares "
                "everything; put them in the declarations file or use --data-file"
            )
    elif not args.label_column:
        raise CliError("--data-file needs --label-column NAME, the column to predict")
    out = Path(args.out).expanduser()
    try:
        if out.exists() and not args.force:
            raise DataError(
                f"{out} already exists; pass --force to replace it, or choose another --out"
            )
        if out.is_dir():
            raise DataError(f"{out} is a folder; pass --out with a file name")
        if args.declarations is not None:
            schema = declared_schema(_read_declarations(Path(args.declarations).expanduser()))
            source = None
        else:
            source = Path(args.data_file).expanduser()
            table = read_csv_table(source)
            features = [
                name
                for name in table.header
                if name not in (args.label_column, args.partition_column)
            ]

            def each(pairs: Iterable[tuple[str, Any]], flag: str) -> dict[str, Any]:
                return {
                    column: value
                    for pattern, value in pairs
                    for column in matching_columns(pattern, features, flag, table.source)
                }

            schema = fitted_schema(
                table,
                args.label_column,
                categorical=list(each(((c, None) for c in args.categorical), "--categorical")),
                numeric=list(each(((c, None) for c in args.numeric), "--numeric")),
                ranges=each(((n, (lo, hi)) for n, lo, hi in args.range), "--range"),
                categories=each(args.categories, "--categories"),
                classes=args.classes,
                missing=args.missing or DEFAULT_MISSING_POLICY,
                partition_column=args.partition_column,
            )
        written = save_schema_file(schema, out)
    except DataError as error:
        print(f"privet: error: {error}", file=sys.stderr)
        return EXIT_DATA
    for line in describe_schema(schema, written, source, classes_fitted=args.classes is None):
        print(line)
    return 0


def describe_schema(
    schema: TabularSchema, path: Path, source: Path | None, *, classes_fitted: bool
) -> list[str]:
    """The lines `privet schema` prints: counts per kind, the digest and what was released.

    ``source`` is the data file fitted on (None: declarations only); ``classes_fitted`` says
    whether the label set came from that file.
    """
    classes_fitted = classes_fitted and source is not None
    numeric = [c for c in schema.columns if c.kind == "numeric"]
    categorical = [c for c in schema.columns if c.kind == "categorical"]
    ranged = sum(1 for c in numeric if c.source == SOURCE_DECLARED)
    listed = sum(1 for c in categorical if c.source == SOURCE_DECLARED)
    fitted_where = f"fitted from {source}" if source is not None else "fitted"
    lines = [
        f"Wrote {path} (tabular schema version 2, {schema.width} features)",
        f"numeric columns: {len(numeric)} ({ranged} with a declared range, "
        f"{len(numeric) - ranged} scaled by mean/std {fitted_where})",
        f"categorical columns: {len(categorical)} ({listed} with declared categories, "
        f"{len(categorical) - listed} with categories {fitted_where})",
        f"label column '{schema.label_column}': {schema.num_classes} classes "
        f"({fitted_where if classes_fitted else 'declared'})",
        f"missing values: {schema.missing}",
        f"digest: sha256:{schema_digest(schema)}",
    ]
    released = []
    if len(numeric) - ranged:
        released.append(f"the scaling constants of {len(numeric) - ranged} numeric column(s)")
    if len(categorical) - listed:
        released.append(f"the category lists of {len(categorical) - listed} column(s)")
    if classes_fitted:
        released.append("the label set")
    if source is None or not released:
        lines.append(
            "Privacy: everything in this schema was declared; it releases no statistic of any "
            "data file."
        )
    else:
        lines.append(
            f"Privacy: {_and(released)} were fitted from {source}: they are a release of "
            "facts about that file, shared with every partner who receives this schema. "
            "Declaring numeric columns with --range COL=LO:HI avoids releasing their "
            "statistics (and --categories / --classes declare the lists instead)."
        )
    return lines


def _and(items: list[str]) -> str:
    """Join phrases as English does: "a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def matching_columns(pattern: str, columns: Sequence[str], flag: str, source: str) -> list[str]:
    """The feature columns a declaration names: itself, or every match of a shell pattern.

    ``p*`` declares p0, p1, ... at once (`fnmatch`, case-sensitive), so a file of 64 pixel columns
    needs one ``--range 'p*=0:16'``. A name that is not a pattern is returned as it is (a missing
    column is reported by the fitting); a pattern that matches no feature column is an error.
    """
    if not any(char in pattern for char in "*?["):
        return [pattern]
    matched = [name for name in columns if fnmatch.fnmatchcase(name, pattern)]
    if not matched:
        raise DataError(
            f"{flag} pattern '{pattern}' matches no feature column of {source}; check the pattern"
        )
    return matched


def _check_names(table: CsvTable, names: Iterable[str], flag: str) -> None:
    """Every declared column must be a column of the file."""
    for name in names:
        if name not in table.header:
            raise DataError(
                f"{flag} names column '{name}', which {table.source} does not have (columns: "
                f"{', '.join(table.header)}); pass one of those names"
            )


def fitted_schema(
    table: CsvTable,
    label_column: str,
    *,
    categorical: Iterable[str] = (),
    numeric: Iterable[str] = (),
    ranges: Mapping[str, tuple[float, float]] | None = None,
    categories: Mapping[str, tuple[str, ...]] | None = None,
    classes: tuple[str, ...] | None = None,
    missing: str = DEFAULT_MISSING_POLICY,
    partition_column: str | None = None,
) -> TabularSchema:
    """A schema fitted on ``table`` with the declarations overriding what would be fitted.

    Kinds are detected, then fixed by the declarations; the missing-value policy is applied
    before numeric means and stds are fitted (as the server does). A declared range, category
    list or class list that does not cover the file is an error with a count, never a value.
    """
    ranges = dict(ranges or {})
    categories = dict(categories or {})
    kinds: dict[str, str] = {}
    for names, kind, flag in (
        (categorical, "categorical", "--categorical"),
        (categories, "categorical", "--categories"),
        (numeric, "numeric", "--numeric"),
        (ranges, "numeric", "--range"),
    ):
        _check_names(table, names, flag)
        for name in names:
            if name in (label_column, partition_column):
                raise DataError(
                    f"{flag} names '{name}', the label or partition column; declare feature "
                    "columns only"
                )
            if kinds.get(name, kind) != kind:
                raise DataError(
                    f"column '{name}' is declared both numeric and categorical; declare it once"
                )
            kinds[name] = kind
    whole = fit_tabular_schema(table, label_column, partition_column=partition_column, kinds=kinds)
    kept, report = apply_missing_policy(table, whole, missing)
    if not kept.rows:
        raise DataError(
            f"{report.describe(table.source)}, which leaves no rows to fit on; pass --missing "
            "impute or fill in the missing values"
        )
    fitted = fit_tabular_schema(
        kept,
        label_column,
        partition_column=partition_column,
        kinds={column.name: column.kind for column in whole.columns},
    )
    columns: list[FeatureColumn] = []
    for column in fitted.columns:
        if column.name in ranges:
            low, high = ranges[column.name]
            _check_range(kept, column.name, low, high)
            columns.append(FeatureColumn(column.name, "numeric", range=(low, high)))
        elif column.name in categories:
            declared = categories[column.name]
            outside = [c for c in column.categories if c not in declared]
            if outside:
                raise DataError(
                    f"column '{column.name}' of {table.source} holds {len(outside)} "
                    "category(ies) that --categories does not list; list every category"
                )
            columns.append(
                FeatureColumn(
                    column.name, "categorical", categories=declared, source=SOURCE_DECLARED
                )
            )
        else:
            columns.append(column)
    if classes is not None:
        outside = [label for label in fitted.classes if label not in classes]
        if outside:
            raise DataError(
                f"label column '{label_column}' of {table.source} holds {len(outside)} "
                "class(es) that --classes does not list; list every class"
            )
    return TabularSchema(
        label_column=label_column,
        classes=classes if classes is not None else fitted.classes,
        columns=tuple(columns),
        partition_column=partition_column,
        missing=missing,
    )


def _check_range(table: CsvTable, name: str, low: float, high: float) -> None:
    """Every number of column ``name`` must lie in [low, high]: nodes refuse values outside."""
    index = table.column_index(name)
    outside = 0
    for row in table.rows:
        try:
            value = float(row[index])
        except ValueError:
            continue
        if math.isfinite(value) and not low <= value <= high:
            outside += 1
    if outside:
        raise DataError(
            f"column '{name}' of {table.source} holds {outside} number(s) outside --range "
            f"{low:g}:{high:g}; widen the range so that it covers the data"
        )


def _read_declarations(path: Path) -> Any:
    """The declarations file as JSON; a one-line error when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"declarations file {path} does not exist; pass --declarations FILE"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"cannot read declarations file {path} ({type(error).__name__}); check the file"
        ) from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"declarations file {path} is not valid JSON ({error.msg} at line {error.lineno}); "
            "fix it (see `privet schema --help`)"
        ) from None


def declared_schema(declarations: Any) -> TabularSchema:
    """A schema from declarations alone (the format in this module's docstring)."""
    if not isinstance(declarations, Mapping):
        raise DataError("declarations must be a JSON object; see `privet schema --help`")
    unknown = sorted(set(declarations) - _DECLARATION_KEYS)
    if unknown:
        raise DataError(
            f"declarations have unknown key(s) {', '.join(unknown)}; use "
            f"{', '.join(sorted(_DECLARATION_KEYS))}"
        )
    for key in ("label_column", "classes", "columns"):
        if key not in declarations:
            raise DataError(f"declarations need '{key}'; see `privet schema --help`")
    label = declarations["label_column"]
    classes = declarations["classes"]
    raw_columns = declarations["columns"]
    if not isinstance(label, str) or not label:
        raise DataError("declarations: label_column must be a non-empty string")
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise DataError("declarations: classes must be a list of non-empty strings")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise DataError("declarations: columns must be a non-empty list of columns")
    columns = [_declared_column(item) for item in raw_columns]
    missing = declarations.get("missing", DEFAULT_MISSING_POLICY)
    partition = declarations.get("partition_column")
    if partition is not None and not isinstance(partition, str):
        raise DataError("declarations: partition_column must be a string or null")
    return TabularSchema(
        label_column=label,
        classes=tuple(classes),
        columns=tuple(columns),
        partition_column=partition,
        missing=str(missing),
    )


def _declared_column(item: Any) -> FeatureColumn:
    """One declared column: numeric with a range, or categorical with its categories."""
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise DataError("declarations: each column needs a string 'name'")
    name, kind = item["name"], item.get("kind")
    if kind == "numeric":
        bounds = item.get("range")
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        ):
            raise DataError(
                f"declarations: numeric column '{name}' needs \"range\": [lo, hi] (without a "
                "data file nothing can be fitted)"
            )
        return FeatureColumn(name, "numeric", range=(float(bounds[0]), float(bounds[1])))
    if kind == "categorical":
        listed = item.get("categories")
        if not isinstance(listed, list) or not all(isinstance(c, str) and c for c in listed):
            raise DataError(
                f"declarations: categorical column '{name}' needs \"categories\": a list of "
                "non-empty strings"
            )
        return FeatureColumn(name, "categorical", categories=tuple(listed), source=SOURCE_DECLARED)
    raise DataError(
        f"declarations: column '{name}' has kind {kind!r}; use 'numeric' or 'categorical'"
    )
