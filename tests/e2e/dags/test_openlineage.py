"""OpenLineage from Airflow (issue 15): the OpenLineage provider's listener sends the events of every task and DAG run
to the broker's `openlineage` topic (connection openlineage_default, stack.airflow_home), and the pipeline's
operators tell it what each task read and wrote (plugins/mlops_airflow/lineage.py); the preprocessing job's
OpenLineage Spark listener (ml/preprocess/lineage.py) sends Spark's own events there too. Checked on the e2e run:
every event on the topic is an OpenLineage RunEvent by openlineage-python's models, the run's events chain raw data
-> snapshot -> features -> (search) -> registered model version, and the Spark job's events hang under the
preprocessing task, reading the snapshot's files and writing the features' splits.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from ml.settings import Settings
from ml.topics import OPENLINEAGE
from stack.demo import DAG_ID, AirflowApi
from tests.support.kafka_topics import topic_messages
from tests.support.openlineage import run_event
from tests.support.probes import wait_until

NAMESPACE = "mlops-airflow"  # [openlineage] namespace of the stack's Airflow (stack.config)


def _dag_run_id(doc: dict[str, Any]) -> str | None:
    facets = doc["run"].get("facets") or {}
    facet = facets.get("airflow") or facets.get("airflowDagRun") or {}
    return (facet.get("dagRun") or {}).get("run_id")


def _lineage_events(settings: Settings) -> list[dict[str, Any]]:
    return [json.loads(record.value) for record in topic_messages(settings.kafka, OPENLINEAGE.name, timeout_s=10)]


def _datasets(event: dict[str, Any], side: str) -> list[tuple[str, str]]:
    return [(dataset["namespace"], dataset["name"]) for dataset in event.get(side) or []]


def test_every_task_and_the_dag_run_send_valid_openlineage_events_chaining_the_data(
    airflow_api: AirflowApi, first_run: dict[str, Any], settings: Settings
) -> None:
    run_id = first_run["run_id"]
    docs: list[dict[str, Any]] = []

    def dag_run_completed() -> bool:
        # The scheduler sends the DAG run's COMPLETE event after the run has ended: it may trail the run's state.
        docs[:] = _lineage_events(settings)
        ends = [d for d in docs if d["job"]["name"] == DAG_ID and d["eventType"] == "COMPLETE"]
        return any(_dag_run_id(d) == run_id for d in ends)

    wait_until(dag_run_completed, "the DAG run's OpenLineage COMPLETE event", timeout_s=120)
    for doc in docs:  # every event on the topic, of this run or not, is OpenLineage's
        run_event(doc)

    ours = [doc for doc in docs if _dag_run_id(doc) == run_id]
    assert {doc["job"]["namespace"] for doc in ours} == {NAMESPACE}
    by_job = {(doc["job"]["name"], doc["eventType"]): doc for doc in ours}
    dag_run = by_job[(DAG_ID, "COMPLETE")]
    assert (DAG_ID, "START") in by_job
    tasks = ("ingest_raw_data", "preprocess_with_spark", "tune_models", "register_best_model")
    for task in tasks:
        start, complete = by_job[(f"{DAG_ID}.{task}", "START")], by_job[(f"{DAG_ID}.{task}", "COMPLETE")]
        assert start["run"]["runId"] == complete["run"]["runId"], task
        parent = complete["run"]["facets"]["parent"]
        assert (parent["job"]["name"], parent["run"]["runId"]) == (DAG_ID, dag_run["run"]["runId"]), task

    ingest, preprocess, tune, register = (by_job[(f"{DAG_ID}.{task}", "COMPLETE")] for task in tasks)
    raw = urlsplit(first_run["conf"]["raw_uri"])
    assert _datasets(ingest, "inputs") == [(f"s3://{raw.netloc}", raw.path.strip("/"))]
    [snapshot] = _datasets(ingest, "outputs")
    snapshot_id = airflow_api.xcom(run_id, "ingest_raw_data")["snapshot_id"]
    assert snapshot == (f"s3://{settings.lake.lake_bucket}", f"datasets/{first_run['dataset']}/snapshots/{snapshot_id}")
    assert _datasets(preprocess, "inputs") == [snapshot]
    [features] = _datasets(preprocess, "outputs")
    assert _datasets(tune, "inputs") == _datasets(register, "inputs") == [features]
    assert _datasets(tune, "outputs")[0][1].startswith(f"tune/{first_run['dataset']}/{snapshot_id}/")
    registered = airflow_api.xcom(run_id, "register_best_model")
    [model] = register["outputs"]
    assert (model["namespace"], model["name"]) == (
        settings.mlflow.tracking_uri.rstrip("/"),
        f"models/{registered['model_name']}",
    )
    assert model["facets"]["version"]["datasetVersion"] == str(registered["version"])


def test_the_spark_jobs_events_name_the_preprocessing_task_as_parent_and_its_files(
    airflow_api: AirflowApi, first_run: dict[str, Any], settings: Settings
) -> None:
    run_id, dataset = first_run["run_id"], first_run["dataset"]
    docs = _lineage_events(settings)
    [task] = [
        d
        for d in docs
        if d["job"]["name"] == f"{DAG_ID}.preprocess_with_spark" and d["eventType"] == "COMPLETE"
        if _dag_run_id(d) == run_id
    ]

    def parent_run(doc: dict[str, Any]) -> str | None:
        parent = (doc["run"].get("facets") or {}).get("parent")
        return parent["run"]["runId"] if parent else None

    spark = [d for d in docs if "/integration/spark" in d["producer"]]
    # The application's events name the Airflow task's run as parent (spark_inject_parent_job_info).
    applications = {d["run"]["runId"] for d in spark if parent_run(d) == task["run"]["runId"]}
    assert len(applications) == 1, "one Spark application under the preprocessing task"
    actions = [d for d in spark if parent_run(d) in applications and d["eventType"] == "COMPLETE"]
    lake = f"s3://{settings.lake.lake_bucket}"
    snapshot_id = airflow_api.xcom(run_id, "ingest_raw_data")["snapshot_id"]
    written = {name for d in actions for namespace, name in _datasets(d, "outputs") if namespace == lake}
    read = {name for d in actions for namespace, name in _datasets(d, "inputs") if namespace == lake}
    features = f"datasets/{dataset}/features/{snapshot_id}"
    assert {f"{features}/{split}" for split in ("train", "validation", "test")} <= written
    assert read and all(name.startswith(f"datasets/{dataset}/snapshots/{snapshot_id}/") for name in read), read
    assert {d["job"]["namespace"] for d in spark if d["run"]["runId"] in applications} == {NAMESPACE}
