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


def hive_table_name(dataset: str) -> str:
    return f"{HIVE_DATABASE}.{re.sub(r'[^a-z0-9_]', '_', dataset.lower())}_features"


def register_hive_table(spark: Any, table: str, spec: FeatureSpec, features: S3Uri) -> None:
    """Add the snapshot's splits as partitions; a schema change recreates the (external) table, the data stays."""
    database = table.split(".")[0]
    warehouse = spark.conf.get("spark.sql.warehouse.dir")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database} LOCATION '{warehouse}/{database}.db'")
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
