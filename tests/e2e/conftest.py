"""Fixtures of the end-to-end tests: one running Airflow and one DAG run shared by every e2e test of the session.

Airflow is `airflow standalone` as `make airflow-up` starts it (stack.services.AIRFLOW): without the stack's endpoint
and key variables, so its tasks reach S3, Kafka, MLflow and Spark only through the connections `make stack-up`
imported. The tests themselves reach the services with the stack's settings (the `settings` fixture).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stack.demo import AIRFLOW, AirflowApi, admin_password, follow, trigger, wait_for_dag

NUM_SAMPLES = 2
MAX_EPOCHS = 3


@pytest.fixture(scope="session")
def airflow_api(
    s3_service: None, kafka_service: None, mlflow_service: None, stack_env: dict[str, str]
) -> Iterator[AirflowApi]:
    """A running `airflow standalone`: started here unless it already runs, and stopped again if started here."""
    from stack.config import stack_paths
    from stack.services import AIRFLOW as AIRFLOW_SERVICE

    paths = stack_paths()
    started_here = AIRFLOW_SERVICE.running_pid(paths) is None
    AIRFLOW_SERVICE.start(paths, stack_env)
    api = AirflowApi(AIRFLOW, "admin", admin_password())
    wait_for_dag(api)
    yield api
    if started_here:
        AIRFLOW_SERVICE.stop(paths)
        # tests/e2e/dags/test_raw_data_events.py replaces standalone's triggerer with one of its own
        from stack.cluster import AIRFLOW_COMPONENTS

        for component in AIRFLOW_COMPONENTS:
            component.stop(paths)


@pytest.fixture(scope="session")
def first_run(airflow_api: AirflowApi, settings: Any, s3_client: Any) -> dict[str, Any]:
    """Upload a copy of the penguins data under a new dataset name and run the DAG once on it; at the same moment,
    a run on another new dataset (the shipped cars data, regression, trials of 2 DDP workers) under "other": two
    runs at once."""
    from ml.datasets import load_shipped, upload_frame
    from ml.storage import S3Uri
    from tests.support.dag_runs import penguins_run

    conf = penguins_run(settings.lake, s3_client, "e2e", NUM_SAMPLES, MAX_EPOCHS)
    dataset, raw, other = conf["dataset"], settings.lake.raw_bucket, f"e2e_cars_{uuid.uuid4().hex[:8]}"
    upload_frame(load_shipped("cars"), S3Uri(raw, f"e2e/{other}/cars.csv"), s3_client)
    other_conf = {
        **conf,
        "raw_uri": f"s3://{raw}/e2e/{other}/",
        "dataset": other,
        "target": "Miles_per_Gallon",
        "task": "regression",
        "max_concurrent_trials": 1,
        "workers_per_trial": 2,  # data-parallel trials (Ray Train DDP) under Airflow
    }
    run_id, other_run_id = trigger(airflow_api, conf), trigger(airflow_api, other_conf)
    states = follow(airflow_api, [run_id, other_run_id], timeout_s=1800)
    return {
        "dataset": dataset,
        "conf": conf,
        "run_id": run_id,
        "state": states[run_id],
        "other": {"dataset": other, "conf": other_conf, "run_id": other_run_id, "state": states[other_run_id]},
    }
