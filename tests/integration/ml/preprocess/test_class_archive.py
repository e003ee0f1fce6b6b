"""The driver's class archive (ml.preprocess.class_archive) with a real spark-submit: the first job writes it, the
next one maps it. The second job runs with `-Xshare:on`, which makes the JVM refuse to start when it cannot map the
archive (a mismatched classpath or JDK, a damaged file), so that its success shows the archive is the one it uses."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import ml.preprocess.submit as submit
from ml.datasets import synthetic
from ml.ingest.config import IngestConfig
from ml.ingest.snapshot import ingest
from ml.preprocess.submit import run_preprocess
from ml.settings import Settings
from ml.storage import S3Uri, delete_prefix


def test_the_first_job_writes_the_archive_and_the_next_one_maps_it(
    s3_client: Any, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, key = f"it_cds_{uuid.uuid4().hex[:8]}", f"tests/cds-{uuid.uuid4().hex[:8]}/data.csv"
    frame = synthetic(400, numeric=3, categorical=1, seed=5, task="classification")
    s3_client.put_object(Bucket=settings.lake.raw_bucket, Key=key, Body=frame.to_csv(index=False).encode())
    archives = tmp_path / "archives"
    spark = replace(settings.spark, master="local[2]", class_archive_dir=str(archives))
    try:
        snapshot = ingest(
            IngestConfig(f"s3://{settings.lake.raw_bucket}/{key}", dataset, "target"),
            s3=settings.s3,
            lake=settings.lake,
        )
        first = run_preprocess(
            dataset, snapshot.snapshot_id, s3=settings.s3, lake=settings.lake, spark=spark, driver_memory="1g"
        )
        written = sorted(path.name for path in archives.iterdir())
        assert len(written) == 1 and written[0].startswith("driver-") and written[0].endswith(".jsa"), written
        assert (archives / written[0]).stat().st_size > 50 * 1024**2, "an archive of the driver's classes"

        base_conf = submit.spark_conf

        def strict(*args: Any, **kwargs: Any) -> dict[str, str]:
            conf = base_conf(*args, **kwargs)
            return {
                **conf,
                "spark.driver.extraJavaOptions": f"{conf.get('spark.driver.extraJavaOptions', '')} -Xshare:on",
            }

        monkeypatch.setattr(submit, "spark_conf", strict)
        second = run_preprocess(
            dataset,
            snapshot.snapshot_id,
            s3=settings.s3,
            lake=settings.lake,
            spark=spark,
            driver_memory="1g",
            force=True,
        )
        assert second["rows"] == first["rows"] and sum(first["rows"].values()) == 400
        assert sorted(path.name for path in archives.iterdir()) == written, "mapped, not written again"
    finally:
        s3_client.delete_object(Bucket=settings.lake.raw_bucket, Key=key)
        delete_prefix(S3Uri(settings.lake.lake_bucket, f"datasets/{dataset}/"), s3_client)
