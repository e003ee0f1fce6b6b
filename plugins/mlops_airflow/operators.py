"""Operators: each holds hooks, calls one stage of `ml`, and returns a small JSON-able value for XCom.

The work lives in `ml` (testable without Airflow); `execute()` only resolves connections into the environment that
`ml` reads its endpoints from, makes the call and hands back URIs, ids and small metric dicts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.bases.branch import BaseBranchOperator

from mlops_airflow.hooks import KafkaEventsHook, MlflowHook, RayHook, environment, s3_environment

log = logging.getLogger(__name__)


def _as_bool(value: Any) -> bool:
    """A templated flag: a bool under native rendering, "True"/"true"/"1" as text."""
    return str(value).lower() in ("true", "1")


class _PipelineOperator(BaseOperator):
    """Shared connection handling: the environment `ml` needs, built from Airflow connections."""

    def __init__(
        self,
        *,
        aws_conn_id: str = "aws_default",
        mlflow_conn_id: str = "mlflow_default",
        kafka_conn_id: str = "kafka_default",
        ray_conn_id: str = "ray_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.kafka_conn_id = kafka_conn_id
        self.ray_conn_id = ray_conn_id

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(self.mlflow_conn_id)

    @cached_property
    def kafka_hook(self) -> KafkaEventsHook:
        return KafkaEventsHook(self.kafka_conn_id)

    @cached_property
    def ray_hook(self) -> RayHook:
        return RayHook(self.ray_conn_id)

    def pipeline_environment(self) -> dict[str, str]:
        return {
            **s3_environment(self.aws_conn_id),
            **self.mlflow_hook.environment(),
            **self.kafka_hook.environment(),
            **self.ray_hook.environment(),
        }


class IngestOperator(_PipelineOperator):
    """Validate raw objects in S3 and snapshot them into the lake (`ml.ingest`); returns the snapshot's summary."""

    template_fields: Sequence[str] = ("raw_uri", "dataset", "target", "ml_task")
    ui_color = "#e8f4fd"

    def __init__(self, *, raw_uri: str, dataset: str, target: str, ml_task: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.raw_uri = raw_uri
        self.dataset = dataset
        self.target = target
        self.ml_task = ml_task

    def execute(self, context: Any) -> dict[str, Any]:
        from ml.ingest import IngestConfig, ingest

        with environment(self.pipeline_environment()):
            result = ingest(
                IngestConfig(str(self.raw_uri), str(self.dataset), str(self.target), task=self.ml_task or None)
            )
        log.info(
            "snapshot %s (%s): %d rows, %s",
            result.snapshot_id,
            "new" if result.created else "unchanged",
            result.rows,
            result.task,
        )
        return result.to_dict()


class FeaturePreprocessOperator(SparkSubmitOperator):
    """SparkSubmitOperator for `ml/spark_preprocess.py`: the s3a / Hive configuration and credentials are resolved
    at run time (not when the DAG is parsed), then the provider's spark-submit runs as usual. Returns the features'
    summary read back from `feature_spec.json`."""

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "dataset", "snapshot_id")

    def __init__(self, *, dataset: str, snapshot_id: str, aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        from pathlib import Path

        # Without importing `ml` at parse time: the application sits in the package folder.
        application = str(Path(__file__).resolve().parents[2] / "ml" / "spark_preprocess.py")
        super().__init__(application=application, name="preprocess-{{ params.dataset }}", **kwargs)
        self.dataset = dataset
        self.snapshot_id = snapshot_id
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:  # type: ignore[override]  # the parent returns None
        from ml.features import FeatureSpec
        from ml.preprocess import application_args, application_env
        from ml.sparkconf import spark_conf
        from ml.storage import features_uri, s3_client

        with environment(s3_environment(self.aws_conn_id)):
            self.conf = {**spark_conf(), **(self.conf or {})}
            self.env_vars = {**application_env(), **(self.env_vars or {})}
            self.application_args = application_args(str(self.dataset), str(self.snapshot_id))
            super().execute(context)
            out = features_uri(str(self.dataset), str(self.snapshot_id))
            body = s3_client().get_object(Bucket=out.bucket, Key=out.join("feature_spec.json").key)["Body"].read()
        spec = FeatureSpec.from_json(body)
        return {
            "features_uri": str(out),
            "feature_spec_uri": str(out.join("feature_spec.json")),
            "rows": spec.rows,
            "num_features": len(spec.feature_columns),
            "task": spec.task,
        }


class TuningReportLink(BaseOperatorLink):
    """'Tuning report' button on the tuning task: trials table, learning curves, parallel coordinates."""

    name = "Tuning report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from urllib.parse import quote

        from airflow.configuration import conf

        # Absolute: the UI renders extra links as external links.
        base = conf.get("api", "base_url", fallback="") or "http://127.0.0.1:8080"
        return f"{base.rstrip('/')}/mlops/tuning-report?dag_id={quote(ti_key.dag_id)}&run_id={quote(ti_key.run_id)}"


class RayTuneOperator(_PipelineOperator):
    """Hyper-parameter search of PyTorch models with Ray Tune (`ml.tune`). The search is named after the DAG run,
    so a retried task resumes it from S3 instead of starting over; `on_kill` stops the trials."""

    template_fields: Sequence[str] = (
        "dataset",
        "snapshot_id",
        "search_space",
        "num_samples",
        "max_concurrent_trials",
        "max_epochs",
    )
    operator_extra_links = (TuningReportLink(),)
    ui_color = "#fdf1e8"

    def __init__(
        self,
        *,
        dataset: str,
        snapshot_id: str,
        search_space: Any = None,
        num_samples: int | str = 8,
        max_concurrent_trials: int | str = 2,
        max_epochs: int | str = 20,
        cpus_per_trial: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.snapshot_id = snapshot_id
        self.search_space = search_space
        self.num_samples = num_samples
        self.max_concurrent_trials = max_concurrent_trials
        self.max_epochs = max_epochs
        self.cpus_per_trial = cpus_per_trial

    def execute(self, context: Any) -> dict[str, Any]:
        from ml.tune import SearchConfig, resolve_search_space, run_search

        run_id = context["run_id"]
        # The run id names the search: a retried task resumes it from S3 instead of starting over.
        config = SearchConfig(
            dataset=str(self.dataset),
            snapshot_id=str(self.snapshot_id),
            run_name=run_id,
            search_space=resolve_search_space(self.search_space),
            num_samples=int(self.num_samples),
            max_concurrent_trials=int(self.max_concurrent_trials),
            max_epochs=int(self.max_epochs),
            cpus_per_trial=self.cpus_per_trial,
            dag_run_id=run_id,
        )
        with environment(self.pipeline_environment()):
            result = run_search(config)
        return result.to_dict()

    def on_kill(self) -> None:
        # Shutting down the driver's Ray connection ends the trials it owns (locally: the whole local Ray).
        import ray

        if ray.is_initialized():
            log.warning("task killed: stopping the Ray Tune search")
            ray.shutdown()


class RegisterModelOperator(_PipelineOperator):
    """Score the best trial on the untouched test split, register it in MLflow with lineage, and run the promotion
    gate (`ml.evaluate`, `ml.registry`). Returns the version and the gate's decision."""

    template_fields: Sequence[str] = ("search_result", "metric", "margin", "allow_backfill_promotion")
    ui_color = "#eafbe8"

    def __init__(
        self,
        *,
        search_result: Any,
        metric: str | None = None,
        margin: float | str = 0.0,
        allow_backfill_promotion: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.search_result = search_result
        self.metric = metric
        self.margin = margin
        self.allow_backfill_promotion = allow_backfill_promotion

    def execute(self, context: Any) -> dict[str, Any]:
        from ml.evaluate import evaluate_best
        from ml.lineage import code_version
        from ml.registry import register_and_promote

        dag_run = context["dag_run"]
        is_backfill = str(getattr(dag_run, "run_type", "")).lower().endswith("backfill")
        with environment(self.pipeline_environment()):
            evaluation = evaluate_best(self.search_result)
            decision = register_and_promote(
                evaluation,
                dag_id=self.dag_id,
                dag_run_id=context["run_id"],
                code_version=code_version(),
                metric=self.metric or None,
                margin=float(self.margin),
                is_backfill=is_backfill,
                allow_backfill_promotion=_as_bool(self.allow_backfill_promotion),
                task_id=self.task_id,
            )
        return {"evaluation": evaluation, **decision}


class PublishRunSummaryOperator(_PipelineOperator):
    """Publish the run's summary (snapshot, features, best trial, registered or reused model) as a pipeline event,
    built from the upstream tasks' XComs."""

    def __init__(
        self,
        *,
        ingest_task_id: str = "ingest_raw_data",
        tune_task_id: str = "tune_models",
        register_task_id: str = "register_best_model",
        branch_task_id: str = "check_for_existing_model",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ingest_task_id = ingest_task_id
        self.tune_task_id = tune_task_id
        self.register_task_id = register_task_id
        self.branch_task_id = branch_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        from ml.events import pipeline_event_key
        from ml.topics import PIPELINE_EVENTS

        ti = context["ti"]
        snapshot = ti.xcom_pull(task_ids=self.ingest_task_id) or {}
        registered = ti.xcom_pull(task_ids=self.register_task_id) or {}
        search = ti.xcom_pull(task_ids=self.tune_task_id) or {}
        reused = ti.xcom_pull(task_ids=self.branch_task_id, key="existing_model")
        summary = {
            "dataset": snapshot.get("dataset"),
            "snapshot_id": snapshot.get("snapshot_id"),
            "rows": snapshot.get("rows"),
            "outcome": "reused_existing_model" if reused else "trained",
            "existing_model": reused,
            "best_params": search.get("best_params"),
            "num_trials": search.get("num_trials"),
            "test_metrics": (registered.get("evaluation") or {}).get("test_metrics"),
            "model": {k: v for k, v in registered.items() if k != "evaluation"} or None,
        }
        payload = {"dag_id": self.dag_id, "task_id": self.task_id, "event": "run_summary", "details": summary}
        key = pipeline_event_key(self.dag_id, context["run_id"], self.task_id, "run_summary")
        self.kafka_hook.publish(PIPELINE_EVENTS, payload, key, dag_run_id=context["run_id"])
        log.info("run summary published to %s: %s", PIPELINE_EVENTS.name, summary)
        return summary


class SkipIfModelExistsOperator(BaseBranchOperator):
    """Branch: when a model version already exists for this snapshot and code version, follow `reuse_task_id` and
    skip the expensive steps (the log says which version and why); otherwise follow `train_task_id`."""

    template_fields: Sequence[str] = ("dataset", "snapshot_id", "ml_task", "force")

    def __init__(
        self,
        *,
        dataset: str,
        snapshot_id: str,
        ml_task: str,
        train_task_id: str,
        reuse_task_id: str,
        force: bool | str = False,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.snapshot_id = snapshot_id
        self.ml_task = ml_task
        self.train_task_id = train_task_id
        self.reuse_task_id = reuse_task_id
        self.force = force
        self.mlflow_conn_id = mlflow_conn_id

    def choose_branch(self, context: Any) -> str:
        from ml.lineage import code_version
        from ml.registry import registered_model_name

        if _as_bool(self.force):
            log.info("force_retrain is set: training even if a model exists")
            return self.train_task_id
        name = registered_model_name(self.dataset, self.ml_task)
        wanted = {
            "snapshot_id": str(self.snapshot_id),
            "code_version": code_version(),
            "mlops.registration": "complete",
        }
        version = MlflowHook(self.mlflow_conn_id).find_model_version(name, wanted)
        if version is None:
            log.info("no version of %s for snapshot %s and code %s: training", name, self.snapshot_id, code_version())
            return self.train_task_id
        log.info(
            "SKIPPING preprocessing, tuning and registration: version %s of %s was already trained on snapshot %s "
            "with code version %s (set the param force_retrain to train anyway)",
            version.version,
            name,
            self.snapshot_id,
            code_version(),
        )
        context["ti"].xcom_push(key="existing_model", value={"model": name, "version": str(version.version)})
        return self.reuse_task_id
