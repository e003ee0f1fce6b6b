"""The checks an ingest applies: column kinds, the target and task, agreement between objects, schema drift.

Errors are DataErrors that name the object, the column and the reason."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ml.features import NON_FINITE_WORDS, NUMBER_PATTERN
from ml.ingest.config import IngestConfig
from ml.settings import LakeSettings
from ml.storage import DataError, exists, latest_snapshot_uri, read_json

MAX_CLASSES = 100


def column_kinds(table: Any, where: str, max_bad_share: float) -> tuple[dict[str, str], list[str]]:
    """Classify each column as numeric or categorical; string columns that are mostly numbers are numeric with the
    rest treated as missing, unless more than `max_bad_share` of them are not numbers (an error naming the column)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kinds: dict[str, str] = {}
    warnings: list[str] = []
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_null(column.type) or column.null_count == len(column) or _all_nan(column):
            kinds[name] = "empty"
            continue
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
            kinds[name] = "numeric"
            continue
        strings = pc.cast(column, pa.large_string())
        # Each distinct text is checked once: a feature's texts repeat (categories, a few spellings of missing), and
        # the regular expression over every row was most of an ingest's checking time.
        texts, times = pc.value_counts(strings).flatten()
        present = len(strings) - strings.null_count
        parsed = int(pc.sum(pc.if_else(_is_number(texts), times, 0)).as_py() or 0)
        not_numbers = present - parsed
        if parsed and not_numbers <= max_bad_share * present:
            kinds[name] = "numeric"
            if not_numbers:
                warnings.append(
                    f"{where}: column {name!r}: {not_numbers} non-numeric value(s) (the first in "
                    f"{_first_non_number(strings)}) are treated as missing"
                )
        elif parsed > present / 2:
            raise DataError(
                f"{where}: column {name!r} is numeric but {not_numbers} of {present} values are not numbers (the "
                f"first in {_first_non_number(strings)}), over the allowed share {max_bad_share:.1%}"
            )
        else:
            kinds[name] = "categorical"
    return kinds, warnings


def _is_number(strings: Any) -> Any:
    """What `ml.features.parse_number` accepts, vectorised (a Python loop took seconds per million rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.or_(
        pc.match_substring_regex(strings, NUMBER_PATTERN),
        pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(strings)), value_set=pa.array(sorted(NON_FINITE_WORDS))),
    )


def _first_non_number(strings: Any) -> str:
    """Where, not what: these messages reach task logs and Kafka events, and a value may be personal data."""
    import pyarrow.compute as pc

    return f"row {pc.index(pc.fill_null(_is_number(strings), True), False).as_py() + 1}"


def _all_nan(column: Any) -> bool:
    """A floating column whose every value is null or NaN: no value at all."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_floating(column.type):
        return False
    return bool(pc.all(pc.fill_null(pc.is_nan(column), True)).as_py())


def infer_task(table: Any, target: str) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(target)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return "classification"
    distinct = pc.unique(pc.drop_null(column))
    integral = all(float(v).is_integer() for v in distinct.to_pylist() if v is not None and math.isfinite(v))
    return "classification" if integral and len(distinct) <= 20 else "regression"


@dataclass(frozen=True)
class ObjectSummary:
    """What the checks keep of one parsed object. The table itself is dropped once this is made, so an ingest holds
    one table per reading thread whatever the number of objects (B9: driver memory flat in the rows)."""

    where: str
    columns: list[str]
    types: list[str]
    rows: int
    kinds: dict[str, str]
    warnings: list[str]
    task_guess: str | None  # infer_task on this object alone; None when the task was given
    target_values: frozenset[str]  # distinct target values as text, at most MAX_CLASSES + 1 (for classification)


def summarise(where: str, table: Any, config: IngestConfig) -> ObjectSummary:
    """Check one object on its own (rows, delimiter, target, column kinds) and keep what the checks across objects
    need."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        raise DataError(f"{where}: no data rows (header only or empty)")
    if len(table.column_names) == 1 and any(sep in table.column_names[0] for sep in (";", "\t", "|")):
        raise DataError(
            f"{where}: only one column {table.column_names[0][:80]!r} was found; the file looks delimited by "
            "something other than ',' (CSV must be comma-separated)"
        )
    if config.target not in table.column_names:
        raise DataError(
            f"{where}: target column {config.target!r} is missing (columns: {', '.join(table.column_names)})"
        )
    if table.column(config.target).null_count == table.num_rows:
        raise DataError(f"{where}: target column {config.target!r} has no values")
    kinds, warnings = column_kinds(table, where, config.max_bad_share)
    values: frozenset[str] = frozenset()
    if config.task != "regression":
        distinct = pc.unique(pc.drop_null(table.column(config.target)))
        values = frozenset(str(v) for v in distinct.slice(0, MAX_CLASSES + 1).to_pylist())
    return ObjectSummary(
        where,
        list(table.column_names),
        [str(t) for t in table.schema.types],
        table.num_rows,
        kinds,
        warnings,
        None if config.task else infer_task(table, config.target),
        values,
    )


def validate(objects: list[ObjectSummary], config: IngestConfig) -> tuple[dict[str, str], str, int, list[str]]:
    """Check the objects' agreement, in key order; return (column kinds, task, rows, warnings)."""
    source = config.raw_uri  # errors about the objects together name the source
    kinds: dict[str, str] | None = None
    kind_seen_in: dict[str, str] = {}
    warnings: list[str] = []
    for summary in objects:
        where = summary.where
        warnings += summary.warnings
        if kinds is None:
            kinds = dict(summary.kinds)
        elif set(summary.kinds) != set(kinds):
            raise DataError(f"{where}: columns differ from the other files: {sorted(set(summary.kinds) ^ set(kinds))}")
        else:
            for name, kind in summary.kinds.items():
                # A column that is empty in one file takes its kind from the others.
                if kind == "empty":
                    continue
                if kinds[name] not in ("empty", kind):
                    raise DataError(
                        f"{where}: column {name!r} is {kind} here but {kinds[name]} in {kind_seen_in[name]}"
                    )
                kinds[name] = kind
        for name, kind in summary.kinds.items():
            if kind != "empty":
                kind_seen_in.setdefault(name, where)
    assert kinds is not None
    for name, kind in kinds.items():
        if kind == "empty":
            if name == config.target:
                raise DataError(f"{source}: target column {config.target!r} has no values")
            warnings.append(f"{source}: column {name!r} has no values in any file and is dropped from the features")
    task = config.task or objects[0].task_guess
    if task not in ("classification", "regression"):
        raise DataError(f"task must be classification or regression, not {task!r}")
    if task == "regression" and kinds[config.target] != "numeric":
        raise DataError(f"{source}: target column {config.target!r} is not numeric, so the task cannot be regression")
    if task == "classification":
        classes = frozenset().union(*(summary.target_values for summary in objects))
        if len(classes) < 2:
            raise DataError(
                f"{source}: target column {config.target!r} has a single class {sorted(classes)}: nothing to learn"
            )
        if len(classes) > MAX_CLASSES:
            raise DataError(
                f"{source}: target column {config.target!r} has more than {MAX_CLASSES} classes; "
                "is it a regression target? pass --task regression"
            )
    return kinds, task, sum(summary.rows for summary in objects), warnings


def check_drift(
    lake: LakeSettings, dataset: str, kinds: dict[str, str], config: IngestConfig, client: Any
) -> list[str]:
    """Compare the columns with the dataset's previous snapshot; a lost or retyped column is an error."""
    pointer = latest_snapshot_uri(lake, dataset)
    if not exists(pointer, client):
        return []
    previous = read_json(pointer, client)
    before: dict[str, str] = previous["columns"]
    # A column that had no values was never a feature: losing it is no drift.
    problems = [f"column {name!r} disappeared" for name in before if name not in kinds and before[name] != "empty"]
    problems += [
        f"column {name!r} changed from {before[name]} to {kinds[name]}"
        for name in before
        if name in kinds and "empty" not in (before[name], kinds[name]) and before[name] != kinds[name]
    ]
    added = [f"new column {name!r}" for name in kinds if name not in before]
    if problems and not config.allow_schema_drift:
        raise DataError(
            f"{config.raw_uri}: schema drift against snapshot {previous['snapshot_id']} of {dataset!r}: "
            f"{'; '.join(problems)} "
            "(pass --allow-schema-drift to accept it)"
        )
    return [f"schema drift against snapshot {previous['snapshot_id']}: {p}" for p in problems + added]
