"""batch_scoring: the batch layer's view: each day, a dataset scored with its model's champion into Hive.

Resolves the model's alias (default `champion`) to one version, then scores the raw prefix (default
`s3://raw/<dataset>/`) or a Hive table through spark-submit (ml.scoring.job) into `mlops.<dataset>_predictions`,
partition `score_date=<the run's logical date>/model_version=<version>`. A re-run of a date replaces exactly its
partition. A model without a champion yet skips the run (logged), it does not fail it. Lifecycle events go to Kafka
through the same callbacks as mlops_training. This file only wires tasks: the work is in `ml/scoring/`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from mlops_airflow import callbacks
from mlops_airflow.scoring import BatchScoreOperator
from mlops_airflow.templating import LAKE_BUCKET_TEMPLATE

default_args = {
    "owner": "mlops",
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "on_execute_callback": callbacks.task_started,
    "on_success_callback": callbacks.task_succeeded,
    "on_failure_callback": callbacks.task_failed,
}

params = {
    "dataset": Param(
        "penguins",
        type="string",
        maxLength=63,
        pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,62}(?!\n)$",
        description="Dataset name: the predictions table mlops.<dataset>_predictions",
    ),
    "model": Param(None, type=["null", "string"], description="Registered model (null: <dataset>-classification)"),
    "alias": Param("champion", type="string", minLength=1, description="Registry alias (or a version number)"),
    "table": Param(None, type=["null", "string"], description="Hive table to score (null: the raw prefix)"),
    "raw_uri": Param(None, type=["null", "string"], description="Raw CSV/Parquet prefix (null: s3://raw/<dataset>/)"),
}


@dag(
    dag_id="batch_scoring",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    params=params,
    render_template_as_native_obj=True,  # the resolved model reaches the operator as a dict
    tags=["mlops", "spark", "hive", "scoring"],
    on_success_callback=callbacks.run_succeeded,
    on_failure_callback=callbacks.run_failed,
    doc_md=__doc__,
)
def batch_scoring() -> None:
    @task
    def resolve_champion(**context: object) -> dict[str, str]:
        """The version to score with (its checkpoint and feature spec), or a skip when the model has none."""
        from airflow.exceptions import AirflowSkipException

        from ml.scoring.model import NoModelToScore, resolve_scoring_model
        from mlops_airflow.hooks import MlflowHook

        p = context["params"]  # type: ignore[index]
        name = p["model"] or f"{p['dataset']}-classification"  # type: ignore[index]
        try:
            return resolve_scoring_model(MlflowHook().settings, name, str(p["alias"])).to_dict()  # type: ignore[index]
        except NoModelToScore as error:
            raise AirflowSkipException(f"nothing to score with: {error}") from None

    model = resolve_champion()
    score_with_spark = BatchScoreOperator(
        task_id="score_with_spark",
        dataset="{{ '%r' | format(params.dataset) }}",  # repr: native rendering keeps the name a string
        model=model,
        # The logical date, never the wall clock; a run triggered without one (Airflow 3's manual runs): its run_after.
        score_date="{{ '%r' | format(ds if ds is defined else dag_run.run_after.strftime('%Y-%m-%d')) }}",
        table="{{ '%r' | format(params.table or '') }}",
        raw_uri="{{ '%r' | format(params.raw_uri or 's3://raw/' ~ params.dataset ~ '/') }}",
        lake_bucket=LAKE_BUCKET_TEMPLATE,
        conn_id="spark_default",
        driver_memory="2g",
        pool="spark_metastore",  # one Hive (Derby) metastore writer at a time
    )
    model >> score_with_spark


batch_scoring()
