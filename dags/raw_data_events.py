"""raw_data_events: new objects in the raw bucket start the training of the dataset they belong to.

The S3 server notifies every upload through Kafka (mlops.s3.events.v1); the `raw_uploads` asset's watcher turns each
notification into an asset event, which schedules this DAG. It waits until no upload has arrived for `quiet_seconds`
(the objects of one upload coalesce into one run), routes each new object to its dataset by dags/event_routes.yaml
(an object under no route's prefix is logged and starts nothing), and starts one mlops_training run per dataset with
that route's params. Each notification is acted on once, across retries and redeliveries (plugins/mlops_airflow/
uploads.py). The daily schedule and manual triggers of mlops_training do not depend on it.
"""

from __future__ import annotations

from pathlib import Path

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

from mlops_airflow.assets import RAW_UPLOADS

ROUTES = Path(__file__).with_name("event_routes.yaml")


@dag(
    dag_id="raw_data_events",
    schedule=RAW_UPLOADS,
    catchup=False,
    max_active_runs=1,  # one batch at a time: a batch takes every event stored before it ends waiting
    is_paused_upon_creation=False,  # event-driven from the start: uploads are what it is for
    params={
        "quiet_seconds": Param(30, type="integer", minimum=0, maximum=3600, description="Wait for uploads to stop"),
    },
    tags=["mlops", "assets", "kafka"],
    doc_md=__doc__,
)
def raw_data_events() -> None:
    # Poke mode: a batch waits seconds to minutes. In reschedule mode, Airflow 3.3's LocalExecutor marked the sensor
    # failed when its next poke was queued before the executor had reported the previous one ("finished with state
    # success, but the task instance's state attribute is queued"), which a 5-s interval made frequent.
    @task.sensor(poke_interval=5, timeout=3600, mode="poke", inlets=[RAW_UPLOADS])
    def wait_for_quiet(**context: object) -> object:
        from airflow.sdk import PokeReturnValue

        from mlops_airflow.uploads import quiet_batch

        batch = quiet_batch(context, RAW_UPLOADS, context["params"]["quiet_seconds"])  # type: ignore[index]
        return PokeReturnValue(is_done=batch is not None, xcom_value=batch)

    @task(inlets=[RAW_UPLOADS], retries=2)
    def plan_training_runs(batch: dict[str, object], **context: object) -> list[dict[str, object]]:
        from mlops_airflow.uploads import plan

        runs, ignored = plan(context, RAW_UPLOADS, batch["through_event_id"], ROUTES, "aws_default")  # type: ignore[arg-type]
        print(f"{len(runs)} run(s) to start; ignored: {ignored or 'nothing'}")
        return [{"trigger_run_id": run.run_id, "conf": run.conf} for run in runs]

    @task(inlets=[RAW_UPLOADS], retries=2, trigger_rule="none_failed")
    def record_handled(batch: dict[str, object], **context: object) -> dict[str, object]:
        from mlops_airflow.uploads import record_handled

        return record_handled(context, RAW_UPLOADS, batch["through_event_id"])  # type: ignore[arg-type]

    batch = wait_for_quiet()
    planned = plan_training_runs(batch)
    start_training = TriggerDagRunOperator.partial(
        task_id="start_training",
        trigger_dag_id="mlops_training",
        skip_when_already_exists=True,  # a retried batch finds its runs started: no second one
        # A paused mlops_training queues the run until it is unpaused, as a manual trigger does: no upload is lost.
    ).expand_kwargs(planned)
    start_training >> record_handled(batch)


raw_data_events()
