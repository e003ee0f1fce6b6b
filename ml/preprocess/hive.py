"""The Hive table of a dataset's features: one external table, partitioned by snapshot and split, over the Parquet
splits in the lake (Spark SQL with Hive support)."""

from __future__ import annotations

import logging
import re
from typing import Any

from ml.features import LABEL_COLUMN, SPLITS, FeatureSpec
from ml.preprocess.steps import quote
from ml.storage import S3Uri

log = logging.getLogger(__name__)

HIVE_DATABASE = "mlops"
MAX_HIVE_NAME = 256  # the metastore's TBLS.TBL_NAME is a VARCHAR(256) (Hive 2.3's package.jdo, as Spark ships it)
_PLAIN = re.compile(r"[a-z0-9][a-z0-9_]*")


def hive_table_name(dataset: str, kind: str = "features") -> str:
    """`mlops.<name>_<kind>` (`features`, `predictions`), one table per dataset name and kind: distinct names never
    share a table.

    A name of lowercase letters, digits and underscores that starts with a letter or digit is kept as it is (its table
    exists already: renaming it would orphan it). Any other name is escaped behind a leading `_`, which no kept name
    has: `_` becomes `__`, an upper-case ASCII letter `_` + the letter in lower case, `-` `_0`, and any other character
    `_<decimal code point>_` (`My-Data.v2` -> `__my_0_data_46_v2`). The escaping can be read back, hence no two names
    meet; it keeps Hive's characters, and Spark takes the leading `_` unquoted (Hive's own CLI wants it in backticks).
    """
    if not dataset or any(ord(char) < 32 for char in dataset):  # NUL's code point, 0, would also read as `-`
        raise ValueError(f"dataset {dataset!r} is empty or has control characters: no Hive table name for it")
    name = dataset if _PLAIN.fullmatch(dataset) else "_" + "".join(_escape(char) for char in dataset)
    table = f"{name}_{kind}"
    if len(table) > MAX_HIVE_NAME:
        raise ValueError(
            f"dataset {dataset!r} makes a Hive table name of {len(table)} characters, over the metastore's "
            f"{MAX_HIVE_NAME}: use a shorter name (or fewer characters outside a-z 0-9 _)"
        )
    return f"{HIVE_DATABASE}.{table}"


def _escape(char: str) -> str:
    # After a `_`, the next character says what follows: `_`, a letter, `0`, or 1-9 (a code point up to the next `_`).
    if "a" <= char <= "z" or "0" <= char <= "9":
        return char
    if char == "_":
        return "__"
    if "A" <= char <= "Z":
        return "_" + char.lower()
    if char == "-":  # the one other character the DAG's dataset param allows: kept short, for Hive's length limit
        return "_0"
    return f"_{ord(char)}_"


def create_database(spark: Any, table: str) -> None:
    """The database of `mlops.<table>`, in the warehouse (the lake bucket), unless it exists."""
    database = table.split(".")[0]
    warehouse = spark.conf.get("spark.sql.warehouse.dir")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database} LOCATION '{warehouse}/{database}.db'")


def register_hive_table(spark: Any, table: str, spec: FeatureSpec, features: S3Uri) -> None:
    """Add the snapshot's splits as partitions; a schema change recreates the (external) table, the data stays."""
    create_database(spark, table)
    label_type = "INT" if spec.task == "classification" else "DOUBLE"
    wanted = [(c, "float") for c in spec.feature_columns] + [(LABEL_COLUMN, label_type.lower())]
    if spark.catalog.tableExists(table):
        existing = [(f.name, f.dataType.simpleString()) for f in spark.table(table).schema.fields]
        if existing[: len(wanted)] != wanted:
            log.info("features of %s changed columns: recreating table %s (data is kept in S3)", spec.dataset, table)
            spark.sql(f"DROP TABLE {table}")
    if not spark.catalog.tableExists(table):
        columns = ", ".join(f"{quote(c)} FLOAT" for c in spec.feature_columns)
        dataset_root = features.s3a.rsplit("/", 1)[0]
        spark.sql(
            f"CREATE TABLE {table} ({columns}, {LABEL_COLUMN} {label_type}, snapshot_id STRING, split STRING) "
            f"USING parquet PARTITIONED BY (snapshot_id, split) LOCATION '{dataset_root}'"
        )
    for name in SPLITS:
        spark.sql(
            f"ALTER TABLE {table} ADD IF NOT EXISTS PARTITION (snapshot_id='{spec.snapshot_id}', split='{name}') "
            f"LOCATION '{features.join(name).s3a}'"
        )
    log.info("Hive table %s: partitions of snapshot %s registered", table, spec.snapshot_id)
