"""Values a DAG passes to the operators as templates, and how the operators read them back."""

from __future__ import annotations

from typing import Any

from ml.settings import LakeSettings  # settings types only: cheap to import when DAGs are parsed

DEFAULT_LAKE_BUCKET = LakeSettings.lake_bucket
# What a DAG passes as `lake_bucket`: the Airflow variable `mlops_lake_bucket`, else the default (rendered when the task
# runs, not when the DAG is parsed).
LAKE_BUCKET_TEMPLATE = "{{ var.value.get('mlops_lake_bucket', '" + DEFAULT_LAKE_BUCKET + "') }}"


def as_bool(value: Any) -> bool:
    """A templated flag: a bool under native rendering, "True"/"true"/"1" as text."""
    return str(value).lower() in ("true", "1")


def lake_settings(lake_bucket: str) -> LakeSettings:
    return LakeSettings(lake_bucket=str(lake_bucket))
