"""Drift -> retraining end to end (issue 16 item 4): drift.v1 events on the real broker, as the drift monitor publishes
them, reach Airflow through the `model_drift` asset's watcher, and drift_retraining starts mlops_training for the
dataset whose route says `retrain` (penguins), with the drift in the run's conf, and nothing for a dataset that only
alerts (cars) or for a window that did not drift. A second drifted window of the same hour starts no second run.

The started penguins run is failed once its conf is checked: its raw prefix (s3://raw/penguins/) holds nothing in
this suite, and what a run does with its `event` (the new version's tags) is tested in the unit tests of
registration (ml.registry.register.version_tags) and of the register operator."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from ml.settings import Settings
from stack.demo import AirflowApi
from stack.process import wait_until
from tests.unit.ml.events.samples import DRIFT as DRIFT_SAMPLE

DRIFT_DAG = "drift_retraining"
TRAINING_DAG = "mlops_training"


def _runs(api: AirflowApi, dag_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = api.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=-id")["dag_runs"]
    return runs


def _dag_parsed(api: AirflowApi) -> bool:
    try:
        return api.request("GET", f"/api/v2/dags/{DRIFT_DAG}")["is_paused"] is False
    except RuntimeError:
        return False


@pytest.fixture(scope="module")
def drift_api(airflow_api: AirflowApi) -> AirflowApi:
    assert wait_until(lambda: _dag_parsed(airflow_api), 120, 2.0), f"{DRIFT_DAG} did not appear unpaused"
    return airflow_api


def publish(settings: Settings, *payloads: dict[str, Any]) -> list[str]:
    """Send drift.v1 events as the monitor does (envelope, key); returns their event ids."""
    from ml.events.envelope import drift_key
    from ml.events.publisher import publish_event
    from ml.topics import DRIFT

    ids = []
    for payload in payloads:
        key = drift_key(payload["model_name"], payload["model_version"], payload["window_start"])
        ids.append(publish_event(settings.kafka, DRIFT, payload, key)["event_id"])
    return ids


def drift(dataset: str, hour: datetime, minute: int, *, drifted: bool = True) -> dict[str, Any]:
    start = hour.replace(minute=minute).isoformat().replace("+00:00", "Z")
    end = hour.replace(minute=minute + 1).isoformat().replace("+00:00", "Z")
    return {
        **DRIFT_SAMPLE,
        "model_name": f"{dataset}-e2e-{uuid.uuid4().hex[:6]}",
        "dataset": dataset,
        "window_start": start,
        "window_end": end,
        "drifted": drifted,
        "drifted_features": DRIFT_SAMPLE["drifted_features"] if drifted else [],
    }


def test_drift_retrains_the_dataset_whose_route_says_so_once_per_hour(
    drift_api: AirflowApi, settings: Settings
) -> None:
    # An hour of windows no other run of this suite uses (the run id is the dataset and the hour).
    hour = datetime(2031, 1, 1, int(uuid.uuid4().int % 24), tzinfo=UTC)
    run_id = f"drift__penguins__{hour.strftime('%Y%m%dT%H')}"
    before = {run["dag_run_id"] for run in _runs(drift_api, DRIFT_DAG)}
    penguins = drift("penguins", hour, 10)
    publish(settings, drift("penguins", hour, 9, drifted=False), drift("cars", hour, 10), penguins)

    def retraining() -> dict[str, Any] | None:
        return next((run for run in _runs(drift_api, TRAINING_DAG) if run["dag_run_id"] == run_id), None)

    assert wait_until(lambda: retraining() is not None, 300, 3.0), "no retraining run started for the penguins drift"
    run = retraining()
    assert run is not None
    conf = run["conf"]
    assert (conf["dataset"], conf["task"], conf["target"]) == ("penguins", "classification", "species")
    assert conf["raw_uri"] == f"s3://{settings.lake.raw_bucket}/penguins/"
    event = conf["event"]
    assert (event["source"], event["model_name"], event["model_version"]) == ("drift", penguins["model_name"], "4")
    assert event["drifted_features"] == ["bill_length_mm"] and event["windows"] == [penguins["window_start"]]
    try:
        # cars only alerts: no run of its own
        assert not [r for r in _runs(drift_api, TRAINING_DAG) if r["dag_run_id"].startswith("drift__cars__")]

        # Another drifted window of the same hour: drift_retraining runs again and finds the run started.
        publish(settings, drift("penguins", hour, 20))

        def drift_runs_done() -> bool:
            new = [r for r in _runs(drift_api, DRIFT_DAG) if r["dag_run_id"] not in before]
            return len(new) >= 2 and all(r["state"] in ("success", "failed") for r in new)

        assert wait_until(drift_runs_done, 300, 3.0), "drift_retraining did not handle the second window"
        new = [r for r in _runs(drift_api, DRIFT_DAG) if r["dag_run_id"] not in before]
        assert {r["state"] for r in new} == {"success"}, new
        assert [r["dag_run_id"] for r in _runs(drift_api, TRAINING_DAG) if r["dag_run_id"] == run_id] == [run_id]
    finally:
        # Nothing to train on under s3://raw/penguins/ in this suite: free the run's seat for the other tests.
        drift_api.request("PATCH", f"/api/v2/dags/{TRAINING_DAG}/dagRuns/{quote(run_id)}", {"state": "failed"})


def test_the_monitoring_page_shows_a_published_drift_window_behind_the_login(
    drift_api: AirflowApi, settings: Settings
) -> None:
    import urllib.error
    import urllib.request

    from stack.demo import AIRFLOW

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # not drifted: no retraining run (the watcher skips it), but the page shows every window
    window = drift("penguins", now.replace(minute=0), min(now.minute, 58), drifted=False)
    publish(settings, window)
    url = f"{AIRFLOW}/mlops/monitoring?model={quote(window['model_name'])}&hours=2"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=60)
    assert refused.value.code == 401, "the monitoring page is behind Airflow's login"
    request = urllib.request.Request(url, headers={"Authorization": drift_api.headers["Authorization"]})
    with urllib.request.urlopen(request, timeout=60) as response:
        page = response.read().decode()
    assert window["model_name"] in page and "bill_length_mm" in page and "<svg" in page
