"""Lineage as Airflow assets: what each task of mlops_training reads and writes, so that Airflow's asset views show
raw data -> snapshot -> features -> model version.

The snapshot, features and model version of a run are only known when its tasks run, so each is an asset added at
run time to an asset alias the task declares as an outlet (`outlet_events[alias].add(...)`); the extra of each event
names the asset it was made from, which chains them. The raw data is the `raw_uploads` asset (the raw bucket),
declared as the ingest task's inlet in the DAG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset, AssetAlias

GROUP = "mlops"
SNAPSHOTS = AssetAlias(name="mlops_snapshots", group=GROUP)
FEATURES = AssetAlias(name="mlops_features", group=GROUP)
MODEL_VERSIONS = AssetAlias(name="mlops_model_versions", group=GROUP)


def snapshot_name(dataset: str, snapshot_id: str) -> str:
    return f"snapshot/{dataset}/{snapshot_id}"


def features_name(dataset: str, snapshot_id: str) -> str:
    return f"features/{dataset}/{snapshot_id}"


def snapshot_asset(snapshot_uri: str, dataset: str, snapshot_id: str) -> Asset:
    return Asset(name=snapshot_name(dataset, snapshot_id), uri=snapshot_uri, group=GROUP)


def features_asset(features_uri: str, dataset: str, snapshot_id: str) -> Asset:
    return Asset(name=features_name(dataset, snapshot_id), uri=features_uri, group=GROUP)


def model_version_asset(model_name: str, version: str | int) -> Asset:
    """MLflow's own URI for a registered version (`models:/NAME/VERSION`)."""
    return Asset(name=f"model/{model_name}/{version}", uri=f"models:/{model_name}/{version}", group=GROUP)


def record(context: Mapping[str, Any], alias: AssetAlias, asset: Asset, extra: Mapping[str, Any]) -> None:
    """An asset event for `asset` through `alias` (an outlet of the running task), with `extra`."""
    context["outlet_events"][alias].add(asset, extra=dict(extra))
