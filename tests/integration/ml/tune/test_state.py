"""ml.tune.state against the real S3 server: a run killed before Tune's first snapshot (tuner.pkl alone) starts over,
one with an experiment state resumes, read through the keyless filesystem Tune's storage uses."""

from __future__ import annotations

from typing import Any

from ray import tune

from ml.clients import keyless_arrow_filesystem
from ml.settings import Settings
from ml.storage import S3Uri, delete_prefix
from ml.tune.state import restorable


def test_a_run_killed_before_its_first_snapshot_starts_over(
    s3_client: Any, settings: Settings, unique_prefix: str
) -> None:
    bucket = settings.lake.lake_bucket
    path = f"{bucket}/{unique_prefix}/run"
    keyless = keyless_arrow_filesystem(settings.s3)
    s3_client.put_object(Bucket=bucket, Key=f"{unique_prefix}/run/tuner.pkl", Body=b"not restorable alone")
    try:
        assert tune.Tuner.can_restore(path, storage_filesystem=keyless)
        assert not restorable(path, keyless)
        s3_client.put_object(
            Bucket=bucket, Key=f"{unique_prefix}/run/experiment_state-2026-01-01_00-00-00.json", Body=b"{}"
        )
        assert restorable(path, keyless)
    finally:
        delete_prefix(S3Uri(bucket, unique_prefix), s3_client)
