"""The batch scoring application: `spark-submit ml/scoring/job.py --dataset D --model-json M --date YYYY-MM-DD
[--table T | --raw-uri s3://raw/D/]`.

Reads the input (a raw CSV/Parquet prefix, read as ingest reads it, or a Hive table), checks that it has every input
column of the model's feature spec, scores it with mapInPandas (ml.scoring.score: the model loaded once per Python
worker) and writes `mlops.<dataset>_predictions`, partitioned by `score_date` and `model_version`. The write is an
`insertInto(overwrite=True)` under dynamic partition overwrite: a re-run of the same date and version replaces
exactly its partition, and a failed run leaves the previous partition as it was. Bad input (no such table or prefix,
missing columns, a table whose columns changed) fails before anything is written, with an `error: ...` line.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
from typing import Any

from ml.clock import utc_now_iso
from ml.features import FeatureSpec
from ml.preprocess.application import run_spark_application
from ml.preprocess.hive import create_database, hive_table_name
from ml.preprocess.steps import quote, spark_path
from ml.scoring.model import ScoringModel
from ml.scoring.score import ERROR, PREDICTION, PROBABILITIES, SCORE_COLUMNS, batch_scorer, load_from_s3
from ml.settings import S3Settings
from ml.storage import DataError, S3Uri, read_json

log = logging.getLogger("ml.scoring.job")

RESULT_MARKER = "SCORE_RESULT "
PARTITION_COLUMNS = ("score_date", "model_version")
META_COLUMNS = ("model_name", "scored_at")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def read_input(spark: Any, *, table: str | None, raw_uri: str | None, s3_client: Any) -> Any:
    """The rows to score: a Hive table, or every CSV/Parquet object under a raw prefix (each file read by its own
    header, as ingest reads it, then unioned by column name)."""
    from pyspark.sql.utils import AnalysisException

    from ml.ingest.read import format_of, source_objects

    if table:
        try:
            return spark.table(table)
        except AnalysisException as error:
            raise DataError(f"input table {table!r} cannot be read: {str(error).splitlines()[0]}") from None
    assert raw_uri
    frames = []
    for obj in source_objects(S3Uri.parse(raw_uri), s3_client):
        path = spark_path(f"s3://{S3Uri.parse(raw_uri).bucket}/{obj['Key']}")
        if format_of(obj["Key"]) == "csv":
            frames.append(spark.read.options(header=True, mode="PERMISSIVE", escape='"').csv(path))
        else:
            frames.append(spark.read.parquet(path))
    rows = frames[0]
    for frame in frames[1:]:
        if sorted(frame.columns) != sorted(rows.columns):
            raise DataError(
                f"{raw_uri}: the files do not all have the same columns ({rows.columns} vs {frame.columns})"
            )
        rows = rows.unionByName(frame)
    return rows


def scored_schema(rows: Any, spec: FeatureSpec) -> Any:
    """The input's columns, then the score columns (mapInPandas' output schema)."""
    from pyspark.sql import types as T

    prediction = T.StringType() if spec.task == "classification" else T.DoubleType()
    return T.StructType(
        [
            *rows.schema.fields,
            T.StructField(PREDICTION, prediction),
            T.StructField(PROBABILITIES, T.MapType(T.StringType(), T.DoubleType())),
            T.StructField(ERROR, T.StringType()),
        ]
    )


def check_input(rows: Any, spec: FeatureSpec, source: str) -> None:
    """Every input column of the spec present, and no column named like one the job adds."""
    missing = [name for name in spec.input_columns if name not in rows.columns]
    if missing:
        raise DataError(f"{source}: missing the model's input columns {missing} (it has {rows.columns})")
    clashes = sorted(set(rows.columns) & {*SCORE_COLUMNS, *META_COLUMNS, *PARTITION_COLUMNS})
    if clashes:
        raise DataError(f"{source}: columns {clashes} clash with the columns batch scoring writes: rename them")


def ensure_table(spark: Any, table: str, scored: Any) -> None:
    """Create the predictions table for this schema, or check that the existing one has it (insertInto writes by
    position: a changed input would land in the wrong columns, and other dates' partitions must stay)."""
    create_database(spark, table)
    if spark.catalog.tableExists(table):
        have = [(f.name, f.dataType.simpleString()) for f in spark.table(table).schema.fields]
        want = [(f.name, f.dataType.simpleString()) for f in scored.schema.fields]
        if have != want:
            raise DataError(f"table {table} has columns {have}, this run writes {want}: score into another table")
        return
    columns = ", ".join(f"{quote(f.name)} {f.dataType.simpleString()}" for f in scored.schema.fields)
    spark.sql(f"CREATE TABLE {table} ({columns}) USING parquet PARTITIONED BY ({', '.join(PARTITION_COLUMNS)})")
    log.info("created table %s", table)


def score(
    spark: Any,
    rows: Any,
    *,
    spec: FeatureSpec,
    model: ScoringModel,
    score_date: str,
    load: Any,
    scored_at: str | None = None,
) -> Any:
    """The scored DataFrame: input columns, score columns, model name, scoring time, then the partition columns."""
    from pyspark.sql import functions as F

    scorer = batch_scorer((model.name, model.version), load)
    scored = rows.mapInPandas(scorer, schema=scored_schema(rows, spec))
    return scored.select(
        *[F.col(quote(c)) for c in scored.columns],
        F.lit(model.name).alias("model_name"),
        F.to_timestamp(F.lit(scored_at or utc_now_iso())).alias("scored_at"),
        F.lit(score_date).alias("score_date"),
        F.lit(model.version).alias("model_version"),
    )


def write_partition(spark: Any, scored: Any, table: str) -> None:
    """Replace exactly this run's (score_date, model_version) partition: dynamic partition overwrite."""
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    ensure_table(spark, table, scored)
    scored.write.insertInto(table, overwrite=True)


def run(
    spark: Any,
    *,
    dataset: str,
    model: ScoringModel,
    score_date: str,
    s3: S3Settings,
    s3_client: Any,
    table: str | None = None,
    raw_uri: str | None = None,
) -> dict[str, Any]:
    """Score the input into the dataset's predictions table; returns a small JSON-able summary."""
    from pyspark.sql import functions as F

    if not _DATE.fullmatch(score_date):
        raise DataError(f"--date {score_date!r} is not YYYY-MM-DD")
    spec = FeatureSpec.from_dict(read_json(S3Uri.parse(model.feature_spec_uri), s3_client))
    rows = read_input(spark, table=table, raw_uri=raw_uri, s3_client=s3_client)
    check_input(rows, spec, table or str(raw_uri))
    load = functools.partial(load_from_s3, model.checkpoint_uri, spec.to_json(), s3)
    out_table = hive_table_name(dataset, "predictions")
    scored = score(spark, rows, spec=spec, model=model, score_date=score_date, load=load)
    write_partition(spark, scored, out_table)
    partition = spark.table(out_table).where(
        (F.col("score_date") == score_date) & (F.col("model_version") == model.version)
    )
    counts = partition.agg(F.count("*").alias("rows"), F.count(ERROR).alias("refused")).first()
    if counts["refused"]:
        log.warning("%d of %d rows refused (see the `error` column)", counts["refused"], counts["rows"])
    return {
        "dataset": dataset,
        "table": out_table,
        "input": table or raw_uri,
        "model": model.name,
        "model_version": model.version,
        "score_date": score_date,
        "rows": int(counts["rows"]),
        "refused_rows": int(counts["refused"]),
    }


def main(argv: list[str] | None = None) -> int:
    """The application's entry point: arguments from spark-submit, S3 settings from its environment."""
    parser = argparse.ArgumentParser(prog="spark-submit ml/scoring/job.py", description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model-json", required=True, help="ScoringModel as JSON (ml.scoring.model)")
    parser.add_argument("--date", required=True, help="the run's logical date, YYYY-MM-DD: the partition")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", help="Hive table to score")
    source.add_argument("--raw-uri", help="raw CSV/Parquet prefix to score, e.g. s3://raw/penguins/")
    args = parser.parse_args(argv)
    model = ScoringModel.from_dict(json.loads(args.model_json))

    def work(spark: Any, s3: S3Settings) -> dict[str, Any]:
        from ml.clients import s3_client

        return run(
            spark,
            dataset=args.dataset,
            model=model,
            score_date=args.date,
            s3=s3,
            s3_client=s3_client(s3),
            table=args.table,
            raw_uri=args.raw_uri,
        )

    return run_spark_application(f"score-{args.dataset}-{args.date}", RESULT_MARKER, work)


if __name__ == "__main__":
    sys.exit(main())
