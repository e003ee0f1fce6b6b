"""Lineage as Airflow assets: what each task of mlops_training reads and writes, so that Airflow's asset views show
raw data -> snapshot -> features -> model version.

The snapshot, features and model version of a run are only known when its tasks run, so each is an asset added at
run time to an asset alias the task declares as an outlet (`outlet_events[alias].add(...)`); the extra of each event
names the asset it was made from, which chains them. The raw data is the `raw_uploads` asset (the raw bucket),
declared as the ingest task's inlet in the DAG.

The same chain goes to OpenLineage: the provider's listener asks each operator, once it has run, what it read and
wrote (`get_openlineage_facets_on_complete`), and `OpenLineageDatasets` answers with what the task recorded, as
OpenLineage datasets named by its naming spec (S3: namespace `s3://BUCKET`, name the key; a registered model:
namespace the MLflow registry's URI, name `models/NAME`, its version as the dataset version).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LineageDataset:
    """One OpenLineage dataset: namespace, name and (for a model) the version written."""

    namespace: str
    name: str
    version: str | None = None


def s3_dataset(uri: str) -> LineageDataset:
    """`s3://BUCKET/KEY` as OpenLineage names it (namespace `s3://BUCKET`, name KEY, `/` for the bucket itself)."""
    from ml.storage import S3Uri

    parsed = S3Uri.parse(uri)
    return LineageDataset(f"s3://{parsed.bucket}", parsed.key.strip("/") or "/")


def model_dataset(registry_uri: str, model_name: str, version: str | int) -> LineageDataset:
    return LineageDataset(registry_uri.rstrip("/"), f"models/{model_name}", str(version))


class OpenLineageDatasets:
    """Mixin of the operators that record lineage: `record_lineage` adds the asset event (`record`) and keeps what
    the task read and wrote for the OpenLineage provider, which asks after the task has run."""

    _lineage_io: tuple[list[LineageDataset], list[LineageDataset]] | None = None

    def record_lineage(
        self,
        context: Mapping[str, Any],
        alias: AssetAlias,
        asset: Asset,
        extra: Mapping[str, Any],
        *,
        read: list[LineageDataset],
        wrote: list[LineageDataset],
    ) -> None:
        record(context, alias, asset, extra)
        self.report_lineage(read=read, wrote=wrote)

    def report_lineage(self, *, read: list[LineageDataset], wrote: list[LineageDataset]) -> None:
        """What OpenLineage is told this run read and wrote (for a task with no asset of its own)."""
        self._lineage_io = (read, wrote)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The provider's hook (called in the task's process after `execute`): inputs and outputs of this run."""
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset
        from openlineage.client.facet_v2 import DatasetFacet, dataset_version_dataset

        def as_dataset(dataset: LineageDataset) -> Dataset:
            facets: dict[str, DatasetFacet] = {}
            if dataset.version is not None:
                facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=dataset.version)
            return Dataset(namespace=dataset.namespace, name=dataset.name, facets=facets)

        read, wrote = self._lineage_io or ([], [])
        return OperatorLineage(inputs=[as_dataset(d) for d in read], outputs=[as_dataset(d) for d in wrote])
