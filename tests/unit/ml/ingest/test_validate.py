"""ml.ingest.validate on in-memory tables: column kinds, the task, the checks every object must pass and their
agreement; schema drift against the previous snapshot in an in-memory S3 (moto)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from ml.features import parse_number
from ml.ingest.config import IngestConfig
from ml.ingest.read import read_table
from ml.ingest.validate import MAX_CLASSES, check_drift, column_kinds, infer_task, summarise, validate
from ml.settings import LakeSettings
from ml.storage import DataError, latest_snapshot_uri, write_json

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
    assert WHERE in warnings[0] and "'v'" in warnings[0] and "row 200" in warnings[0]
    assert "oops" not in warnings[0], "a data value never reaches a warning (they go to Kafka events)"


def test_numbers_in_strings_over_the_threshold_are_an_error() -> None:
    values = [str(i) for i in range(90)] + ["oops"] * 10
    with pytest.raises(DataError) as error:
        column_kinds(table(v=values), WHERE, 0.01)
    message = str(error.value)
    assert WHERE in message and "'v'" in message and "10 of 100" in message and "row 91" in message
    assert "oops" not in message, "a data value never reaches an error (they go to Kafka events)"


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
        with pytest.raises(DataError, match="1 of 4 values are not numbers \\(the first in row 4\\)"):
            column_kinds(table(v=["1", "2", "3", odd]), WHERE, 0.0)


# summarise + validate


def check(objects: list[tuple[str, pa.Table]], settings: IngestConfig) -> tuple[dict[str, str], str, int, list[str]]:
    """What ingest does: each object summarised on its own (its table then dropped), then the summaries together."""
    return validate([summarise(where, parsed, settings) for where, parsed in objects], settings)


def test_valid_table() -> None:
    kinds, task, rows, warnings = check([(WHERE, csv("x,c,y\n1,a,yes\n2,b,no\n3,,yes\n"))], config())
    assert kinds == {"x": "numeric", "c": "categorical", "y": "categorical"}
    assert (task, rows, warnings) == ("classification", 3, [])


def test_header_only() -> None:
    with pytest.raises(DataError, match=rf"{WHERE}: no data rows"):
        check([(WHERE, csv("x,y\n"))], config())


def test_wrong_delimiter() -> None:
    with pytest.raises(DataError, match=rf"{WHERE}: only one column 'x;y'.*comma-separated"):
        check([(WHERE, csv("x;y\n1;a\n2;b\n"))], config())


def test_missing_target() -> None:
    with pytest.raises(DataError, match=rf"{WHERE}: target column 'label' is missing \(columns: x, y\)"):
        check([(WHERE, csv("x,y\n1,a\n2,b\n"))], config("label"))


def test_target_without_values() -> None:
    with pytest.raises(DataError, match=rf"{WHERE}: target column 'y' has no values"):
        check([(WHERE, csv("x,y\n1,\n2,\n"))], config())


def test_all_null_column_is_dropped_with_a_warning() -> None:
    kinds, _, _, warnings = check([(WHERE, csv("x,gone,y\n1,,a\n2,,b\n"))], config())
    assert kinds["gone"] == "empty"
    assert any("'gone'" in w and "dropped" in w for w in warnings)


def test_single_class() -> None:
    with pytest.raises(DataError, match=r"s3://raw/toy/: target column 'y' has a single class \['a'\]"):
        check([(WHERE, csv("x,y\n1,a\n2,a\n3,\n"))], config())


def test_too_many_classes() -> None:
    frame = table(x=list(range(150)), y=[f"c{i}" for i in range(150)])
    with pytest.raises(DataError, match=f"more than {MAX_CLASSES} classes"):
        check([(WHERE, frame)], config())


def test_regression_needs_a_numeric_target() -> None:
    with pytest.raises(DataError, match="'y' is not numeric"):
        check([(WHERE, csv("x,y\n1,a\n2,b\n"))], config(task="regression"))


def test_bad_task() -> None:
    with pytest.raises(DataError, match="task must be"):
        check([(WHERE, csv("x,y\n1,a\n2,b\n"))], config(task="ranking"))


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
        check([first, other_columns], config())
    retyped = ("s3://raw/toy/b.csv", csv("x,c,y\nabc,a,u\ndef,b,v\n"))
    with pytest.raises(
        DataError,
        match=r"s3://raw/toy/b\.csv: column 'x' is categorical here but numeric in "
        r"s3://raw/toy/a\.csv",
    ):
        check([first, retyped], config())
    # Same columns in another order, and a column that is empty in one file only: fine.
    reordered = ("s3://raw/toy/b.csv", csv("y,c,x\nw,,3\n"))
    kinds, _, rows, warnings = check([first, reordered], config())
    assert kinds == {"x": "numeric", "c": "categorical", "y": "categorical"} and rows == 3 and warnings == []


def test_a_column_empty_in_the_first_file_takes_its_kind_from_the_others() -> None:
    first = ("s3://raw/toy/a.csv", csv("x,c,y\n,,u\n,,v\n"))
    second = ("s3://raw/toy/b.csv", csv("x,c,y\n1,a,u\n2,b,v\n"))
    kinds, _, rows, warnings = check([first, second], config())
    assert kinds == {"x": "numeric", "c": "categorical", "y": "categorical"} and rows == 4 and warnings == []


def test_classes_are_counted_over_all_objects() -> None:
    only_a = ("s3://raw/toy/a.csv", csv("x,y\n1,a\n2,a\n"))
    only_b = ("s3://raw/toy/b.csv", csv("x,y\n3,b\n"))
    assert check([only_a, only_b], config())[1:3] == ("classification", 3)
    halves = [(f"s3://raw/toy/{i}.csv", table(x=[1] * 60, y=[f"c{i}-{j}" for j in range(60)])) for i in range(2)]
    with pytest.raises(DataError, match=f"more than {MAX_CLASSES} classes"):
        check(halves, config())


def test_the_task_is_guessed_from_the_first_object() -> None:
    integers = ("s3://raw/toy/a.csv", table(x=[1, 2], y=[0, 1]))
    fractions = ("s3://raw/toy/b.csv", table(x=[1, 2], y=[0.5, 1.5]))
    assert check([integers, fractions], config())[1] == "classification"
    assert check([fractions, integers], config())[1] == "regression"


def test_a_target_of_nan_only_has_no_values() -> None:
    with pytest.raises(DataError, match=r"s3://raw/toy/: target column 'y' has no values"):
        check([(WHERE, table(x=[1, 2], y=[float("nan"), float("nan")]))], config())


def test_class_count_limit() -> None:
    def classes(count: int) -> pa.Table:
        return table(x=list(range(count)), y=[f"c{i}" for i in range(count)])

    assert check([(WHERE, classes(MAX_CLASSES))], config())[1] == "classification"
    with pytest.raises(DataError, match=rf"more than {MAX_CLASSES} classes.*--task regression"):
        check([(WHERE, classes(MAX_CLASSES + 1))], config())
    # the same column as a regression target is fine
    assert check([(WHERE, table(x=[1, 2, 3], y=[0, 1, 2]))], config(task="regression"))[1] == "regression"


# What counts as a number: the ingest check (pyarrow's RE2) and ml.features.parse_number agree on every spelling.

SPELLINGS = [
    *["5", " 5 ", "\t5", "5\n", "\x0b5", "\f5", "+.5e-3", "1.", "-0", "1e400", "nan", "-Infinity", " inf "],
    *["", " ", "3D", "1f", "0x10", "1_000", "١٢", "--1", "1e", "1,5", "\xa05", "5\xa0", "\u20035"],
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_the_ingest_check_counts_numbers_as_parse_number_does(spelling: str) -> None:
    kinds, warnings = column_kinds(table(v=["1", "2", spelling]), WHERE, 0.5)
    assert kinds == {"v": "numeric"}
    assert (warnings == []) == (parse_number(spelling) is not None), warnings


# Schema drift against the dataset's previous snapshot (its `latest.json` pointer)


def previous_snapshot(lake: LakeSettings, client: Any, columns: dict[str, str]) -> None:
    pointer = {"snapshot_id": "snap0", "columns": columns, "manifest": "s3://lake/x/manifest.json"}
    write_json(latest_snapshot_uri(lake, "toy"), pointer, client)


def test_no_previous_snapshot_is_no_drift(lake: LakeSettings, client: Any) -> None:
    assert check_drift(lake, "toy", {"x": "numeric", "y": "categorical"}, config(), client) == []


def test_a_lost_or_retyped_column_is_drift(lake: LakeSettings, client: Any) -> None:
    previous_snapshot(lake, client, {"x": "numeric", "extra": "numeric", "c": "categorical", "y": "categorical"})
    with pytest.raises(
        DataError,
        match=r"s3://raw/toy/: schema drift against snapshot snap0 of 'toy': column 'extra' disappeared; "
        r"column 'c' changed from categorical to numeric \(pass --allow-schema-drift",
    ):
        check_drift(lake, "toy", {"x": "numeric", "c": "numeric", "y": "categorical"}, config(), client)
    warnings = check_drift(
        lake, "toy", {"x": "numeric", "c": "numeric", "y": "categorical"}, config(allow_schema_drift=True), client
    )
    assert warnings == [
        "schema drift against snapshot snap0: column 'extra' disappeared",
        "schema drift against snapshot snap0: column 'c' changed from categorical to numeric",
    ]


def test_new_and_empty_columns_are_no_drift(lake: LakeSettings, client: Any) -> None:
    previous_snapshot(lake, client, {"x": "numeric", "gone": "empty", "later": "empty", "y": "categorical"})
    kinds = {"x": "numeric", "later": "categorical", "new": "numeric", "y": "categorical"}
    # a column without values was never a feature: losing it, or its getting values, is no drift
    assert check_drift(lake, "toy", kinds, config(), client) == [
        "schema drift against snapshot snap0: new column 'new'"
    ]
