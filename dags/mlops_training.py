"""mlops_training: S3 ingest -> Spark preprocessing -> Ray Tune over PyTorch -> registration -> Kafka.

Runs daily (on the default params), when new raw data lands under a prefix of dags/event_routes.yaml (started by
dags/raw_data_events.py with that dataset's params), and on demand from the web UI,
`airflow dags trigger mlops_training --conf '{...}'` or the REST API. This file only wires tasks: the work is
in `ml/`, the Airflow glue in `plugins/mlops_airflow/`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import CronTriggerTimetable, Param, dag, task

from mlops_airflow import callbacks
from mlops_airflow.assets import RAW_UPLOADS
from mlops_airflow.lineage import FEATURES, SNAPSHOTS
from mlops_airflow.operators import (
    FeaturePreprocessOperator,
    IngestOperator,
    RayTuneOperator,
    RegisterModelOperator,
)
from mlops_airflow.run_outcome import PublishRunSummaryOperator, SkipIfModelExistsOperator
from mlops_airflow.templating import LAKE_BUCKET_TEMPLATE

# Native rendering (render_template_as_native_obj) passes a rendered string through ast.literal_eval, so a plain
# "{{ params.target }}" would turn a column named "0x10" into 16 and a dataset "True" into a bool. The names are
# rendered as their Python repr, which literal_eval turns back into exactly the string given.
DATASET = "{{ '%r' | format(params.dataset) }}"
TARGET = "{{ '%r' | format(params.target) }}"
# MLflow's artifact bucket (the stack's MLOPS_MLFLOW_BUCKET), which raw data must not come from, like the lake's.
MLFLOW_BUCKET_TEMPLATE = "{{ var.value.get('mlops_mlflow_bucket', 'mlflow') }}"

default_args = {
    "owner": "mlops",
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
    "on_execute_callback": callbacks.task_started,
    "on_success_callback": callbacks.task_succeeded,
    "on_failure_callback": callbacks.task_failed,
}

# The name patterns are ml.ingest.config's *_PATTERN (the DAG file imports no `ml` at parse time; a unit test checks
# that they agree), anchored with `(?!\n)$`: jsonschema searches with Python's `re`, where a bare `$` also matches
# before a trailing newline; `\Z` would do in Python but is not ECMA-262 (JSON Schema's regex dialect, which
# validators outside Python, such as a browser's, use).
params = {
    "raw_uri": Param(
        "s3://raw/penguins/",
        type="string",
        pattern=r"^s3a?://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\x00-\x1f\x7f]*)?(?!\n)$",
        description="Raw CSV/Parquet object or prefix in S3 (not in the lake's or MLflow's bucket)",
    ),
    "dataset": Param(
        "penguins",
        type="string",
        maxLength=63,
        pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,62}(?!\n)$",
        description="Dataset name: lake prefix, Hive table, registered model",
    ),
    "target": Param(
        "species",
        type="string",
        minLength=1,
        maxLength=128,
        pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,128}(?!\n)$",
        description="Column to predict (no control characters or line breaks)",
    ),
    "task": Param("classification", enum=["classification", "regression"]),
    "search_space": Param(
        None,
        type=["null", "object", "string"],
        description="Search space as JSON (or a path to a JSON/YAML file); null: the default",
    ),
    "num_samples": Param(8, type="integer", minimum=1, maximum=500, description="Trials to run"),
    "max_concurrent_trials": Param(2, type="integer", minimum=1, maximum=64),
    "max_epochs": Param(30, type="integer", minimum=1, maximum=1000),
    "workers_per_trial": Param(
        1, type="integer", minimum=1, maximum=64, description="DDP workers per trial (Ray Train); batch size per worker"
    ),
    "gpus_per_worker": Param(
        None, type=["null", "number"], minimum=0, description="null: one per worker when Ray has enough GPUs, else CPU"
    ),
    "cache_mb": Param(
        1024,
        type="number",
        minimum=0,
        description="Splits whose arrays fit in this many MB are cached in memory; larger ones are streamed from S3",
    ),
    "promotion_metric": Param(None, type=["null", "string"], description="null: the task's default metric"),
    "promotion_margin": Param(0.0, type="number", minimum=0, description="How much better the challenger must be"),
    "allow_backfill_promotion": Param(False, type="boolean", description="Let a backfill move the champion alias"),
    "force_retrain": Param(False, type="boolean", description="Train even if a model exists for this data and code"),
    "event": Param(
        None,
        type=["null", "object"],
        description="Set by raw_data_events: the uploads that started this run (null: a scheduled or manual run)",
    ),
}


@dag(
    dag_id="mlops_training",
    # No start date, no immediate run: unpausing the DAG waits for the next 03:00 UTC instead of
    # starting a run for the last missed slot, which would also hold one of the max_active_runs seats. A zero delta,
    # not False: with False, Airflow 3.3 still runs the missed slot when unpaused within 10% of the interval after it
    # (until 05:24 UTC here).
    # Uploads start runs through raw_data_events (with the uploaded dataset's params), not through an asset here: a
    # run scheduled by an asset would get the default params, that is penguins, whatever dataset changed.
    schedule=CronTriggerTimetable("0 3 * * *", timezone="UTC", run_immediately=timedelta(0)),
    catchup=False,
    max_active_runs=2,
    default_args=default_args,
    params=params,
    render_template_as_native_obj=True,  # templated params and XComs reach operators as dicts/ints, not strings
    tags=["mlops", "spark", "ray", "mlflow", "kafka"],
    on_success_callback=callbacks.run_succeeded,
    on_failure_callback=callbacks.run_failed,
    doc_md=__doc__,
)
def mlops_training() -> None:
    @task(retries=0)
    def validate_params(lake_bucket: object, mlflow_bucket: object, **context: object) -> dict[str, object]:
        """Fail at once, with a clear message, on params that the schema alone cannot check (raw data from the
        pipeline's own buckets), and check the names again with ml's rule (the same as the schemas' patterns)."""
        from ml.ingest.config import check_ingest_names
        from ml.tune.space import resolve_search_space
        from mlops_airflow.hooks import s3_settings

        p = context["params"]  # type: ignore[index]
        check_ingest_names(
            p["raw_uri"],  # type: ignore[index]
            p["dataset"],  # type: ignore[index]
            p["target"],  # type: ignore[index]
            forbidden_buckets=(str(lake_bucket), str(mlflow_bucket)),  # native rendering may make "123" an int
        )
        space = resolve_search_space(  # never a file of the worker's: whoever triggers a run must not read those
            p["search_space"],  # type: ignore[index]
            lambda: s3_settings("aws_default"),
            allow_local_files=False,
        )
        if p["max_concurrent_trials"] > p["num_samples"]:  # type: ignore[index]
            raise ValueError("max_concurrent_trials cannot exceed num_samples")
        return {"dataset": p["dataset"], "search_space_keys": sorted(space)}  # type: ignore[index]

    wait_for_raw_data = S3KeySensor(
        task_id="wait_for_raw_data",
        bucket_key="{{ params.raw_uri.rstrip('/') }}*",
        wildcard_match=True,
        aws_conn_id="aws_default",
        deferrable=True,
        poke_interval=30,
        timeout=6 * 3600,
    )
    ingest_raw_data = IngestOperator(
        task_id="ingest_raw_data",
        raw_uri="{{ params.raw_uri }}",
        dataset=DATASET,
        target=TARGET,
        ml_task="{{ params.task }}",
        lake_bucket=LAKE_BUCKET_TEMPLATE,
        inlets=[RAW_UPLOADS],  # lineage (outlets: the snapshot, plugins/mlops_airflow/lineage.py)
    )
    snapshot_id = ingest_raw_data.output["snapshot_id"]
    check_for_existing_model = SkipIfModelExistsOperator(
        task_id="check_for_existing_model",
        dataset=DATASET,
        snapshot_id=snapshot_id,
        ml_task="{{ params.task }}",
        force="{{ params.force_retrain }}",
        train_task_id="preprocess_with_spark",
        reuse_task_id="reuse_existing_model",
    )
    preprocess_with_spark = FeaturePreprocessOperator(
        task_id="preprocess_with_spark",
        dataset=DATASET,
        snapshot_id=snapshot_id,
        lake_bucket=LAKE_BUCKET_TEMPLATE,
        conn_id="spark_default",
        driver_memory="2g",
        pool="spark_metastore",  # one Hive (Derby) metastore writer at a time
        inlets=[SNAPSHOTS],
    )
    tune_models = RayTuneOperator(
        task_id="tune_models",
        dataset=DATASET,
        snapshot_id=snapshot_id,
        lake_bucket=LAKE_BUCKET_TEMPLATE,
        search_space="{{ params.search_space }}",
        num_samples="{{ params.num_samples }}",
        max_concurrent_trials="{{ params.max_concurrent_trials }}",
        max_epochs="{{ params.max_epochs }}",
        workers_per_trial="{{ params.workers_per_trial }}",
        gpus_per_worker="{{ params.gpus_per_worker }}",
        cache_mb="{{ params.cache_mb }}",
        aws_conn_id="aws_tune",  # the only connection that may write the searches' storage (lake/tune/)
        execution_timeout=timedelta(hours=4),
        inlets=[FEATURES],
    )
    register_best_model = RegisterModelOperator(
        task_id="register_best_model",
        search_result=tune_models.output,
        lake_bucket=LAKE_BUCKET_TEMPLATE,
        metric="{{ params.promotion_metric }}",
        margin="{{ params.promotion_margin }}",
        allow_backfill_promotion="{{ params.allow_backfill_promotion }}",
        inlets=[FEATURES],  # it scores the test split (outlets: the model version)
    )
    reuse_existing_model = EmptyOperator(task_id="reuse_existing_model")
    publish_run_summary = PublishRunSummaryOperator(
        task_id="publish_run_summary",
        snapshot=ingest_raw_data.output,
        search=tune_models.output,
        registered=register_best_model.output,
        existing_model=check_for_existing_model.output["existing_model"],
        trigger_rule="none_failed_min_one_success",
    )

    checked = validate_params(lake_bucket=LAKE_BUCKET_TEMPLATE, mlflow_bucket=MLFLOW_BUCKET_TEMPLATE)
    checked >> wait_for_raw_data >> ingest_raw_data >> check_for_existing_model
    check_for_existing_model >> preprocess_with_spark >> tune_models >> register_best_model >> publish_run_summary
    check_for_existing_model >> reuse_existing_model >> publish_run_summary


mlops_training()
