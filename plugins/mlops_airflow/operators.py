"""Operators: each holds the hooks of the connections it uses, calls one stage of `ml` with the settings those hooks
return, and hands back a small JSON-able value for XCom (URIs, ids, small metric dicts).

The work lives in `ml` (testable without Airflow); `execute()` only turns connections into settings and makes the
call. Nothing here writes the worker's environment. The run's branch and summary operators are in run_outcome.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseOperator, BaseOperatorLink

from mlops_airflow import lineage
from mlops_airflow.hooks import (
    KafkaEventsHook,
    MlflowHook,
    RayHook,
    openlineage_spark_target,
    s3_settings,
    spark_settings,
)
from mlops_airflow.templating import DEFAULT_LAKE_BUCKET, as_bool, lake_settings

if TYPE_CHECKING:
    from ml.settings import LakeSettings, S3Settings, SparkSettings

log = logging.getLogger(__name__)


class IngestOperator(lineage.OpenLineageDatasets, BaseOperator):
    """Validate raw objects in S3 and snapshot them into the lake (`ml.ingest`); returns the snapshot's summary,
    each of its keys also as an XCom of its own (`task.output["snapshot_id"]`)."""

    template_fields: Sequence[str] = ("raw_uri", "dataset", "target", "ml_task", "lake_bucket")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        raw_uri: str,
        dataset: str,
        target: str,
        ml_task: str | None = None,
        lake_bucket: str = DEFAULT_LAKE_BUCKET,
        aws_conn_id: str = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(multiple_outputs=True, **{"outlets": [lineage.SNAPSHOTS], **kwargs})
        self.raw_uri = raw_uri
        self.dataset = dataset
        self.target = target
        self.ml_task = ml_task
        self.lake_bucket = lake_bucket
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from ml.ingest.config import IngestConfig
        from ml.ingest.snapshot import ingest

        config = IngestConfig(str(self.raw_uri), str(self.dataset), str(self.target), task=self.ml_task or None)
        result = ingest(config, s3=s3_settings(self.aws_conn_id), lake=lake_settings(self.lake_bucket))
        log.info(
            "snapshot %s (%s): %d rows, %s",
            result.snapshot_id,
            "new" if result.created else "unchanged",
            result.rows,
            result.task,
        )
        snapshot = lineage.snapshot_asset(result.snapshot_uri, result.dataset, result.snapshot_id)
        self.record_lineage(
            context,
            lineage.SNAPSHOTS,
            snapshot,
            {"raw_uri": config.raw_uri, "rows": result.rows},
            read=[lineage.s3_dataset(config.raw_uri)],
            wrote=[lineage.s3_dataset(result.snapshot_uri)],
        )
        return result.to_dict()


def submit_ml_job(
    operator: SparkSubmitOperator,
    context: Any,
    args: list[str],
    *,
    spark: SparkSettings,
    s3: S3Settings,
    lake: LakeSettings,
    conf: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run one of ml's Spark applications through the operator's spark-submit: the pipeline's conf, the environment
    that carries the credentials (never the command line) and the `ml` zip (`--py-files`) resolved now, at run time,
    as `python -m ml preprocess|score` resolve them (ml.preprocess.submit)."""
    from ml.preprocess.class_archive import driver_class_archive
    from ml.preprocess.conf import spark_conf
    from ml.preprocess.preflight import require_cluster_services
    from ml.preprocess.submit import application_env, ml_package_zip

    require_cluster_services(spark)
    authored_conf = {**spark_conf(spark, s3, lake), **(conf or {}), **(operator.conf or {})}
    operator.env_vars = {**application_env(spark, s3), **(env or {}), **(operator.env_vars or {})}
    operator.application_args = args
    authored, operator._hook = operator.py_files, None  # (the provider builds its hook from these attributes)
    # SparkSubmitHook runs spark-submit with this process's environment plus env_vars: the java it finds there.
    archived = driver_class_archive(spark.class_archive_dir, authored_conf, {**os.environ, **operator.env_vars})
    with ml_package_zip() as package, archived as operator.conf:  # the same zip as the CLI ships, removed afterwards
        operator.py_files = ",".join([str(package), *([authored] if authored else [])])
        try:
            SparkSubmitOperator.execute(operator, context)
        finally:
            operator.py_files = authored


class FeaturePreprocessOperator(lineage.OpenLineageDatasets, SparkSubmitOperator):
    """SparkSubmitOperator for the Spark job of `ml.preprocess`: its configuration, arguments, environment and `ml`
    zip (`--py-files`) are resolved at run time, not parse time; returns the summary read from `feature_spec.json`."""

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "dataset", "snapshot_id", "lake_bucket")

    def __init__(
        self,
        *,
        dataset: str,
        snapshot_id: str,
        lake_bucket: str = DEFAULT_LAKE_BUCKET,
        aws_conn_id: str = "aws_default",
        **kwargs: Any,
    ) -> None:
        from ml.preprocess.submit import APPLICATION  # a path only: importing it loads neither Spark nor pandas

        super().__init__(
            application=str(APPLICATION),
            name="preprocess-{{ params.dataset }}",
            **{"outlets": [lineage.FEATURES], **kwargs},
        )
        self.dataset = dataset
        self.snapshot_id = snapshot_id
        self.lake_bucket = lake_bucket
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:  # type: ignore[override]  # the parent returns None
        from ml.clients import s3_client
        from ml.features import FeatureSpec
        from ml.preprocess.submit import application_args
        from ml.storage import feature_spec_uri, features_uri, read_json, snapshot_uri

        s3, spark, lake = s3_settings(self.aws_conn_id), spark_settings(self._conn_id), lake_settings(self.lake_bucket)
        lineage_conf, lineage_env = self._openlineage_listener(spark)
        args = application_args(str(self.dataset), str(self.snapshot_id), lake)
        submit_ml_job(self, context, args, spark=spark, s3=s3, lake=lake, conf=lineage_conf, env=lineage_env)
        out = features_uri(lake, str(self.dataset), str(self.snapshot_id))
        spec = FeatureSpec.from_dict(read_json(feature_spec_uri(out), s3_client(s3)))
        dataset, snapshot_id = str(self.dataset), str(self.snapshot_id)
        made_from = lineage.snapshot_name(dataset, snapshot_id)
        features = lineage.features_asset(str(out), dataset, snapshot_id)
        self.record_lineage(
            context,
            lineage.FEATURES,
            features,
            {"made_from": made_from, "rows": spec.rows},
            read=[lineage.s3_dataset(str(snapshot_uri(lake, dataset, snapshot_id)))],
            wrote=[lineage.s3_dataset(str(out))],
        )
        return {
            "features_uri": str(out),
            "feature_spec_uri": str(feature_spec_uri(out)),
            "rows": spec.rows,
            "num_features": len(spec.feature_columns),
            "task": spec.task,
        }

    @staticmethod
    def _openlineage_listener(spark: SparkSettings) -> tuple[dict[str, str], dict[str, str]]:
        """The OpenLineage Spark listener's conf and environment when OpenLineage sends to Kafka and the connection
        names the listener's jars (ml.preprocess.lineage); nothing otherwise."""
        from ml.preprocess.lineage import listener_conf, listener_env

        target = openlineage_spark_target()
        if target is None:
            return {}, {}
        if not spark.lineage_classpath:
            log.info("the Spark job sends no OpenLineage events: its connection names no lineage-classpath")
            return {}, {}
        return listener_conf(spark, target), listener_env(target)


class TuningReportLink(BaseOperatorLink):
    """'Tuning report' button on the tuning task: trials table, learning curves, parallel coordinates."""

    name = "Tuning report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from urllib.parse import quote

        from airflow.configuration import conf

        # Absolute: the UI renders extra links as external links.
        base = conf.get("api", "base_url", fallback="") or "http://127.0.0.1:8080"
        return f"{base.rstrip('/')}/mlops/tuning-report?dag_id={quote(ti_key.dag_id)}&run_id={quote(ti_key.run_id)}"


class RayTuneOperator(lineage.OpenLineageDatasets, BaseOperator):
    """Hyper-parameter search of PyTorch models with Ray Tune (`ml.tune`). The search is named after the DAG run,
    so a retried task resumes it from S3 instead of starting over; `on_kill` stops the trials. Its AWS connection
    (`aws_tune`) is the one allowed to write the searches' storage (lake/tune/; stack.s3_users): the search and its
    Ray workers sign with it and with nothing else."""

    template_fields: Sequence[str] = (
        "dataset",
        "snapshot_id",
        "search_space",
        "num_samples",
        "max_concurrent_trials",
        "max_epochs",
        "workers_per_trial",
        "gpus_per_worker",
        "cache_mb",
        "lake_bucket",
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
        workers_per_trial: int | str = 1,
        gpus_per_worker: float | str | None = None,
        cache_mb: float | str = 1024.0,
        lake_bucket: str = DEFAULT_LAKE_BUCKET,
        aws_conn_id: str = "aws_tune",
        mlflow_conn_id: str = "mlflow_default",
        kafka_conn_id: str = "kafka_default",
        ray_conn_id: str = "ray_default",
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
        self.workers_per_trial = workers_per_trial
        self.gpus_per_worker = gpus_per_worker
        self.cache_mb = cache_mb
        self.lake_bucket = lake_bucket
        self.aws_conn_id = aws_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.kafka_conn_id = kafka_conn_id
        self.ray_conn_id = ray_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from ml.storage import features_uri, tune_uri
        from ml.tune.config import SearchConfig
        from ml.tune.search import run_search

        s3, lake = s3_settings(self.aws_conn_id), lake_settings(self.lake_bucket)
        run_id = context["run_id"]
        # The run id names the search: a retried task resumes it from S3 instead of starting over.
        config = SearchConfig.create(
            s3=s3,
            dataset=str(self.dataset),
            snapshot_id=str(self.snapshot_id),
            run_name=run_id,
            search_space=self.search_space,
            allow_local_files=False,  # a DAG param never makes the worker read its own files
            num_samples=int(self.num_samples),
            max_concurrent_trials=int(self.max_concurrent_trials),
            max_epochs=int(self.max_epochs),
            cpus_per_trial=self.cpus_per_trial,
            workers_per_trial=int(self.workers_per_trial),
            gpus_per_worker=None if self.gpus_per_worker in (None, "", "None") else float(self.gpus_per_worker),
            cache_mb=float(self.cache_mb),
            dag_run_id=run_id,
        )
        result = run_search(
            config,
            s3=s3,
            lake=lake,
            ray=RayHook(self.ray_conn_id).settings,
            mlflow=MlflowHook(self.mlflow_conn_id).available_settings(),
            kafka=KafkaEventsHook(self.kafka_conn_id).settings,
        )
        dataset, snapshot_id = str(self.dataset), str(self.snapshot_id)
        self.report_lineage(
            read=[lineage.s3_dataset(str(features_uri(lake, dataset, snapshot_id)))],
            wrote=[lineage.s3_dataset(str(tune_uri(lake, dataset, snapshot_id, config.run_name)))],
        )
        return result.to_dict()

    def on_kill(self) -> None:
        # Shutting down the driver's Ray connection ends the trials it owns (locally: the whole local Ray).
        import ray

        if ray.is_initialized():
            log.warning("task killed: stopping the Ray Tune search")
            ray.shutdown()


class RegisterModelOperator(lineage.OpenLineageDatasets, BaseOperator):
    """Score the best trial on the untouched test split, register it in MLflow with lineage, and run the promotion
    gate (`ml.evaluate`, `ml.registry`). Returns the version and the gate's decision."""

    template_fields: Sequence[str] = ("search_result", "metric", "margin", "allow_backfill_promotion", "lake_bucket")
    ui_color = "#eafbe8"

    def __init__(
        self,
        *,
        search_result: Any,
        metric: str | None = None,
        margin: float | str = 0.0,
        allow_backfill_promotion: bool | str = False,
        lake_bucket: str = DEFAULT_LAKE_BUCKET,
        aws_conn_id: str = "aws_default",
        mlflow_conn_id: str = "mlflow_default",
        kafka_conn_id: str = "kafka_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**{"outlets": [lineage.MODEL_VERSIONS], **kwargs})
        self.search_result = search_result
        self.metric = metric
        self.margin = margin
        self.allow_backfill_promotion = allow_backfill_promotion
        self.lake_bucket = lake_bucket
        self.aws_conn_id = aws_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.kafka_conn_id = kafka_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from ml.evaluate import evaluate_best
        from ml.lineage import code_version
        from ml.registry.context import RegistryContext
        from ml.registry.promote import register_and_promote
        from ml.storage import features_uri

        s3, mlflow = s3_settings(self.aws_conn_id), MlflowHook(self.mlflow_conn_id).available_settings()
        lake = lake_settings(self.lake_bucket)
        registry = RegistryContext(
            mlflow=mlflow,
            s3=s3,
            lake=lake,
            kafka=KafkaEventsHook(self.kafka_conn_id).settings,
        )
        dag_run = context["dag_run"]
        is_backfill = str(getattr(dag_run, "run_type", "")).lower().endswith("backfill")
        evaluation = evaluate_best(self.search_result, s3=s3, mlflow=mlflow)
        decision = register_and_promote(
            evaluation,
            registry,
            dag_id=self.dag_id,
            dag_run_id=context["run_id"],
            code_version=code_version(),
            metric=self.metric or None,
            margin=float(self.margin),
            is_backfill=is_backfill,
            allow_backfill_promotion=as_bool(self.allow_backfill_promotion),
            task_id=self.task_id,
            # What started the run (raw_data_events, drift_retraining), recorded in the version's tags.
            trigger_event=(context.get("params") or {}).get("event") or None,
        )
        version = lineage.model_version_asset(decision["model_name"], decision["version"])
        made_from = lineage.features_name(evaluation["dataset"], evaluation["snapshot_id"])
        extra = {"made_from": made_from, "decision": decision["decision"], "promoted": decision["promoted"]}
        features = features_uri(lake, evaluation["dataset"], evaluation["snapshot_id"])
        self.record_lineage(
            context,
            lineage.MODEL_VERSIONS,
            version,
            extra,
            read=[lineage.s3_dataset(str(features))],
            wrote=[lineage.model_dataset(mlflow.tracking_uri, decision["model_name"], decision["version"])],
        )
        return {"evaluation": evaluation, **decision}
