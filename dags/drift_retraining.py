"""drift_retraining: a drifted window of a model's live requests retrains its dataset, or only alerts.

The streaming drift monitor (`python -m ml monitor`) publishes one mlops.drift.v1 event per model version and window;
the `model_drift` asset's watcher turns each window that drifted into an asset event, which schedules this DAG. It
reads every drift event not handled yet (its state: an Airflow variable), looks up each dataset's route in
dags/event_routes.yaml: `on_drift: retrain` starts one mlops_training run with the route's params and the drift in
its `event` param (the registered version's tags record it), `alert` logs a warning and starts nothing. A dataset
retrains at most once per hour of drifted windows (ml.drift.retraining). The daily schedule, manual triggers and
upload-driven runs of mlops_training do not depend on it.
"""

from __future__ import annotations

from pathlib import Path

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from mlops_airflow.assets import MODEL_DRIFT

ROUTES = Path(__file__).with_name("event_routes.yaml")


@dag(
    dag_id="drift_retraining",
    schedule=MODEL_DRIFT,
    catchup=False,
    max_active_runs=1,  # one batch at a time: a batch takes every event stored before it starts
    is_paused_upon_creation=False,  # event-driven from the start, like raw_data_events
    tags=["mlops", "assets", "kafka", "drift"],
    doc_md=__doc__,
)
def drift_retraining() -> None:
    @task(inlets=[MODEL_DRIFT])
    def find_drift(**context: object) -> dict[str, object]:
        from mlops_airflow.drift import pending_batch

        return pending_batch(context, MODEL_DRIFT)

    @task(inlets=[MODEL_DRIFT], retries=2)
    def plan_retraining(batch: dict[str, object], **context: object) -> list[dict[str, object]]:
        from mlops_airflow.drift import plan

        return plan(context, MODEL_DRIFT, batch["through_event_id"], ROUTES)  # type: ignore[arg-type]

    @task(inlets=[MODEL_DRIFT], retries=2, trigger_rule="none_failed")
    def record_handled(batch: dict[str, object], **context: object) -> dict[str, object]:
        from mlops_airflow.drift import record_handled

        return record_handled(context, MODEL_DRIFT, batch["through_event_id"])  # type: ignore[arg-type]

    batch = find_drift()
    start_retraining = TriggerDagRunOperator.partial(
        task_id="start_retraining",
        trigger_dag_id="mlops_training",
        skip_when_already_exists=True,  # the dataset's run for this hour of drift exists: no second one
    ).expand_kwargs(plan_retraining(batch))
    start_retraining >> record_handled(batch)


drift_retraining()
