"""ml.preprocess.hive: the table name, and the statements that register a snapshot's splits, on a stand-in session that
records them (a real metastore is exercised by tests/integration/ml/preprocess/test_job.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ml.features import CategoricalFeature, FeatureSpec, NumericFeature
from ml.preprocess.hive import HIVE_DATABASE, hive_table_name, register_hive_table
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
    assert hive_table_name("My-Data.v2") == "mlops.my_data_v2_features"


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
