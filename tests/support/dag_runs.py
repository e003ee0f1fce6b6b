"""What the end-to-end tests trigger: the shipped penguins data under a new dataset name, and the DAG params for it."""

from __future__ import annotations

import uuid
from typing import Any

from ml.settings import LakeSettings


def penguins_run(lake: LakeSettings, s3_client: Any, folder: str, num_samples: int, max_epochs: int) -> dict[str, Any]:
    """Upload a copy of the penguins data under `s3://<raw>/<folder>/<new dataset>/`; returns the run's conf."""
    from ml.datasets import load_shipped, upload_frame
    from ml.storage import S3Uri

    dataset = f"{folder}_{uuid.uuid4().hex[:8]}"
    upload_frame(load_shipped("penguins"), S3Uri(lake.raw_bucket, f"{folder}/{dataset}/penguins.csv"), s3_client)
    return {
        "raw_uri": f"s3://{lake.raw_bucket}/{folder}/{dataset}/",
        "dataset": dataset,
        "target": "species",
        "task": "classification",
        "num_samples": num_samples,
        "max_concurrent_trials": 2,
        "max_epochs": max_epochs,
    }
