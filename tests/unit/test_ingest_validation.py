"""Ingest's checks on in-memory tables: column kinds, content validation, parsing errors, the snapshot id."""

from __future__ import annotations

import gzip
import io
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.ingest import IngestConfig, _format_of, column_kinds, content_hash, infer_task, read_table, validate
from ml.storage import DataError, S3Uri

pytestmark = pytest.mark.unit

WHERE = "s3://raw/toy/data.csv"


def config(target: str = "y", **overrides: Any) -> IngestConfig:
    return IngestConfig(raw_uri="s3://raw/toy/", dataset="toy", target=target, **overrides)


def csv(text: str, where: str = WHERE) -> pa.Table:
    return read_table(text.encode(), "csv", where)


def table(**columns: list[Any]) -> pa.Table:
    return pa.table(columns)


# column_kinds


def test_typed_columns() -> None:
    kinds, warnings = column_kinds(
        pa.table(
            {
                "i": [1, 2, 3],
                "f": [0.5, None, 2.0],
                "d": pa.array([Decimal("1.5"), None, Decimal("2")]),
                "s": ["a", "b", None],
                "b": [True, False, True],
            }
        ),
        WHERE,
        0.01,
    )
    assert kinds == {"i": "numeric", "f": "numeric", "d": "numeric", "s": "categorical", "b": "categorical"}
    assert warnings == []


def test_all_null_columns_are_empty() -> None:
    kinds, _ = column_kinds(
        pa.table(
            {
                "n": pa.nulls(3),
                "f": pa.array([None, None, None], pa.float64()),
                "nan": [float("nan")] * 3,
                "s": pa.array([None, None, None], pa.string()),
                "x": [1, 2, 3],
            }
        ),
        WHERE,
        0.01,
    )
    assert kinds == {"n": "empty", "f": "empty", "nan": "empty", "s": "empty", "x": "numeric"}


def test_numbers_in_strings_under_the_threshold_are_numeric_with_a_warning() -> None:
    values = [str(i) for i in range(199)] + ["oops"]
    kinds, warnings = column_kinds(table(v=values), WHERE, 0.01)
    assert kinds == {"v": "numeric"}
    assert len(warnings) == 1
    assert WHERE in warnings[0] and "'v'" in warnings[0] and "'oops'" in warnings[0]


def test_numbers_in_strings_over_the_threshold_are_an_error() -> None:
    values = [str(i) for i in range(90)] + ["oops"] * 10
    with pytest.raises(DataError) as error:
        column_kinds(table(v=values), WHERE, 0.01)
    message = str(error.value)
    assert WHERE in message and "'v'" in message and "10 of 100" in message and "'oops'" in message


def test_threshold_is_configurable() -> None:
    values = [str(i) for i in range(90)] + ["oops"] * 10
    kinds, warnings = column_kinds(table(v=values), WHERE, 0.2)
    assert kinds == {"v": "numeric"} and warnings


def test_mostly_text_is_categorical() -> None:
    kinds, _ = column_kinds(table(v=["a", "b", "1", "c"]), WHERE, 0.01)
    assert kinds == {"v": "categorical"}


def test_what_counts_as_a_number() -> None:
    # Spellings of inf/nan are missing values, not bad ones; Spark-only spellings ("3D", hex, "1_000") are not numbers.
    kinds, warnings = column_kinds(table(v=["1", "2.5", "-3e2", ".5", "inf", "-Infinity", "NaN"]), WHERE, 0.0)
    assert kinds == {"v": "numeric"} and warnings == []
    for odd in ("3D", "0x1p3", "1_000", "1f"):
        with pytest.raises(DataError, match=repr(odd)):
            column_kinds(table(v=["1", "2", "3", odd]), WHERE, 0.0)


# read_table


def test_csv_is_typed_and_inf_nan_are_kept_as_missing_or_non_finite() -> None:
    parsed = csv("a,b,c\n1,inf,x\n2,nan,y\n3,,\n")
    assert parsed.column("a").type == pa.int64()
    assert parsed.column("b").to_pylist()[1:] == [None, None]
    assert parsed.column("c").to_pylist() == ["x", "y", None]


def test_gzipped_csv() -> None:
    parsed = read_table(gzip.compress(b"a,y\n1,u\n2,v\n"), "csv", "s3://raw/toy/data.csv.gz")
    assert parsed.num_rows == 2


def test_unreadable_files_name_the_file() -> None:
    with pytest.raises(DataError, match=r"s3://raw/x\.parquet: not a readable Parquet"):
        read_table(b"PAR1 this is no parquet", "parquet", "s3://raw/x.parquet")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": list(range(1000))}), buffer)
    with pytest.raises(DataError, match="not a readable Parquet"):
        read_table(buffer.getvalue()[: len(buffer.getvalue()) // 2], "parquet", "s3://raw/x.parquet")
    with pytest.raises(DataError, match=rf"{WHERE}: not a readable CSV"):
        csv("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="not a readable CSV"):
        read_table(b"a,b\n\xff\xfe,1\n", "csv", WHERE)
    with pytest.raises(DataError, match="not a readable CSV"):
        read_table(b"not gzip at all", "csv", "s3://raw/x.csv.gz")


def test_formats() -> None:
    assert _format_of("a/b.CSV") == "csv" and _format_of("a/b.csv.gz") == "csv"
    assert _format_of("a/b.parquet") == "parquet" and _format_of("a/b.pq") == "parquet"
    assert _format_of("a/_SUCCESS") is None and _format_of("a/b.json") is None


# validate


def test_valid_table() -> None:
    kinds, task, rows, warnings = validate([(WHERE, csv("x,c,y\n1,a,yes\n2,b,no\n3,,yes\n"))], config())
    assert kinds == {"x": "numeric", "c": "categorical", "y": "categorical"}
    assert (task, rows, warnings) == ("classification", 3, [])


def test_header_only() -> None:
    with pytest.raises(DataError, match=rf"{WHERE}: no data rows"):
        validate([(WHERE, csv("x,y\n"))], config())


def test_wrong_delimiter() -> None:
    with pytest.raises(DataError, match=rf"{WHERE}: only one column 'x;y'.*comma-separated"):
        validate([(WHERE, csv("x;y\n1;a\n2;b\n"))], config())


def test_missing_target() -> None:
    with pytest.raises(DataError, match=rf"{WHERE}: target column 'label' is missing \(columns: x, y\)"):
        validate([(WHERE, csv("x,y\n1,a\n2,b\n"))], config("label"))


def test_target_without_values() -> None:
    with pytest.raises(DataError, match=rf"{WHERE}: target column 'y' has no values"):
        validate([(WHERE, csv("x,y\n1,\n2,\n"))], config())


def test_all_null_column_is_dropped_with_a_warning() -> None:
    kinds, _, _, warnings = validate([(WHERE, csv("x,gone,y\n1,,a\n2,,b\n"))], config())
    assert kinds["gone"] == "empty"
    assert any("'gone'" in w and "dropped" in w for w in warnings)


def test_single_class() -> None:
    with pytest.raises(DataError, match=r"s3://raw/toy/: target column 'y' has a single class \['a'\]"):
        validate([(WHERE, csv("x,y\n1,a\n2,a\n3,\n"))], config())


def test_too_many_classes() -> None:
    frame = table(x=list(range(150)), y=[f"c{i}" for i in range(150)])
    with pytest.raises(DataError, match="150 classes"):
        validate([(WHERE, frame)], config())


def test_regression_needs_a_numeric_target() -> None:
    with pytest.raises(DataError, match="'y' is not numeric"):
        validate([(WHERE, csv("x,y\n1,a\n2,b\n"))], config(task="regression"))


def test_bad_task() -> None:
    with pytest.raises(DataError, match="task must be"):
        validate([(WHERE, csv("x,y\n1,a\n2,b\n"))], config(task="ranking"))


def test_task_inference() -> None:
    assert infer_task(table(y=["a", "b"]), "y") == "classification"
    assert infer_task(table(y=[0, 1, 2, 1]), "y") == "classification"
    assert infer_task(table(y=[0.0, 1.0, float("nan"), None]), "y") == "classification"
    assert infer_task(table(y=[0.5, 1.25, 3.0]), "y") == "regression"
    assert infer_task(table(y=list(range(50))), "y") == "regression"


def test_files_must_agree() -> None:
    first = ("s3://raw/toy/a.csv", csv("x,c,y\n1,a,u\n2,b,v\n"))
    other_columns = ("s3://raw/toy/b.csv", csv("x,d,y\n1,a,u\n2,b,v\n"))
    with pytest.raises(DataError, match=r"s3://raw/toy/b\.csv: columns differ.*\['c', 'd'\]"):
        validate([first, other_columns], config())
    retyped = ("s3://raw/toy/b.csv", csv("x,c,y\nabc,a,u\ndef,b,v\n"))
    with pytest.raises(
        DataError,
        match=r"s3://raw/toy/b\.csv: column 'x' is categorical here but numeric in "
        r"s3://raw/toy/a\.csv",
    ):
        validate([first, retyped], config())
    # Same columns in another order, and a column that is empty in one file only: fine.
    reordered = ("s3://raw/toy/b.csv", csv("y,c,x\nw,,3\n"))
    kinds, _, rows, warnings = validate([first, reordered], config())
    assert kinds == {"x": "numeric", "c": "categorical", "y": "categorical"} and rows == 3 and warnings == []


# the snapshot id


def objects(*specs: tuple[str, str, int]) -> list[dict[str, Any]]:
    return [{"Key": key, "ETag": f'"{etag}"', "Size": size} for key, etag, size in specs]


def test_content_hash() -> None:
    raw = S3Uri.parse("s3://raw/toy/")
    base = content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 20)), "y")
    assert base == content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 20)), "y")
    assert len(base) == 16
    # the same files under another prefix are the same content
    moved = S3Uri.parse("s3://other/elsewhere/deeper")
    assert base == content_hash(
        moved, objects(("elsewhere/deeper/a.csv", "e1", 10), ("elsewhere/deeper/b.csv", "e2", 20)), "y"
    )
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e3", 20)), "y")
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/c.csv", "e2", 20)), "y")
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10)), "y")
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 20)), "x")
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 20)), "y", "regression")
    single = S3Uri.parse("s3://raw/toy/a.csv")
    assert content_hash(single, objects(("toy/a.csv", "e1", 10)), "y") == content_hash(
        S3Uri.parse("s3://raw/other/a.csv"), objects(("other/a.csv", "e1", 10)), "y"
    )
