"""ml.preprocess.hive: the table name, and the statements that register a snapshot's splits, on a stand-in session that
records them (a real metastore is exercised by tests/integration/ml/preprocess/test_job.py)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from ml.features import CategoricalFeature, FeatureSpec, NumericFeature
from ml.preprocess.hive import HIVE_DATABASE, MAX_HIVE_NAME, hive_table_name, register_hive_table
from ml.storage import S3Uri

FEATURES = S3Uri("lake", "datasets/toy/features/snap1")


def spec(task: str = "classification", numeric: tuple[str, ...] = ("x",)) -> FeatureSpec:
    return FeatureSpec(
        dataset="toy",
        snapshot_id="snap1",
        task=task,
        target="y",
        numeric=[NumericFeature(name, 0.0, 0.0, 1.0) for name in numeric],
        categorical=[CategoricalFeature("c", ["a"])],
        classes=["u", "v"] if task == "classification" else None,
    )


@dataclass
class StandInSpark:
    """What register_hive_table uses of a SparkSession: conf, sql, catalog.tableExists, table().schema."""

    tables: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conf = SimpleNamespace(get=lambda key: {"spark.sql.warehouse.dir": "s3a://lake/warehouse"}[key])
        self.catalog = SimpleNamespace(tableExists=lambda name: name in self.tables)

    def table(self, name: str) -> Any:
        fields = [
            SimpleNamespace(name=column, dataType=SimpleNamespace(simpleString=lambda kind=kind: kind))
            for column, kind in self.tables[name]
        ]
        return SimpleNamespace(schema=SimpleNamespace(fields=fields))

    def sql(self, statement: str) -> None:
        self.statements.append(statement)
        words = statement.split()
        if statement.startswith("CREATE TABLE"):
            columns = statement[statement.index("(") + 1 : statement.index(") USING")].split(", ")
            self.tables[words[2]] = [(c.rsplit(" ", 1)[0].strip("`"), c.rsplit(" ", 1)[1].lower()) for c in columns]
        elif statement.startswith("DROP TABLE"):
            del self.tables[words[2]]


def test_table_names() -> None:
    assert hive_table_name("cars") == f"{HIVE_DATABASE}.cars_features"
    assert hive_table_name("My-Data.v2") == "mlops.__my_0_data_46_v2_features"


@pytest.mark.parametrize("dataset", ["cars", "penguins", "e2e_1234abcd", "it_novel_0a1b", "a__b", "x9", "9x"])
def test_names_in_lowercase_letters_digits_and_underscores_keep_their_table(dataset: str) -> None:
    """Tables already made for such names must not be orphaned by a rename."""
    assert hive_table_name(dataset) == f"mlops.{dataset}_features"


def test_distinct_datasets_get_distinct_tables() -> None:
    """Over every name of up to 4 characters from an alphabet with what is kept, what is escaped and the escape
    character itself (today `a-b` and `a_b` would share mlops.a_b_features)."""
    alphabet = "a_-A9.é"
    names = ["".join(chars) for length in range(1, 5) for chars in itertools.product(alphabet, repeat=length)]
    tables = {hive_table_name(name): name for name in names}
    assert len(tables) == len(names)
    assert hive_table_name("a-b") != hive_table_name("a_b") != hive_table_name("A_b")


@pytest.mark.parametrize("dataset", ["a-b", "A_B", "Größe", "x.y", "_x", "a b", "9-lives", "My-Data_2"])
def test_table_names_are_plain_hive_identifiers_that_decode_to_the_dataset(dataset: str) -> None:
    """A valid name for Hive's metastore (letters, digits, _; at most 256 characters), and the dataset can be read back
    from it: the mapping is injective by construction, not by luck."""
    table = hive_table_name(dataset)
    database, name = table.split(".")
    assert database == HIVE_DATABASE and re.fullmatch(r"[a-z0-9_]{1,256}", name)
    assert _decode(name.removesuffix("_features")) == dataset


def test_the_longest_dag_dataset_names_fit_hives_limit() -> None:
    for worst in ("A" * 63, "a" + "-" * 62, "a" + "_" * 62):  # the DAG's dataset param: at most 63 characters
        assert len(hive_table_name(worst).split(".")[1]) <= MAX_HIVE_NAME


def test_a_name_beyond_hives_limit_empty_or_with_control_characters_is_refused() -> None:
    with pytest.raises(ValueError, match="256"):
        hive_table_name("é" * 100)
    for bad in ("", "a\x00b", "a\nb"):
        with pytest.raises(ValueError, match="empty or has control characters"):
            hive_table_name(bad)


def _decode(escaped: str) -> str:
    """The inverse of the escaping in ml.preprocess.hive (only tests need it)."""
    if not escaped.startswith("_"):
        return escaped
    text, i, out = escaped[1:], 0, []
    while i < len(text):
        if text[i] != "_":
            out.append(text[i])
            i += 1
        elif text[i + 1] == "_":
            out.append("_")
            i += 2
        elif text[i + 1].isalpha():
            out.append(text[i + 1].upper())
            i += 2
        elif text[i + 1] == "0":
            out.append("-")
            i += 2
        else:
            end = text.index("_", i + 1)
            out.append(chr(int(text[i + 1 : end])))
            i = end + 1
    return "".join(out)


def test_a_new_table_with_one_partition_per_split() -> None:
    spark = StandInSpark()
    register_hive_table(spark, "mlops.toy_features", spec(), FEATURES)
    create_database, create_table, *partitions = spark.statements
    assert create_database == "CREATE DATABASE IF NOT EXISTS mlops LOCATION 's3a://lake/warehouse/mlops.db'"
    assert create_table == (
        "CREATE TABLE mlops.toy_features (`x` FLOAT, `c=a` FLOAT, `c=__other__` FLOAT, label INT, "
        "snapshot_id STRING, split STRING) USING parquet PARTITIONED BY (snapshot_id, split) "
        "LOCATION 's3a://lake/datasets/toy/features'"
    )
    assert partitions == [
        f"ALTER TABLE mlops.toy_features ADD IF NOT EXISTS PARTITION (snapshot_id='snap1', split='{name}') "
        f"LOCATION 's3a://lake/datasets/toy/features/snap1/{name}'"
        for name in ("train", "validation", "test")
    ]


def test_the_same_columns_keep_the_table() -> None:
    spark = StandInSpark()
    register_hive_table(spark, "mlops.toy_features", spec(), FEATURES)
    spark.statements.clear()
    register_hive_table(spark, "mlops.toy_features", spec(), S3Uri("lake", "datasets/toy/features/snap2"))
    assert not any(s.startswith(("DROP", "CREATE TABLE")) for s in spark.statements)
    assert sum(s.startswith("ALTER TABLE") for s in spark.statements) == 3


def test_changed_columns_recreate_the_external_table() -> None:
    spark = StandInSpark()
    register_hive_table(spark, "mlops.toy_features", spec(), FEATURES)
    spark.statements.clear()
    register_hive_table(spark, "mlops.toy_features", spec(task="regression", numeric=("x", "z")), FEATURES)
    assert spark.statements[1] == "DROP TABLE mlops.toy_features"
    assert spark.statements[2].startswith("CREATE TABLE mlops.toy_features (`x` FLOAT, `z` FLOAT,")
    assert "label DOUBLE" in spark.statements[2]
