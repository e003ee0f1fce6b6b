"""Event-driven runs end to end (issue 15): the real S3 server notifies uploads through the real broker, Airflow's
triggerer turns them into asset events (the `raw_uploads` asset's watcher), raw_data_events starts mlops_training on
the dataset that changed. No polling DAG exists any more.

What is proven, in order (one training run in all): an upload under a prefix no route names, and a malformed message on
the notifications topic, start nothing, and the watcher keeps running; with the triggerer killed, three objects
uploaded under s3://raw/cars/ wait in Kafka (their offsets were never committed) and, once a triggerer runs again, start
exactly one run, a cars regression run (not penguins) with the cars route's params and the three objects in its conf;
that run succeeds.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from ml.settings import Settings
from stack.demo import AirflowApi, follow, runs_started_by
from stack.process import group_alive, signal_group, wait_until

EVENTS_DAG = "raw_data_events"
TRAINING_DAG = "mlops_training"


def _runs(api: AirflowApi, dag_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = api.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=-id")["dag_runs"]
    return runs


@pytest.fixture(scope="module")
def events_api(airflow_api: AirflowApi) -> AirflowApi:
    """Airflow with raw_data_events parsed (unpaused at creation: uploads are what it is for) and mlops_training
    unpaused (as `make demo` does; a paused one would queue the started runs)."""
    assert wait_until(lambda: _dag(airflow_api) is not None, 120, 2.0), f"{EVENTS_DAG} did not appear"
    assert _dag(airflow_api)["is_paused"] is False  # type: ignore[index]
    airflow_api.request("PATCH", f"/api/v2/dags/{TRAINING_DAG}", {"is_paused": False})
    return airflow_api


def _dag(api: AirflowApi) -> dict[str, Any] | None:
    try:
        dag: dict[str, Any] = api.request("GET", f"/api/v2/dags/{EVENTS_DAG}")
    except RuntimeError:
        return None
    return dag


def _handled(api: AirflowApi) -> set[str]:
    """The URIs of the uploads raw_data_events has acted on (its state variable)."""
    try:
        value = api.request("GET", "/api/v2/variables/mlops_raw_uploads_state")["value"]
    except RuntimeError:  # not written yet
        return set()
    return {fingerprint.split("|")[0] for fingerprint in json.loads(value)["recent"]}


def _upload(s3_client: Any, settings: Settings, key: str, rows: Any) -> str:
    buffer = io.BytesIO()
    rows.to_csv(buffer, index=False)
    s3_client.put_object(Bucket=settings.lake.raw_bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{settings.lake.raw_bucket}/{key}"


def test_unrouted_uploads_and_malformed_messages_start_nothing(
    events_api: AirflowApi, settings: Settings, s3_client: Any
) -> None:
    from ml.clients import close_quietly, kafka_producer
    from ml.datasets import load_shipped
    from ml.topics import S3_EVENTS

    producer = kafka_producer(settings.kafka)
    try:
        producer.send(S3_EVENTS.name, b'{"Records": "not a list"}').get(timeout=30)
    finally:
        close_quietly(producer)
    unrouted = _upload(s3_client, settings, f"e2e-unrouted-{uuid.uuid4().hex[:8]}/x.csv", load_shipped("cars").head(5))

    # Handled: the dispatcher remembers the objects it acted on (plugins/mlops_airflow/uploads.py), ignored ones too.
    # The malformed message came first on the topic's one partition: the watcher got past it.
    assert wait_until(lambda: unrouted in _handled(events_api) and _batches_idle(events_api), 300, 3.0), (
        "the unrouted upload was never handled by raw_data_events"
    )
    assert not runs_started_by(events_api, {unrouted})


@pytest.fixture
def triggerer_restarted(events_api: AirflowApi, stack_env: dict[str, str]) -> Iterator[Any]:
    """Kills the triggerer of `airflow standalone` (SIGKILL: no clean shutdown, no commit); the test calls the yielded
    function to start a triggerer again (the cluster profile's own service: the same Airflow home and database). It
    runs until the session's Airflow is stopped (tests/e2e/conftest.py)."""
    from stack.cluster import AIRFLOW_COMPONENTS
    from stack.config import stack_paths
    from stack.services import AIRFLOW

    paths = stack_paths()
    triggerer = next(service for service in AIRFLOW_COMPONENTS if service.name == "airflow-triggerer")
    replaced = triggerer.running_pid(paths)
    if replaced is not None:  # a second run of this test against the same Airflow: kill the earlier replacement
        signal_group(replaced, signal.SIGKILL)
        assert wait_until(lambda: not group_alive(replaced), 30)
    else:
        # standalone runs each component as `airflow <component>`, its own child: that one and what it started.
        standalone = AIRFLOW.running_pid(paths)
        assert standalone is not None
        [component] = [c for c in psutil.Process(standalone).children() if c.cmdline()[-1:] == ["triggerer"]]
        doomed = [component, *component.children(recursive=True)]
        for process in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(doomed, timeout=30)
    yield lambda: triggerer.start(paths, stack_env)
    pid = triggerer.running_pid(paths)
    if pid is None:  # the test failed before starting it: start it, later tests need a triggerer
        triggerer.start(paths, stack_env)


def test_uploads_while_the_triggerer_is_down_start_one_cars_regression_run(
    events_api: AirflowApi, settings: Settings, s3_client: Any, triggerer_restarted: Any
) -> None:
    from ml.datasets import load_shipped

    cars = load_shipped("cars")
    tag = uuid.uuid4().hex[:8]
    parts = {_upload(s3_client, settings, f"cars/e2e-{tag}-{i}.csv", cars.iloc[i::3]) for i in range(3)}
    triggerer_restarted()

    def started() -> list[dict[str, Any]]:
        return runs_started_by(events_api, parts)

    assert wait_until(lambda: bool(started()), 600, 3.0), "no training run started for the uploads"
    [run] = started()
    # The batch waits for its quiet period, so a second run would have been started by now if the uploads split.
    assert wait_until(lambda: _batches_idle(events_api), 300, 3.0)
    assert [r["dag_run_id"] for r in started()] == [run["dag_run_id"]], "the three uploads started one run"
    conf = run["conf"]
    assert (conf["dataset"], conf["task"], conf["target"]) == ("cars", "regression", "Miles_per_Gallon")
    assert conf["raw_uri"] == f"s3://{settings.lake.raw_bucket}/cars/"
    assert (conf["num_samples"], conf["max_epochs"]) == (4, 10), "the cars route's params (dags/event_routes.yaml)"
    assert set(conf["event"]["objects"]) == parts and conf["event"]["object_count"] == 3
    state = follow(events_api, [run["dag_run_id"]], timeout_s=1500)[run["dag_run_id"]]
    assert state == "success"


def _batches_idle(api: AirflowApi) -> bool:
    return all(run["state"] in ("success", "failed") for run in _runs(api, EVENTS_DAG))
