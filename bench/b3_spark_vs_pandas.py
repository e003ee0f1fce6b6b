"""B3: our Spark preprocessing rows/s / pandas rows/s on the same file, same transforms, warm session.

Target (DESIGN.md): >= 0.8 on 2 cores (a straightforward Spark job measured 0.48), >= 2 where 16 cores are available.

Both sides read the same CSV object (the ingested snapshot's copy in the local S3 server) and write Parquet splits back
to it. Ours is `ml.preprocess.job.preprocess` in this process on a SparkSession built from
`ml.preprocess.conf.spark_conf()` (run twice; the second, warm run is the one compared). The baseline is what a pandas
user would write for the same transforms: read the CSV, clean (numbers, non-finite -> missing, trimmed categories,
blank -> missing), drop rows without a target and duplicates, split by a hash of each row, fit means/stds/top
categories on train only, fill and standardise, one-hot, and write one Parquet file per split.

    python -m stack run -- .venv/bin/python -m bench.b3_spark_vs_pandas --rows 200000    # a quick check
    python -m stack run -- .venv/bin/python -m bench.b3_spark_vs_pandas                  # 10M rows, as DESIGN says
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import argument_parser, benchmark_settings, ratio, report, timed
from ml.settings import Settings

SPLITS = ("train", "validation", "test")


def make_input(rows: int, seed: int, client: Any, bucket: str) -> tuple[str, int]:
    """The synthetic CSV in the raw bucket (reused when already there); returns its key and size."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from ml.datasets import synthetic

    key = f"bench/b3/synthetic-{rows}-seed{seed}.csv"
    try:
        return key, int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except client.exceptions.ClientError:
        pass
    frame = synthetic(rows, seed=seed)
    with tempfile.TemporaryDirectory(prefix="b3-") as folder:
        path = Path(folder) / "data.csv"
        pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), str(path))
        del frame
        client.upload_file(str(path), bucket, key)
        return key, path.stat().st_size


def spark_session(settings: Settings, master: str, driver_memory: str, metastore_dir: str) -> Any:
    from pyspark.sql import SparkSession

    from ml.preprocess.conf import spark_conf, spark_submit_env

    # A metastore of its own: the project's Derby metastore admits one JVM at a time (tests may be using it).
    spark_settings = dataclasses.replace(settings.spark, metastore_dir=metastore_dir)
    conf = spark_conf(spark_settings, settings.s3, settings.lake)
    # The in-process JVM inherits this process's environment, where s3a finds the credentials (as the environment
    # of spark-submit gives them to the pipeline's job).
    os.environ.update(spark_submit_env(spark_settings, settings.s3))
    builder = SparkSession.builder.master(master).appName("bench-b3").config("spark.driver.memory", driver_memory)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.enableHiveSupport().getOrCreate()


def pandas_preprocess(
    client: Any,
    source: Any,
    out: Any,
    columns: dict[str, str],
    target: str,
    *,
    max_categories: int = 20,
    shares: tuple[float, float] = (0.8, 0.1),
) -> dict[str, int]:
    """The same transforms in plain pandas; returns rows per split."""
    import numpy as np
    import pandas as pd

    body = client.get_object(Bucket=source.bucket, Key=source.key)["Body"].read()
    frame = pd.read_csv(io.BytesIO(body))
    del body
    numeric = [c for c, kind in columns.items() if kind == "numeric" and c != target]
    categorical = [c for c, kind in columns.items() if kind == "categorical" and c != target]

    def category(series: pd.Series) -> pd.Series:
        text = series.astype("string").str.strip()
        return text.mask(text == "")

    cleaned = pd.DataFrame(
        {c: pd.to_numeric(frame[c], errors="coerce").replace([np.inf, -np.inf], np.nan) for c in numeric}
    )
    for c in categorical:
        cleaned[c] = category(frame[c])
    cleaned["__target"] = category(frame[target])
    del frame
    cleaned = cleaned[cleaned["__target"].notna()].drop_duplicates()
    bucket = pd.util.hash_pandas_object(cleaned, index=False).to_numpy() % np.uint64(10_000)
    edges = np.uint64(int(shares[0] * 10_000)), np.uint64(int(sum(shares) * 10_000))
    split = np.where(bucket < edges[0], 0, np.where(bucket < edges[1], 1, 2))
    train = cleaned[split == 0]
    means = train[numeric].mean()
    stds = train[numeric].std(ddof=0).replace(0.0, 1.0).fillna(1.0)
    categories = {c: train[c].value_counts().head(max_categories).index.tolist() for c in categorical}
    classes = sorted(cleaned["__target"].unique())

    features: dict[str, Any] = {}
    for c in numeric:
        features[c] = ((cleaned[c].fillna(means[c]) - means[c]) / stds[c]).astype(np.float32)
    for c in categorical:
        values = cleaned[c]
        for value in categories[c]:
            features[f"{c}={value}"] = (values == value).fillna(False).astype(np.float32)
        features[f"{c}=__other__"] = (~values.isin(categories[c])).astype(np.float32)
    features["label"] = pd.Categorical(cleaned["__target"], categories=classes).codes.astype(np.int32)
    transformed = pd.DataFrame(features)
    rows = {}
    for index, name in enumerate(SPLITS):
        part = transformed[split == index]
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
        buffer.seek(0)
        key = out.join(name, "part-00000.parquet")
        client.upload_fileobj(buffer, key.bucket, key.key)
        rows[name] = len(part)
    return rows


def main(argv: list[str] | None, settings: Settings) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--master", default=settings.spark.master, help="default: the settings' Spark master")
    parser.add_argument("--driver-memory", default="6g", help="for the in-process driver (1g runs out of heap at 10M)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs in the lake (default: delete them)")
    args = parser.parse_args(argv)

    from ml.clients import s3_client
    from ml.ingest.config import IngestConfig
    from ml.ingest.snapshot import ingest
    from ml.preprocess.job import preprocess
    from ml.storage import S3Uri, delete_prefix, features_uri, lake_root, read_json

    lake = settings.lake
    client = s3_client(settings.s3)
    key, size = make_input(args.rows, args.seed, client, lake.raw_bucket)
    dataset = f"bench_b3_{args.rows}"
    ingested, ingest_seconds = timed(
        lambda: ingest(IngestConfig(f"s3://{lake.raw_bucket}/{key}", dataset, "target"), s3=settings.s3, lake=lake)
    )
    manifest = read_json(S3Uri.parse(ingested.manifest_uri), client)
    snapshot_object = S3Uri.parse(manifest["objects"][0]["snapshot_uri"])

    def ours() -> dict[str, Any]:
        return preprocess(spark, dataset, ingested.snapshot_id, lake=lake, s3_client=client, force=True)

    with tempfile.TemporaryDirectory(prefix="b3-metastore-") as metastore:
        spark = spark_session(settings, args.master, args.driver_memory, metastore)
        try:
            cores = spark.sparkContext.defaultParallelism
            cold, cold_seconds = timed(ours)
            warm, warm_seconds = timed(ours)
        finally:
            spark.stop()

    pandas_out = lake_root(lake).join("bench", "b3-pandas", dataset)
    pandas_rows, pandas_seconds = timed(
        lambda: pandas_preprocess(client, snapshot_object, pandas_out, manifest["columns"], manifest["target"])
    )
    if not args.keep:
        delete_prefix(features_uri(lake, dataset, ingested.snapshot_id), client)
        delete_prefix(S3Uri(pandas_out.bucket, pandas_out.key + "/"), client)

    spark_kept, pandas_kept = sum(warm["rows"].values()), sum(pandas_rows.values())
    spark_rate, pandas_rate = args.rows / warm_seconds, args.rows / pandas_seconds
    result = {
        "name": "B3 Spark preprocessing rows/s / pandas rows/s (same file, same transforms, warm session)",
        "ratio": ratio(spark_rate, pandas_rate),
        "target": ">= 0.8 on 2 cores, >= 2 on 16 cores",
        "rows": args.rows,
        "csv_bytes": size,
        "spark": {
            "master": args.master,
            "parallelism": cores,
            "driver_memory": args.driver_memory,
            "warm_seconds": round(warm_seconds, 2),
            "cold_seconds": round(cold_seconds, 2),
            "rows_per_second": round(spark_rate),
            "rows_kept": spark_kept,
            "splits": warm["rows"],
            "features": warm["num_features"],
            "first_run_rows": sum(cold["rows"].values()),
        },
        "pandas": {
            "seconds": round(pandas_seconds, 2),
            "rows_per_second": round(pandas_rate),
            "rows_kept": pandas_kept,
            "splits": pandas_rows,
            "read_csv_engine": "c (default)",
        },
        "same_rows_kept": spark_kept == pandas_kept,
        "ingest_seconds": round(ingest_seconds, 2),
        "ingest_created_snapshot": ingested.created,
    }
    return report("b3_spark_vs_pandas", result)


if __name__ == "__main__":
    main(sys.argv[1:], benchmark_settings())
