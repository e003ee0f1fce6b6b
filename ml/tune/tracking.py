"""The search's MLflow parent run: found again by its tags when a search resumes, inputs and results logged."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from ml.clock import SYSTEM_CLOCK, Clock
from ml.experiments import PARENT_RUN_KIND, get_or_create_experiment, quoted
from ml.features import FeatureSpec
from ml.json_values import is_finite_number
from ml.tune.config import SEARCH_RESULT_FILE, SearchConfig, SearchResult
from ml.tune.space import validate_search_space

log = logging.getLogger(__name__)


def find_parent_run(client: Any, experiment_id: str, dataset: str, snapshot_id: str, run_name: str) -> Any | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`mlops.kind` = {quoted(PARENT_RUN_KIND)} AND tags.`mlops.run_name` = {quoted(run_name)} "
            f"AND tags.`mlops.snapshot_id` = {quoted(snapshot_id)} AND tags.`mlops.dataset` = {quoted(dataset)}"
        ),
        max_results=1,
    )
    return runs[0] if runs else None


def start_parent_run(
    client: Any,
    config: SearchConfig,
    spec: FeatureSpec,
    features: str,
    experiment_uri: str,
    manifest: Mapping[str, Any],
) -> tuple[str, str]:
    """Find (resume) or create the search's parent run; returns (experiment id, run id)."""
    from mlflow.entities import Param

    experiment_id = get_or_create_experiment(client, config.dataset)
    existing = find_parent_run(client, experiment_id, config.dataset, config.snapshot_id, config.run_name)
    if existing is not None:
        run_id = existing.info.run_id
        client.update_run(run_id, status="RUNNING")
        log.info("MLflow: continuing parent run %s in experiment %s", run_id, config.dataset)
        return experiment_id, run_id

    spec_uri = f"{features.rstrip('/')}/feature_spec.json"
    tags = {
        "mlops.kind": PARENT_RUN_KIND,
        "mlops.dataset": config.dataset,
        "mlops.snapshot_id": config.snapshot_id,
        "mlops.run_name": config.run_name,
        "mlops.dag_run_id": config.dag_run_id or "",
        "mlops.features_uri": features,
        "mlops.feature_spec_uri": spec_uri,
        "mlops.tune_uri": experiment_uri,
        "mlops.search_space_hash": manifest["search_space_hash"],
        "mlops.task": spec.task,
    }
    run = client.create_run(experiment_id, run_name=config.run_name, tags=tags)
    run_id = run.info.run_id
    params = {
        **{k: v for k, v in manifest.items() if k not in ("dataset", "run_name")},
        "task": spec.task,
        "num_features": len(spec.feature_columns),
        "classes": json.dumps(spec.classes),
        "rows": json.dumps(spec.rows, sort_keys=True),
        "features_uri": features,
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_dict(run_id, json.loads(spec.to_json()), "feature_spec.json")
    client.log_dict(run_id, validate_search_space(config.search_space), "search_space.json")
    _log_dataset_input(client, run_id, config, spec, features)
    log.info("MLflow: parent run %s in experiment %s", run_id, config.dataset)
    return experiment_id, run_id


def _log_dataset_input(client: Any, run_id: str, config: SearchConfig, spec: FeatureSpec, features: str) -> None:
    """The features snapshot as a run input (metadata only: source URI, digest, schema)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, DataType, Schema

    label_type = DataType.integer if spec.task == "classification" else DataType.double
    columns: list[Any] = [ColSpec(DataType.float, name) for name in spec.feature_columns]
    schema = Schema([*columns, ColSpec(label_type, "label")])
    # MetaDataset declares `profile` abstract but is meant to be instantiated (MLflow's own docs do).
    dataset = MetaDataset(  # type: ignore[abstract]
        resolve_dataset_source(features),
        name=f"{config.dataset}@{config.snapshot_id}",
        digest=config.snapshot_id[:36],
        schema=schema,
    )
    # One input for the features folder (MLflow keeps one input per dataset; the splits are folders of it).
    client.log_inputs(
        run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])]
    )


def finish_parent_run(client: Any, run_id: str, result: SearchResult, clock: Clock = SYSTEM_CLOCK) -> None:
    from mlflow.entities import Metric, RunTag

    now = int(clock.time() * 1000)
    metrics = [
        Metric(f"best_{k}", float(v), now, 0) for k, v in result.best_validation_metrics.items() if is_finite_number(v)
    ]
    metrics += [
        Metric("num_trials", float(result.num_trials), now, 0),
        Metric("num_errored_trials", float(result.num_errored), now, 0),
    ]
    tags = [
        RunTag("mlops.best_trial_id", result.best_trial_id),
        RunTag("mlops.best_checkpoint_uri", result.best_checkpoint_uri),
        RunTag("mlops.best_params", json.dumps(result.best_params, sort_keys=True)),
    ]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_dict(run_id, result.to_dict(), SEARCH_RESULT_FILE)
    client.set_terminated(run_id, "FINISHED")


def set_parent_status(client: Any, run_id: str, status: str) -> None:
    """Mark the parent run KILLED or FAILED on the way out of a search (never raises over the search's error)."""
    try:
        client.set_terminated(run_id, status)
    except Exception:
        log.warning("could not mark MLflow run %s %s", run_id, status, exc_info=True)
