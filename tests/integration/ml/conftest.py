"""Fixtures of the stages' integration tests against the real stack: stand-in models registered through the gate
(a fresh dataset per test; the model, its experiment and its S3 objects removed afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ml.registry.context import RegistryContext
from ml.registry.conventions import registered_model_name
from ml.registry.promote import register_and_promote
from ml.storage import S3Uri, delete_prefix
from tests.support.stand_in_model import upload_stand_in


@pytest.fixture
def context(settings: Any, mlflow_service: None, s3_service: None, kafka_service: None) -> RegistryContext:
    return RegistryContext(mlflow=settings.mlflow, s3=settings.s3, lake=settings.lake, kafka=settings.kafka)


@pytest.fixture
def registered(
    context: RegistryContext, settings: Any, s3_client: Any, mlflow_client: Any, tmp_path: Path, unique_prefix: str
) -> Iterator[Callable[[str, str], dict[str, Any]]]:
    """Registers stand-in models of one fresh dataset (through the gate); cleans up the model and S3 objects."""
    dataset = f"serve{uuid.uuid4().hex[:10]}"
    bucket = settings.lake.lake_bucket

    def register(quality: str, dag_run_id: str) -> dict[str, Any]:
        evaluation = upload_stand_in(
            s3_client, tmp_path, bucket=bucket, prefix=f"{unique_prefix}/{dag_run_id}", dataset=dataset, quality=quality
        )
        return register_and_promote(evaluation, context, dag_id="serve-test", dag_run_id=dag_run_id, code_version="x")

    yield register
    try:
        mlflow_client.delete_registered_model(registered_model_name(dataset, "classification"))
    except Exception:
        pass
    experiment = mlflow_client.get_experiment_by_name(dataset)
    if experiment is not None:
        mlflow_client.delete_experiment(experiment.experiment_id)
    delete_prefix(S3Uri(bucket, unique_prefix), s3_client)
