"""The Spark preprocessing application: `spark-submit ml/preprocess/job.py --dataset D --snapshot S --lake-bucket B`.

Reads a snapshot through s3a, cleans it (types, non-finite values, blank strings and the usual null spellings,
duplicates, rows without a target) in one scan of the input, splits it deterministically by a hash of each row's
content, fits the transform on the training split only (means/stds of numerics, frequent categories) and the
training distributions the drift monitor compares with (ml.preprocess.distributions), writes the Parquet splits,
`training_distributions.json` and `feature_spec.json` (last: it marks the features complete), and registers the
splits as partitions of a Hive table. The steps are in ml.preprocess.steps. S3 credentials come from the environment
that spark-submit was given (ml.preprocess.submit), never from the command line; the job puts them into its own
Hadoop configuration, which carries them to executors that do not share the driver's environment (a cluster's
workers).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ml.features import SPLITS, FeatureSpec
from ml.preprocess import steps
from ml.preprocess.application import run_spark_application
from ml.preprocess.distributions import fit_distributions
from ml.preprocess.hive import hive_table_name, register_hive_table
from ml.settings import LakeSettings, S3Settings
from ml.storage import (
    DataError,
    S3Uri,
    exists,
    feature_spec_uri,
    features_uri,
    read_json,
    snapshot_uri,
    training_distributions_uri,
)

log = logging.getLogger("ml.preprocess.job")

RESULT_MARKER = "PREPROCESS_RESULT "
DEFAULT_SEED = 42
DEFAULT_MAX_CATEGORIES = 20
SPLIT_SHARES = (0.8, 0.1)  # train, validation; the test split takes the rest
ROWS_PER_FILE = 500_000  # about one Parquet file per this many rows: no swarm of tiny files for small data


def preprocess(
    spark: Any,
    dataset: str,
    snapshot_id: str,
    *,
    lake: LakeSettings,
    s3_client: Any,
    seed: int = DEFAULT_SEED,
    split_shares: tuple[float, float] = SPLIT_SHARES,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    min_category_count: int = 1,
    force: bool = False,
) -> dict[str, Any]:
    """Run the whole preprocessing of one snapshot; returns a small JSON-able summary."""
    from pyspark.sql import functions as F

    manifest_uri = snapshot_uri(lake, dataset, snapshot_id).join("manifest.json")
    if not exists(manifest_uri, s3_client):
        raise DataError(
            f"{manifest_uri} does not exist: snapshot {snapshot_id} of {dataset!r} is missing or incomplete; "
            "run ingest first"
        )
    manifest = read_json(manifest_uri, s3_client)
    out = features_uri(lake, dataset, snapshot_id)
    spec_uri = feature_spec_uri(out)
    table = hive_table_name(dataset)
    if exists(spec_uri, s3_client):
        if not force:
            spec = FeatureSpec.from_dict(read_json(spec_uri, s3_client))
            log.info("features of snapshot %s already exist at %s: skipped", snapshot_id, out)
            if not exists(training_distributions_uri(out), s3_client):
                log.warning("%s has no training distributions (written before they existed): --force writes them", out)
            register_hive_table(spark, table, spec, out)
            return _summary(spec, out, spec_uri, table, skipped=True)
        # Forced: the old spec goes first, so a run that dies while rewriting the splits leaves no spec beside them
        # (a spec is what marks the features complete).
        s3_client.delete_object(Bucket=spec_uri.bucket, Key=spec_uri.key)
        log.info("forced: removed %s before rewriting the features", spec_uri)

    target, task = manifest["target"], manifest["task"]
    kinds = {name: kind for name, kind in manifest["columns"].items() if kind != "empty"}
    numeric = [name for name, kind in kinds.items() if kind == "numeric" and name != target]
    categorical = [name for name, kind in kinds.items() if kind == "categorical" and name != target]

    raw = steps.read_snapshot(spark, manifest["objects"], list(kinds))
    cleaned = steps.clean_values(
        steps.parse_values(raw, numeric, categorical, target, task), numeric, categorical, task
    )
    prepared = steps.assign_split(steps.deduplicate(cleaned), seed, split_shares).persist()
    counts, with_target = steps.split_counts(prepared)
    rows_in, rows_kept = manifest["rows"], sum(counts.values())
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

    train = prepared.where(F.col(steps.SPLIT) == "train")
    numeric_features = steps.fit_numeric(train, numeric)
    categorical_features = steps.fit_categorical(train, categorical, max_categories, min_category_count)
    classes = steps.class_labels(prepared) if task == "classification" else None
    distributions = fit_distributions(train, numeric, categorical_features, dataset=dataset, snapshot_id=snapshot_id)
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
    encoded = steps.encode(prepared, numeric_features, categorical_features, classes)
    _write_splits(spark, encoded, out, counts)
    prepared.unpersist()
    # The distributions before the spec: a spec beside the splits still means that everything is there.
    for uri, document in ((training_distributions_uri(out), distributions.to_json()), (spec_uri, spec.to_json())):
        s3_client.put_object(Bucket=uri.bucket, Key=uri.key, Body=document.encode(), ContentType="application/json")
    register_hive_table(spark, table, spec, out)
    return _summary(spec, out, spec_uri, table, skipped=False)


def _write_splits(spark: Any, encoded: Any, out: S3Uri, counts: dict[str, int]) -> None:
    """Each split as Parquet under `out`; overwrite replaces whatever a failed earlier attempt left."""
    from pyspark.sql import functions as F

    for name in SPLITS:
        target_uri = out.join(name)
        files = max(1, min(spark.sparkContext.defaultParallelism, counts.get(name, 0) // ROWS_PER_FILE + 1))
        split_frame = encoded.where(F.col(steps.SPLIT) == name).drop(steps.SPLIT).coalesce(files)
        split_frame.write.mode("overwrite").parquet(target_uri.s3a)
        log.info("wrote %s split (%d rows) to %s", name, counts.get(name, 0), target_uri)


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
    """The application's entry point: arguments from spark-submit, S3 settings from its environment."""
    parser = argparse.ArgumentParser(prog="spark-submit ml/preprocess/job.py", description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--snapshot", required=True)
    parser.add_argument("--lake-bucket", default=LakeSettings.lake_bucket)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--max-categories", type=int, default=DEFAULT_MAX_CATEGORIES)
    parser.add_argument("--min-category-count", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="recompute even if the features exist")
    args = parser.parse_args(argv)

    def work(spark: Any, s3: S3Settings) -> dict[str, Any]:
        from ml.clients import s3_client

        return preprocess(
            spark,
            args.dataset,
            args.snapshot,
            lake=LakeSettings(lake_bucket=args.lake_bucket),
            s3_client=s3_client(s3),
            seed=args.seed,
            max_categories=args.max_categories,
            min_category_count=args.min_category_count,
            force=args.force,
        )

    return run_spark_application(f"preprocess-{args.dataset}-{args.snapshot}", RESULT_MARKER, work)


if __name__ == "__main__":
    sys.exit(main())
