"""The preprocessing steps (ml.preprocess.steps), each on a local SparkSession with rows built in memory or small files
in a temporary folder; and the chain of them checked against FeatureSpec.transform, the Python side of serving."""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.features import (
    LABEL_COLUMN,
    NULL_TOKENS,
    OTHER,
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    normalise_category,
    parse_number,
)
from ml.ingest.read import read_table
from ml.preprocess import steps
from ml.preprocess.steps import COPIES, SPLIT, TARGET


def frame(spark: Any, rows: list[tuple[Any, ...]], *fields: tuple[str, str]) -> Any:
    """A DataFrame of `rows` with (name, type) columns; names may hold spaces, dots or backticks."""
    return spark.createDataFrame(rows, ", ".join(f"{steps.quote(name)} {kind}" for name, kind in fields))


def column(df: Any, name: str) -> list[Any]:
    return [row[name] for row in df.collect()]


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def parsed(df: Any, numeric: list[str], categorical: list[str], task: str = "classification") -> Any:
    """parse_values then clean_values, as the job chains them (the target column is `y`)."""
    return steps.clean_values(steps.parse_values(df, numeric, categorical, "y", task), numeric, categorical, task)


# quote / spark_path


def test_quote_makes_any_name_an_identifier(spark: Any) -> None:
    assert steps.quote("a b.c") == "`a b.c`"
    assert steps.quote("we`ird") == "`we``ird`"
    df = frame(spark, [(1.0,)], ("we`ird na.me", "double"))
    assert df.selectExpr(steps.quote("we`ird na.me")).first()[0] == 1.0


def test_spark_path_reads_s3_through_s3a_and_other_uris_as_they_are() -> None:
    assert steps.spark_path("s3://lake/datasets/d/part-00000.csv") == "s3a://lake/datasets/d/part-00000.csv"
    assert steps.spark_path("s3a://lake/x.parquet") == "s3a://lake/x.parquet"
    assert steps.spark_path("file:///tmp/x.csv") == "file:///tmp/x.csv"
    with pytest.raises(ValueError, match="not an S3 URI"):
        steps.spark_path("s3:///no-bucket")


# read_snapshot


def csv_entry(path: Path, text: str) -> dict[str, Any]:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return {"format": "csv", "snapshot_uri": path.as_uri(), "columns": text.splitlines()[0].split(",")}


def parquet_entry(path: Path, table: pa.Table) -> dict[str, Any]:
    pq.write_table(table, path)
    # what ingest records for a Parquet object
    return {
        "format": "parquet",
        "snapshot_uri": path.as_uri(),
        "columns": table.column_names,
        "types": [str(t) for t in table.schema.types],
    }


def test_read_snapshot_matches_columns_by_name_across_files_and_formats(spark: Any, tmp_path: Path) -> None:
    objects = [
        csv_entry(tmp_path / "part-00000.csv", "x,c,gone,y\n1,a,,u\n2,b,,v\n"),
        # another column order: Spark alone would apply the first header by position
        csv_entry(tmp_path / "part-00001.csv.gz", "y,gone,c,x\nw,,c,3\n"),
        parquet_entry(
            tmp_path / "part-00002.parquet",
            pa.table({"c": ["d"], "x": [4.5], "y": ["z"], "gone": pa.nulls(1, pa.string())}),
        ),
    ]
    raw = steps.read_snapshot(spark, objects, ["x", "c", "y"])
    assert raw.columns == ["x", "c", "y"]
    # x is a string in CSV and a double in Parquet: strings everywhere, cleaned like CSV later
    assert dict(raw.dtypes) == {"x": "string", "c": "string", "y": "string"}
    assert sorted(tuple(row) for row in raw.collect()) == [
        ("1", "a", "u"),
        ("2", "b", "v"),
        ("3", "c", "w"),
        ("4.5", "d", "z"),
    ]


def test_read_snapshot_keeps_parquet_types_when_the_files_agree(spark: Any, tmp_path: Path) -> None:
    objects = [
        parquet_entry(tmp_path / "a.parquet", pa.table({"x": [1.5, None], "flag": [True, False], "y": ["u", "v"]})),
        parquet_entry(
            tmp_path / "b.parquet",
            pa.table({"y": ["w"], "flag": [None], "x": [2.5]}).cast(
                pa.schema([("y", pa.string()), ("flag", pa.bool_()), ("x", pa.float64())])
            ),
        ),
    ]
    raw = steps.read_snapshot(spark, objects, ["x", "flag", "y"])
    assert dict(raw.dtypes) == {"x": "double", "flag": "boolean", "y": "string"}
    assert sorted(column(raw, "x"), key=str) == [1.5, 2.5, None]


def test_read_snapshot_reads_a_column_typed_differently_as_strings(spark: Any, tmp_path: Path) -> None:
    objects = [
        parquet_entry(tmp_path / "a.parquet", pa.table({"x": pa.array([1, 2], pa.int64()), "y": ["u", "v"]})),
        parquet_entry(tmp_path / "b.parquet", pa.table({"x": [2.5], "y": ["w"]})),
    ]
    raw = steps.read_snapshot(spark, objects, ["x", "y"])
    assert dict(raw.dtypes)["x"] == "string"
    assert sorted(column(raw, "x")) == ["1", "2", "2.5"]


def test_read_snapshot_reads_csv_quoting_as_the_ingest_check_did(spark: Any, tmp_path: Path) -> None:
    text = 'text,y\n"say ""hi""",a\n"one, two",b\n  padded  ,c\n"",d\n,e\n'
    raw = steps.read_snapshot(spark, [csv_entry(tmp_path / "q.csv", text)], ["text", "y"])
    by_target = {row["y"]: row["text"] for row in raw.collect()}
    assert by_target["a"] == 'say "hi"' and by_target["b"] == "one, two" and by_target["c"] == "  padded  "
    ingested = read_table(text.encode(), "csv", "s3://raw/q.csv").to_pydict()
    for value, target in zip(ingested["text"], ingested["y"], strict=True):
        if value:  # both read empty values as missing or blank, which cleaning makes missing
            assert by_target[target] == value
    assert by_target["d"] in ("", None) and by_target["e"] in ("", None)


# parse_values + clean_values


# Strings a numeric column may hold; Spark must agree with ml.features.parse_number (the rule of the ingest check and
# of serving) on each: a finite number is that number, anything else is missing.
NUMBER_SPELLINGS = [
    *["5", " 5 ", "\t5", "5\n", "\r\n5\r\n", "\x0b5", "\f5", "+1", "-2.5", "1.", ".5", "+.5e-3", "1e5", "1E+5", "-0"],
    *["1e400", "-1e400", "nan", "NaN", "Infinity", "-inf", "", " "],  # no finite value: missing
    *["3D", "1f", "0x10", "1_000", "١٢", "--1", "1e", "e1", "1,5", "5 5"],  # not plain decimals
    *["\xa05", "5\xa0", "\u20035", "5\u2028", "\u00a0"],  # Unicode spaces: Spark does not trim them
    *["\x015", "5\x1f", "\x00 5", "5\x08"],  # control characters: Java's parseDouble trims them, the rule does not
    *["0X1p3", "-0x1.8p1", "5d ", " 3F", "+Infinity", "1.5e3d", "5.", "+5.", "-.5", "x5", "5x", "1e5x"],
]


def test_numbers_are_what_parse_number_accepts(spark: Any) -> None:
    df = frame(
        spark,
        [(i, value, "a") for i, value in enumerate(NUMBER_SPELLINGS)],
        ("i", "int"),
        ("x", "string"),
        ("y", "string"),
    )
    cleaned = parsed(df.orderBy("i"), ["x"], [], "classification")
    spark_values = column(cleaned, "x")
    python_values = [finite_or_none(parse_number(value)) for value in NUMBER_SPELLINGS]
    assert spark_values == python_values, [
        (value, s, p) for value, s, p in zip(NUMBER_SPELLINGS, spark_values, python_values, strict=True) if s != p
    ]
    assert dict(cleaned.dtypes)["x"] == "double"


def test_random_texts_are_numbers_exactly_when_parse_number_says_so(spark: Any) -> None:
    # Short texts over the characters where Java's parseDouble (Spark's cast) and the rule part ways: type suffixes,
    # hex, words, control characters, spaces. The job must agree with the rule on every one.
    alphabet = "0123456789+-.eExXpPdDfFnNaIy \t\x01\x1f\xa0"
    generator = np.random.default_rng(17)
    texts = sorted(
        {"".join(generator.choice(list(alphabet), size=int(generator.integers(1, 7)))) for _ in range(4000)}
        | {"".join(generator.choice(list("0123456789.e+- "), size=int(generator.integers(1, 7)))) for _ in range(4000)}
    )
    df = frame(
        spark, [(i, value, "a") for i, value in enumerate(texts)], ("i", "int"), ("x", "string"), ("y", "string")
    )
    spark_values = column(parsed(df.orderBy("i"), ["x"], []), "x")
    python_values = [finite_or_none(parse_number(value)) for value in texts]
    assert sum(value is not None for value in python_values) > 500  # the comparison covers many numbers
    assert spark_values == python_values, [
        (value, s, p) for value, s, p in zip(texts, spark_values, python_values, strict=True) if s != p
    ][:10]


def test_typed_numbers_keep_their_values_and_non_finite_ones_are_missing(spark: Any) -> None:
    rows = [(1, 2.5, "a"), (2, float("nan"), "a"), (3, float("inf"), "a"), (4, float("-inf"), "a"), (5, None, "a")]
    df = frame(spark, rows, ("n", "bigint"), ("x", "double"), ("y", "string"))
    cleaned = parsed(df.orderBy("n"), ["n", "x"], [])
    assert column(cleaned, "n") == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert column(cleaned, "x") == [2.5, None, None, None, None]


CATEGORY_SPELLINGS = [
    *["red", " red ", "\tred", "Zürich", "東京", "a  b"],
    *["3", "3.0", "3.", "-4.00", "007", "3D", "2.5"],
    *["True", "TRUE", "true", "False", "FALSE", "tRUE"],
]


def test_categories_are_keyed_like_normalise_category(spark: Any) -> None:
    df = frame(
        spark, [(i, v, "a") for i, v in enumerate(CATEGORY_SPELLINGS)], ("i", "int"), ("c", "string"), ("y", "string")
    )
    assert column(parsed(df.orderBy("i"), [], ["c"]), "c") == [normalise_category(v) for v in CATEGORY_SPELLINGS]


def test_typed_categories_are_keyed_like_normalise_category(spark: Any) -> None:
    doubles, longs, flags = [3.0, 2.5, -4.0, 0.0, 1e14], [7, -3, 0], [True, False]
    rows = [(i, doubles[i % 5], longs[i % 3], flags[i % 2], "a") for i in range(5)]
    df = frame(spark, rows, ("i", "int"), ("d", "double"), ("l", "bigint"), ("b", "boolean"), ("y", "string"))
    cleaned = parsed(df.orderBy("i"), [], ["d", "l", "b"])
    for name, position in (("d", 1), ("l", 2), ("b", 3)):
        assert column(cleaned, name) == [normalise_category(row[position]) for row in rows], name


def test_blank_and_null_spellings_are_missing_never_a_category(spark: Any) -> None:
    values = ["", *NULL_TOKENS, None, "  "]
    df = frame(spark, [(v, "a") for v in values], ("c", "string"), ("y", "string"))
    # "  " trims to "" (blank); every spelling of "no value" is missing
    assert set(column(parsed(df, [], ["c"]), "c")) == {None}


def test_the_target_is_a_number_for_regression_and_a_category_otherwise(spark: Any) -> None:
    df = frame(spark, [(" 12.5 ",), ("x",), ("inf",), ("3.0",), ("NA",), (" yes ",)], ("y", "string"))
    regression = parsed(df, [], [], "regression")
    assert regression.columns == [TARGET]
    assert column(regression, TARGET) == [12.5, None, None, 3.0, None, None]
    assert column(parsed(df, [], [], "classification"), TARGET) == ["12.5", "x", "inf", "3", None, "yes"]
    typed = frame(spark, [(1.0,), (2.0,), (float("nan"),)], ("y", "double"))
    assert column(parsed(typed, [], [], "classification"), TARGET) == ["1", "2", None]
    assert column(parsed(typed, [], [], "regression"), TARGET) == [1.0, 2.0, None]


def test_parsed_columns_come_in_order_with_any_name(spark: Any) -> None:
    df = frame(
        spark,
        [("b", "1", "x", "u")],
        ("città.nome", "string"),
        ("Größe (cm)", "string"),
        ("we`ird", "string"),
        ("y", "string"),
    )
    out = parsed(df, ["Größe (cm)"], ["città.nome", "we`ird"])
    assert out.columns == ["Größe (cm)", "città.nome", "we`ird", TARGET]
    assert tuple(out.first()) == (1.0, "b", "x", "u")


# deduplicate


def test_deduplicate_drops_rows_without_target_and_counts_copies(spark: Any) -> None:
    rows = [
        (1.0, "a", "u"),
        (1.0, "a", "u"),
        (1.0, "a", "u"),
        (None, "a", "u"),
        (None, "a", "u"),
        (1.0, None, "u"),
        (1.0, "a", "v"),
        (2.0, "b", None),
        (None, None, None),
    ]
    df = frame(spark, rows, ("x", "double"), ("c", "string"), (TARGET, "string"))
    deduplicated = steps.deduplicate(df)
    assert deduplicated.columns == ["x", "c", TARGET, COPIES]
    counted = {(row["x"], row["c"], row[TARGET]): row[COPIES] for row in deduplicated.collect()}
    # missing values are equal to each other when comparing rows
    assert counted == {(1.0, "a", "u"): 3, (None, "a", "u"): 2, (1.0, None, "u"): 1, (1.0, "a", "v"): 1}


# assign_split and split_counts


def distinct_rows(spark: Any, rows: int) -> Any:
    data = [(float(i), f"c{i % 7}", "yes" if i % 3 else "no", 1) for i in range(rows)]
    return frame(spark, data, ("x", "double"), ("c", "string"), (TARGET, "string"), (COPIES, "bigint"))


def splits_by_x(df: Any) -> dict[float, str]:
    return {row["x"]: row[SPLIT] for row in df.select("x", SPLIT).collect()}


def test_split_depends_on_row_content_and_seed_only(spark: Any) -> None:
    rows = distinct_rows(spark, 400)
    first = splits_by_x(steps.assign_split(rows, 42, (0.8, 0.1)))
    assert splits_by_x(steps.assign_split(rows.repartition(3), 42, (0.8, 0.1))) == first
    assert splits_by_x(steps.assign_split(rows.orderBy(rows["x"].desc()).coalesce(1), 42, (0.8, 0.1))) == first
    # how many input rows a row stands for is not part of its content
    recounted = rows.withColumn(COPIES, rows["x"].cast("bigint") % 5 + 1)
    assert splits_by_x(steps.assign_split(recounted, 42, (0.8, 0.1))) == first
    assert splits_by_x(steps.assign_split(rows, 7, (0.8, 0.1))) != first


def test_split_shares(spark: Any) -> None:
    rows = distinct_rows(spark, 3000)
    shares = [split for split in splits_by_x(steps.assign_split(rows, 42, (0.8, 0.1))).values()]
    assert 0.77 < shares.count("train") / 3000 < 0.83
    assert 0.08 < shares.count("validation") / 3000 < 0.12
    assert set(splits_by_x(steps.assign_split(rows, 42, (1.0, 0.0))).values()) == {"train"}
    assert set(splits_by_x(steps.assign_split(rows, 42, (0.0, 1.0))).values()) == {"validation"}
    assert set(splits_by_x(steps.assign_split(rows, 42, (0.0, 0.0))).values()) == {"test"}


def test_split_counts(spark: Any) -> None:
    data = [(1.0, "u", 3, "train"), (2.0, "u", 1, "train"), (3.0, "v", 2, "test"), (4.0, "v", 1, "validation")]
    prepared = frame(spark, data, ("x", "double"), (TARGET, "string"), (COPIES, "bigint"), (SPLIT, "string"))
    assert steps.split_counts(prepared) == ({"train": 2, "test": 1, "validation": 1}, 7)
    empty = prepared.where("false")
    assert steps.split_counts(empty) == ({}, 0)


# fit_numeric, fit_categorical, class_labels


def test_fit_numeric_mean_and_population_std_ignoring_missing(spark: Any) -> None:
    data = [(1.0, 5.0, None), (2.0, 5.0, None), (None, 5.0, None), (6.0, 5.0, None)]
    train = frame(spark, data, ("x", "double"), ("flat", "double"), ("none", "double"))
    x, flat, none = steps.fit_numeric(train, ["x", "flat", "none"])
    values = np.array([1.0, 2.0, 6.0])
    assert x == NumericFeature("x", fill=3.0, mean=3.0, std=pytest.approx(values.std()))
    assert x.std == float(f"{values.std():.12g}")  # 12 significant digits: stable across summation orders
    # a constant column keeps std 1; a column without values is filled with 0
    assert flat == NumericFeature("flat", fill=5.0, mean=5.0, std=1.0)
    assert none == NumericFeature("none", fill=0.0, mean=0.0, std=1.0)
    assert steps.fit_numeric(train, []) == []


def test_fit_categorical_keeps_the_most_frequent_training_categories(spark: Any) -> None:
    values = ["b"] * 4 + ["a"] * 2 + ["c"] * 2 + ["d"] + [None] * 5
    train = frame(spark, [(v, None) for v in values], ("c", "string"), ("empty", "string"))
    [full, empty] = steps.fit_categorical(train, ["c", "empty"], max_categories=10)
    # most frequent first, ties by name, missing values never a category
    assert full == CategoricalFeature("c", ["b", "a", "c", "d"])
    assert empty == CategoricalFeature("empty", [])
    assert steps.fit_categorical(train, ["c"], max_categories=2) == [CategoricalFeature("c", ["b", "a"])]
    assert steps.fit_categorical(train, ["c"], max_categories=10, min_count=2) == [
        CategoricalFeature("c", ["b", "a", "c"])
    ]


def test_class_labels_are_the_sorted_target_values(spark: Any) -> None:
    prepared = frame(spark, [("9",), ("10",), ("2",), ("9",)], (TARGET, "string"))
    assert steps.class_labels(prepared) == ["10", "2", "9"]


# encode


def test_encode_standardises_one_hot_encodes_and_labels(spark: Any) -> None:
    numeric = [NumericFeature("x", fill=2.0, mean=1.0, std=2.0)]
    categorical = [CategoricalFeature("c", ["red", "blue"]), CategoricalFeature("none", [])]
    data = [(5.0, "red", None, "b", "train"), (None, "green", "q", "a", "test"), (1.0, None, None, "c", "validation")]
    prepared = frame(
        spark, data, ("x", "double"), ("c", "string"), ("none", "string"), (TARGET, "string"), (SPLIT, "string")
    )
    encoded = steps.encode(prepared, numeric, categorical, ["a", "b", "c"])
    spec = FeatureSpec("d", "s", "classification", "y", numeric, categorical, classes=["a", "b", "c"])
    assert encoded.columns == [*spec.feature_columns, LABEL_COLUMN, SPLIT]
    assert all(kind == "float" for name, kind in encoded.dtypes if name in spec.feature_columns)
    assert dict(encoded.dtypes)[LABEL_COLUMN] == "int"
    rows = {row[SPLIT]: row.asDict() for row in encoded.collect()}
    assert rows["train"] == {
        "x": 2.0,
        "c=red": 1.0,
        "c=blue": 0.0,
        f"c={OTHER}": 0.0,
        f"none={OTHER}": 1.0,
        LABEL_COLUMN: 1,
        SPLIT: "train",
    }
    assert rows["test"]["x"] == 0.5 and rows["test"][f"c={OTHER}"] == 1.0 and rows["test"][LABEL_COLUMN] == 0
    assert rows["validation"]["x"] == 0.0 and rows["validation"][f"c={OTHER}"] == 1.0
    assert rows["validation"][LABEL_COLUMN] == 2


def test_encode_keeps_a_regression_target_as_a_double(spark: Any) -> None:
    prepared = frame(spark, [(1.0, 12.5, "train")], ("x", "double"), (TARGET, "double"), (SPLIT, "string"))
    encoded = steps.encode(prepared, [NumericFeature("x", 0.0, 0.0, 1.0)], [], None)
    assert dict(encoded.dtypes)[LABEL_COLUMN] == "double" and encoded.first()[LABEL_COLUMN] == 12.5


# the chain, as ml.preprocess.job runs it, against the Python transform


def test_the_steps_reproduce_feature_spec_transform(spark: Any, tmp_path: Path) -> None:
    """Raw files -> steps -> encoded rows equal FeatureSpec.transform of the same raw rows (what serving computes)."""
    rng = np.random.default_rng(3)
    rows = 120
    ids = list(range(1000, 1000 + rows))
    income = [f"{v:.2f}" for v in rng.normal(50, 10, rows)]
    income[3], income[4], income[5], income[6] = "", "inf", "unknown", " 7.5 "
    city = [str(v) for v in rng.choice(["Paris", " Lyon ", "Nice", "3.0", "3", "NA"], rows)]
    outcome = [str(v) for v in rng.choice(["yes", "no", "maybe"], rows)]
    outcome[7] = ""  # no target: dropped
    header = "id,income,city,outcome"
    lines = [f"{i},{x},{c},{y}" for i, x, c, y in zip(ids, income, city, outcome, strict=True)]
    objects = [
        csv_entry(tmp_path / "a.csv", "\n".join([header, *lines[:60], lines[10]]) + "\n"),  # plus a duplicate row
        csv_entry(tmp_path / "b.csv", "\n".join([header, *lines[60:]]) + "\n"),
    ]
    raw = steps.read_snapshot(spark, objects, ["id", "income", "city", "outcome"])
    cleaned = steps.clean_values(
        steps.parse_values(raw, ["id", "income"], ["city"], "outcome", "classification"),
        ["id", "income"],
        ["city"],
        "classification",
    )
    prepared = steps.assign_split(steps.deduplicate(cleaned), 42, (0.8, 0.1))
    counts, with_target = steps.split_counts(prepared)
    assert sum(counts.values()) == rows - 1 and with_target == rows  # one without target, one duplicate
    train = prepared.where(f"{SPLIT} = 'train'")
    numeric = steps.fit_numeric(train, ["id", "income"])
    categorical = steps.fit_categorical(train, ["city"], max_categories=3)
    classes = steps.class_labels(prepared)
    assert classes == ["maybe", "no", "yes"] and len(categorical[0].categories) == 3
    spec = FeatureSpec("d", "s", "classification", "outcome", numeric, categorical, classes=classes)
    encoded = steps.encode(prepared, numeric, categorical, classes).toPandas()

    id_feature = numeric[0]
    recovered = np.rint(encoded["id"].to_numpy(np.float64) * id_feature.std + id_feature.mean).astype(int)
    by_id = {i: {"id": i, "income": x, "city": c, "outcome": y} for i, x, c, y in zip(ids, income, city, outcome)}
    records = []
    for i in recovered:
        record = dict(by_id[i])
        # Spark reads what is not a number as missing; serving refuses it: give Python what Spark saw
        record["income"] = finite_or_none(parse_number(record["income"]))
        records.append(record)
    np.testing.assert_allclose(encoded[spec.feature_columns].to_numpy(), spec.transform(records), rtol=1e-6, atol=1e-6)
    assert spec.decode_labels(encoded[LABEL_COLUMN].tolist()) == [r["outcome"] for r in records]
    assert sorted(recovered.tolist()) == sorted(i for i in ids if by_id[i]["outcome"])
