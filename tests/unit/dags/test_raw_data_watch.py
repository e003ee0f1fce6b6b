"""dags/raw_data_watch.py: the asset that triggers mlops_training, and the watch task's logic (an event only when the
raw bucket's listing changed), with S3 and Airflow variables replaced by doubles and the S3 endpoint and keys taken
from the aws_default connection."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.airflow_connections import ACCESS_KEY_ID, S3_ENDPOINT

Define = Callable[..., None]


def test_the_watch_is_scheduled_and_emits_the_raw_data_asset(dagbag: Any) -> None:
    from mlops_airflow.assets import RAW_DATA

    dag = dagbag.dags["raw_data_watch"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    [task] = dag.tasks
    assert task.task_id == "detect_new_raw_data" and RAW_DATA in task.outlets
    assert RAW_DATA.uri == "s3://raw/"
    training = dagbag.dags["mlops_training"]
    assert "raw_data" in repr(training.timetable), "new raw data triggers the training DAG"


class FakeS3:
    """The listing part of a boto3 client: one page of objects under a prefix."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects
        self.listed: list[dict[str, str]] = []

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"

        def paginate(**where: str) -> list[dict[str, Any]]:
            self.listed.append(where)
            return [{"Contents": [o for o in self.objects if o["Key"].startswith(where["Prefix"])]}]

        return SimpleNamespace(paginate=paginate)


@pytest.fixture
def watch(dagbag: Any, connections: Define, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The task's function, with its S3 client and Airflow variables replaced; `.s3`, `.variables`, `.clients`."""
    import ml.clients

    connections("aws_default")
    function = dagbag.dags["raw_data_watch"].task_dict["detect_new_raw_data"].python_callable
    state = SimpleNamespace(s3=FakeS3([]), variables={}, clients=[])

    def client_for(settings: Any) -> FakeS3:
        state.clients.append(settings)
        return state.s3

    monkeypatch.setattr(ml.clients, "s3_client", client_for)
    variables = SimpleNamespace(
        get=lambda name, default=None: state.variables.get(name, default),
        set=lambda name, value: state.variables.__setitem__(name, value),
    )
    monkeypatch.setitem(function.__globals__, "Variable", variables)
    state.run = function
    return state


def _object(key: str, etag: str, size: int = 10) -> dict[str, Any]:
    return {"Key": key, "ETag": f'"{etag}"', "Size": size}


def test_new_raw_data_emits_an_event_and_unchanged_data_skips(watch: Any) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    watch.s3.objects = [_object("penguins/penguins.csv", "a1")]
    first = watch.run()
    assert watch.variables == {"raw_data_watch_hash": first}
    assert watch.s3.listed == [{"Bucket": "raw", "Prefix": ""}]
    assert (watch.clients[0].endpoint_url, watch.clients[0].access_key_id) == (S3_ENDPOINT, ACCESS_KEY_ID)

    with pytest.raises(AirflowSkipException, match="unchanged"):
        watch.run()  # the same listing: no asset event

    watch.s3.objects.append(_object("cars/cars.csv", "b2"))
    second = watch.run()
    assert second != first and watch.variables["raw_data_watch_hash"] == second


def test_a_changed_object_is_new_data(watch: Any) -> None:
    watch.s3.objects = [_object("penguins/penguins.csv", "a1")]
    first = watch.run()
    watch.s3.objects = [_object("penguins/penguins.csv", "a2")]  # rewritten: another ETag
    assert watch.run() != first


def test_an_empty_bucket_is_a_state_of_its_own(watch: Any) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    assert watch.run() == "empty"
    with pytest.raises(AirflowSkipException):
        watch.run()
