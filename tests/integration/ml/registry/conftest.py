"""Registry fixtures against the real stack: a fresh registered model per test (removed afterwards), stand-in trained
models uploaded to S3, the registry context built from the stack's settings, and a tap on the event topics."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ml.registry.context import RegistryContext
from ml.registry.conventions import registered_model_name
from ml.storage import S3Uri, delete_prefix
from ml.topics import MODEL_PROMOTED, PIPELINE_EVENTS
from tests.integration.ml.registry.support import EventTap
from tests.support.stand_in_model import upload_stand_in


@pytest.fixture
def context(settings: Any, mlflow_service: None, s3_service: None, kafka_service: None) -> RegistryContext:
    return RegistryContext(mlflow=settings.mlflow, s3=settings.s3, lake=settings.lake, kafka=settings.kafka)


@pytest.fixture
def dataset(mlflow_client: Any, mlflow_service: None, s3_service: None, kafka_service: None) -> Iterator[str]:
    """A fresh dataset name (so a fresh registered model); its models and experiment are removed afterwards."""
    name = f"it{uuid.uuid4().hex[:10]}"
    yield name
    for task in ("classification", "regression"):
        try:
            mlflow_client.delete_registered_model(registered_model_name(name, task))
        except Exception:
            pass
    experiment = mlflow_client.get_experiment_by_name(name)  # registration runs go to an experiment per dataset
    if experiment is not None:
        mlflow_client.delete_experiment(experiment.experiment_id)


@pytest.fixture
def stand_in(
    s3_client: Any, settings: Any, tmp_path: Path, unique_prefix: str
) -> Iterator[Callable[..., dict[str, Any]]]:
    """Uploads stand-in trained models under a unique prefix and returns their evaluation results."""

    def make(**kwargs: Any) -> dict[str, Any]:
        prefix = f"{unique_prefix}/{uuid.uuid4().hex[:6]}"
        return upload_stand_in(s3_client, tmp_path, bucket=settings.lake.lake_bucket, prefix=prefix, **kwargs)

    yield make
    delete_prefix(S3Uri(settings.lake.lake_bucket, unique_prefix), s3_client)


@pytest.fixture
def tap(settings: Any, kafka_service: None) -> Iterator[EventTap]:
    tap = EventTap(settings.kafka, MODEL_PROMOTED.name, PIPELINE_EVENTS.name)
    yield tap
    tap.close()
