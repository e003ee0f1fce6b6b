"""The Spark preprocessing application (`spark-submit ml/spark_preprocess.py --dataset D --snapshot S`).

Reads a snapshot through s3a (CSV by header, RFC 4180 quoting, as the ingest check read it), cleans it (types,
non-finite values, blank strings and the usual null spellings, duplicates, rows without a target) in one scan of the
input, splits it deterministically by a hash of each row's content (stable across re-runs and partitionings), fits the
transform on the training split only (means/stds of numerics, frequent categories), writes the Parquet splits and
`feature_spec.json` (last: it marks the features complete), and registers the splits as partitions of a Hive table.
Only built-in column expressions run on executors, so executors need nothing from this package.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import Any

from ml.features import (
    BOOLEAN_SPELLINGS,
    INTEGRAL_DECIMAL_PATTERN,
    LABEL_COLUMN,
    NUMBER_PATTERN,
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
)
from ml.storage import DataError, S3Uri, exists, features_uri, read_json, s3_client, snapshot_uri

log = logging.getLogger("ml.spark_preprocess")

SPLITS = ("train", "validation", "test")
HIVE_DATABASE = "mlops"
RESULT_MARKER = "PREPROCESS_RESULT "
# Strings that mean "no value" (pyarrow's CSV defaults, which the ingest check used): missing, never a category.
NULL_TOKENS = (
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "n/a",
    "nan",
    "null",
)


def hive_table_name(dataset: str) -> str:
    return f"{HIVE_DATABASE}.{re.sub(r'[^a-z0-9_]', '_', dataset.lower())}_features"


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def preprocess(
    spark: Any,
    dataset: str,
    snapshot_id: str,
    *,
    seed: int = 42,
    split_shares: tuple[float, float] = (0.8, 0.1),
    max_categories: int = 20,
    min_category_count: int = 1,
    force: bool = False,
) -> dict[str, Any]:
    """Run the whole preprocessing of one snapshot; returns a small JSON-able summary."""
    from pyspark.sql import functions as F

    client = s3_client()
    snapshot = snapshot_uri(dataset, snapshot_id)
    manifest_uri = snapshot.join("manifest.json")
    if not exists(manifest_uri, client):
        raise DataError(
            f"{manifest_uri} does not exist: snapshot {snapshot_id} of {dataset!r} is missing or "
            "incomplete; run ingest first"
        )
    manifest = read_json(manifest_uri, client)
    out = features_uri(dataset, snapshot_id)
    spec_uri = out.join("feature_spec.json")
    table = hive_table_name(dataset)
    if exists(spec_uri, client) and not force:
        spec = FeatureSpec.from_json(client.get_object(Bucket=spec_uri.bucket, Key=spec_uri.key)["Body"].read())
        log.info("features of snapshot %s already exist at %s: skipped", snapshot_id, out)
        _register_hive_table(spark, table, spec, out)
        return _summary(spec, out, spec_uri, table, skipped=True)

    if exists(spec_uri, client):
        # Forced: the old spec goes first, so a run that dies while rewriting the splits leaves no spec beside them
        # (a spec is what marks the features complete).
        client.delete_object(Bucket=spec_uri.bucket, Key=spec_uri.key)
        log.info("forced: removed %s before rewriting the features", spec_uri)

    target, task = manifest["target"], manifest["task"]
    kinds: dict[str, str] = {name: kind for name, kind in manifest["columns"].items() if kind != "empty"}
    numeric = [name for name, kind in kinds.items() if kind == "numeric" and name != target]
    categorical = [name for name, kind in kinds.items() if kind == "categorical" and name != target]

    # Read every snapshot object. Spark would apply the first CSV file's header to all files by position, so files
    # are read in groups of the same header (and, for Parquet, the same types) and unioned by name.
    groups: dict[tuple[Any, ...], list[str]] = {}
    for obj in manifest["objects"]:
        signature = tuple(obj.get("columns") or ()), tuple(obj.get("types") or ()) if obj["format"] == "parquet" else ()
        groups.setdefault((obj["format"], *signature), []).append(S3Uri.parse(obj["snapshot_uri"]).s3a)
    frames = []
    for (fmt, *_), paths in sorted(groups.items(), key=lambda item: item[1][0]):
        if fmt == "csv":
            # CSV columns arrive as strings and are cast below; `""` inside quotes is a quote, as in pyarrow.
            frame = spark.read.options(header=True, mode="PERMISSIVE", escape='"').csv(paths)
        else:
            frame = spark.read.parquet(*paths)
        frames.append(frame.select(*[F.col(_quote(name)) for name in kinds]))
    # A column typed differently in different files (CSV strings, Parquet numbers or booleans) is read as strings
    # everywhere, and cleaned below like CSV.
    mixed = {name for name in kinds if len({dict(frame.dtypes)[name] for frame in frames}) > 1}
    if mixed:
        frames = [
            frame.select(*[F.col(_quote(n)).cast("string").alias(n) if n in mixed else F.col(_quote(n)) for n in kinds])
            for frame in frames
        ]
    raw = frames[0]
    for frame in frames[1:]:
        raw = raw.unionByName(frame)
    types = dict(raw.dtypes)

    # Clean: numbers as doubles (anything but a plain decimal number, and non-finite values -> null), categories as
    # strings keyed like `normalise_category` (blank and null spellings -> null).
    # Two projections, so that each parsed value is computed once and then only referenced (nesting the expressions
    # made Spark evaluate copies of the regular expressions: it cost more than the whole scan).
    def parse_number(name: str) -> Any:
        value = F.expr(f"try_cast({_quote(name)} as double)")
        return F.when(F.col(_quote(name)).rlike(NUMBER_PATTERN), value) if types[name] == "string" else value

    def parse_category(name: str) -> Any:
        column = F.col(_quote(name))
        text = F.trim(column.cast("string"))
        if types[name] in ("float", "double"):
            # 3.0 is category "3", as in Python (the bound keeps the cast exact and clear of overflow).
            integral = (F.abs(column) < 1e15) & (column == F.floor(column))
            text = F.when(integral, column.cast("bigint").cast("string")).otherwise(text)
        # "3.0" and "3" are the same category, as in `normalise_category`.
        return F.regexp_replace(text, INTEGRAL_DECIMAL_PATTERN, "$1")

    def clean_number(name: str) -> Any:
        value = F.col(_quote(name))
        return F.when(F.isnan(value) | (F.abs(value) == float("inf")), None).otherwise(value)

    def clean_category(name: str) -> Any:
        text = F.col(_quote(name))
        cleaned = F.when((text == "") | text.isin(*NULL_TOKENS), None)
        for key in sorted(set(BOOLEAN_SPELLINGS.values())):  # "True" and "true" are one category
            cleaned = cleaned.when(text.isin(*[s for s, k in BOOLEAN_SPELLINGS.items() if k == key]), F.lit(key))
        return cleaned.otherwise(text)

    regression = task == "regression"
    parsed = raw.select(
        *[parse_number(name).alias(name) for name in numeric],
        *[parse_category(name).alias(name) for name in categorical],
        (parse_number(target) if regression else parse_category(target)).alias("__target"),
    )
    cleaned = parsed.select(
        *[clean_number(name).alias(name) for name in numeric],
        *[clean_category(name).alias(name) for name in categorical],
        (clean_number("__target") if regression else clean_category("__target")).alias("__target"),
    )
    rows_in = manifest["rows"]
    # One scan of the input: drop rows without a target and duplicates (counting the copies of each distinct row).
    value_columns = [F.col(_quote(c)) for c in cleaned.columns]
    deduplicated = (
        cleaned.where(F.col("__target").isNotNull()).groupBy(*value_columns).agg(F.count(F.lit(1)).alias("__copies"))
    )
    # Deterministic split: a hash of the row's content, independent of partitioning and order.
    bucket = F.pmod(F.xxhash64(*value_columns, F.lit(seed)), F.lit(10_000))
    train_edge, validation_edge = int(split_shares[0] * 10_000), int(sum(split_shares) * 10_000)
    split = (
        F.when(bucket < train_edge, "train")
        .when(bucket < validation_edge, "validation")
        .otherwise("test")
        .alias("split")
    )
    prepared = deduplicated.select(*value_columns, split, "__copies").persist()
    totals = prepared.groupBy("split").agg(F.count(F.lit(1)).alias("rows"), F.sum("__copies").alias("copies"))
    counts, with_target = {}, 0
    for row in totals.collect():
        counts[row["split"]] = int(row["rows"])
        with_target += int(row["copies"])
    rows_kept = sum(counts.values())
    without_target = rows_in - with_target
    log.info(
        "read %d rows: %d without target, %d duplicates, %s",
        rows_in,
        without_target,
        rows_in - without_target - rows_kept,
        counts,
    )
    if counts.get("train", 0) == 0:
        raise DataError(f"snapshot {snapshot_id} of {dataset!r}: no training rows left after cleaning")

    # Fit on the training split only, in one pass for the numerics.
    train = prepared.where(F.col("split") == "train")
    stats = (
        train.select(
            *[F.mean(_quote(n)).alias(f"mean_{i}") for i, n in enumerate(numeric)],
            *[F.stddev_pop(_quote(n)).alias(f"std_{i}") for i, n in enumerate(numeric)],
        ).first()
        if numeric
        else None
    )
    numeric_features = []
    for i, name in enumerate(numeric):
        mean = stats[f"mean_{i}"] if stats is not None else None
        std = stats[f"std_{i}"] if stats is not None else None
        # 12 significant digits: a re-run on another partitioning (another summation order) gives the same spec.
        mean = _stable(mean) if mean is not None else 0.0
        std = _stable(std) if std else 1.0
        # Missing values take the training mean, i.e. 0 after standardising.
        numeric_features.append(NumericFeature(name=name, fill=mean, mean=mean, std=std))
    categorical_features = []
    for name in categorical:
        frequent = (
            train.where(F.col(_quote(name)).isNotNull())
            .groupBy(_quote(name))
            .count()
            .where(F.col("count") >= min_category_count)
            .orderBy(F.desc("count"), F.asc(_quote(name)))
            .limit(max_categories)
            .collect()
        )
        categorical_features.append(CategoricalFeature(name=name, categories=[str(row[0]) for row in frequent]))
    classes = None
    if task == "classification":
        classes = sorted(str(row[0]) for row in prepared.select("__target").distinct().collect())
    spec = FeatureSpec(
        dataset=dataset,
        snapshot_id=snapshot_id,
        task=task,
        target=target,
        numeric=numeric_features,
        categorical=categorical_features,
        classes=classes,
        rows={s: int(counts.get(s, 0)) for s in SPLITS},
        dropped={"without_target": int(without_target), "duplicates": int(rows_in - without_target - rows_kept)},
    )

    # Transform every split with the training statistics; features as float32 to halve the Parquet.
    columns = []
    for feature in numeric_features:
        value = F.coalesce(F.col(_quote(feature.name)), F.lit(feature.fill))
        columns.append(((value - F.lit(feature.mean)) / F.lit(feature.std)).cast("float").alias(feature.name))
    for cat in categorical_features:
        known = F.col(_quote(cat.name)).isin(cat.categories) if cat.categories else F.lit(False)
        for category, column in zip(cat.categories, cat.columns(), strict=False):
            columns.append(F.when(F.col(_quote(cat.name)) == category, 1.0).otherwise(0.0).cast("float").alias(column))
        columns.append(F.when(known, 0.0).otherwise(1.0).cast("float").alias(cat.columns()[-1]))
    if classes is not None:
        label = (F.array_position(F.array(*[F.lit(c) for c in classes]), F.col("__target")) - 1).cast("int")
    else:
        label = F.col("__target").cast("double")
    transformed = prepared.select(*columns, label.alias(LABEL_COLUMN), "split")
    for name in SPLITS:
        target_uri = out.join(name)
        # Overwrite replaces whatever a failed earlier attempt left; the spec below is written only after all three.
        # About one file per 500k rows: no swarm of tiny files for small data.
        files = max(1, min(spark.sparkContext.defaultParallelism, counts.get(name, 0) // 500_000 + 1))
        split_frame = transformed.where(F.col("split") == name).drop("split").coalesce(files)
        split_frame.write.mode("overwrite").parquet(target_uri.s3a)
        log.info("wrote %s split (%d rows) to %s", name, counts.get(name, 0), target_uri)
    prepared.unpersist()
    client.put_object(
        Bucket=spec_uri.bucket, Key=spec_uri.key, Body=spec.to_json().encode(), ContentType="application/json"
    )
    _register_hive_table(spark, table, spec, out)
    return _summary(spec, out, spec_uri, table, skipped=False)


def _stable(value: float) -> float:
    return float(f"{float(value):.12g}")


def _register_hive_table(spark: Any, table: str, spec: FeatureSpec, out: S3Uri) -> None:
    """One table per dataset, partitioned by snapshot and split; a schema change recreates the (external) table."""
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
        columns = ", ".join(f"{_quote(c)} FLOAT" for c in spec.feature_columns)
        dataset_root = out.s3a.rsplit("/", 1)[0]
        spark.sql(
            f"CREATE TABLE {table} ({columns}, {LABEL_COLUMN} {label_type}, snapshot_id STRING, split STRING) "
            f"USING parquet PARTITIONED BY (snapshot_id, split) LOCATION '{dataset_root}'"
        )
    for name in SPLITS:
        spark.sql(
            f"ALTER TABLE {table} ADD IF NOT EXISTS PARTITION (snapshot_id='{spec.snapshot_id}', split='{name}') "
            f"LOCATION '{out.join(name).s3a}'"
        )
    log.info("Hive table %s: partitions of snapshot %s registered", table, spec.snapshot_id)


def _summary(spec: FeatureSpec, out: S3Uri, spec_uri: S3Uri, table: str, *, skipped: bool) -> dict[str, Any]:
    return {
        "dataset": spec.dataset,
        "snapshot_id": spec.snapshot_id,
        "task": spec.task,
        "features_uri": str(out),
        "feature_spec_uri": str(spec_uri),
        "hive_table": table,
        "rows": spec.rows,
        "dropped": spec.dropped,
        "num_features": len(spec.feature_columns),
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spark-submit ml/spark_preprocess.py", description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--snapshot", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-categories", type=int, default=20)
    parser.add_argument("--min-category-count", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="recompute even if the features exist")
    args = parser.parse_args(argv)
    # force: pyspark may have configured the root logger already.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"preprocess-{args.dataset}-{args.snapshot}").enableHiveSupport().getOrCreate()
    try:
        result = preprocess(
            spark,
            args.dataset,
            args.snapshot,
            seed=args.seed,
            max_categories=args.max_categories,
            min_category_count=args.min_category_count,
            force=args.force,
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    print(RESULT_MARKER + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
