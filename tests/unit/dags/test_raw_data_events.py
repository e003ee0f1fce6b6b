"""dags/raw_data_events.py and its glue (plugins/mlops_airflow/uploads.py): the watched asset schedules the DAG; a
batch waits until uploads stop, plans one mlops_training run per routed dataset with params mlops_training accepts,
and is recorded so that neither a retry nor a redelivered notification starts a run twice. Airflow's inlet events,
variables and S3 are doubles here; tests/e2e/dags/test_raw_data_events.py runs the real thing."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ml.events.s3_notifications import CreatedObject
from tests.support.asset_events import Events
from tests.support.fake_clock import FakeClock

ROUTES = Path(__file__).resolve().parents[3] / "dags" / "event_routes.yaml"


def test_the_watched_asset_schedules_the_dag_and_the_batch_starts_mlops_training(dagbag: Any) -> None:
    from mlops_airflow.assets import RAW_UPLOADS

    dag = dagbag.dags["raw_data_events"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert "raw_uploads" in repr(dag.timetable)
    assert [watcher.name for watcher in RAW_UPLOADS.watchers] == ["s3_notifications"]
    assert {task_id: sorted(task.downstream_task_ids) for task_id, task in dag.task_dict.items()} == {
        "wait_for_quiet": ["plan_training_runs", "record_handled"],
        "plan_training_runs": ["start_training"],
        "start_training": ["record_handled"],
        "record_handled": [],
    }
    assert dag.task_dict["wait_for_quiet"].poke_interval == 5
    start = dag.task_dict["start_training"]
    assert start.partial_kwargs["trigger_dag_id"] == "mlops_training"
    assert start.partial_kwargs["skip_when_already_exists"] is True
    training = dagbag.dags["mlops_training"]
    assert "raw_uploads" not in repr(training.timetable), "an asset run of mlops_training would train penguins"


def test_every_route_gives_params_mlops_training_accepts(dagbag: Any) -> None:
    from ml.events.routes import load_routes
    from ml.events.uploads import plan_runs, uploads_from_events

    params = dagbag.dags["mlops_training"].params
    for route in load_routes(ROUTES).routes:
        obj = CreatedObject(
            "raw", route.prefix.removeprefix("s3://raw/") + "x.csv", 1, "e", "s3:ObjectCreated:Put", "t"
        )
        event = SimpleNamespace(id=1, timestamp=datetime.now(UTC), extra={"payload": {"objects": [obj.as_dict()]}})
        [run], _ = plan_runs(uploads_from_events([event]), load_routes(ROUTES), lambda o: '"e"')
        merged = copy.deepcopy(params)
        assert set(run.conf) <= set(merged), "every key of the conf is a param of the DAG"
        merged.update(run.conf)  # resolves each value against its param's schema: raises on one the DAG refuses
        merged.validate()
        assert merged["dataset"] == route.dataset and merged["event"]["objects"] == [obj.uri]


class FakeS3:
    def __init__(self) -> None:
        self.etags: dict[str, str] = {}

    def head_object(self, Bucket: str, Key: str) -> dict[str, str]:
        if f"{Bucket}/{Key}" not in self.etags:
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")
        return {"ETag": self.etags[f"{Bucket}/{Key}"]}


@pytest.fixture
def airflow(connections: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The glue with its doubles: `.events` (the asset's events), `.variables`, `.s3`, `.clock`, `.context`."""
    import airflow.sdk

    import ml.clients
    from mlops_airflow.assets import RAW_UPLOADS

    connections("aws_default")
    state = SimpleNamespace(events=[], variables={}, s3=FakeS3(), clock=FakeClock(wall=1_900_000_000.0))
    monkeypatch.setattr(ml.clients, "s3_client", lambda settings: state.s3)

    class Variable:
        @staticmethod
        def get(key: str, default: Any = None, deserialize_json: bool = False) -> Any:
            assert deserialize_json
            return state.variables.get(key, default)

        @staticmethod
        def set(key: str, value: Any, serialize_json: bool = False, description: str | None = None) -> None:
            assert serialize_json
            state.variables[key] = value

    monkeypatch.setattr(airflow.sdk, "Variable", Variable)
    state.context = lambda: {"inlet_events": {RAW_UPLOADS: Events(list(state.events))}}
    state.asset = RAW_UPLOADS
    return state


def _upload(state: Any, key: str, seconds_ago: float, etag: str = "e1") -> CreatedObject:
    """A notification stored as an asset event `seconds_ago` (by the fake clock), its object in S3."""
    obj = CreatedObject("raw", key, 10, etag, "s3:ObjectCreated:Put", f"t-{len(state.events)}")
    state.s3.etags[f"raw/{key}"] = f'"{etag}"'
    stored = datetime.fromtimestamp(state.clock.time(), UTC) - timedelta(seconds=seconds_ago)
    state.events.append(
        SimpleNamespace(id=len(state.events) + 1, timestamp=stored, extra={"payload": {"objects": [obj.as_dict()]}})
    )
    return obj


def test_a_batch_waits_for_quiet_starts_one_run_per_dataset_and_is_acted_on_once(airflow: Any) -> None:
    from mlops_airflow.uploads import STATE_VARIABLE, plan, quiet_batch, record_handled

    def batch() -> Any:
        return quiet_batch(airflow.context(), airflow.asset, 30, clock=airflow.clock)

    assert batch() == {"through_event_id": None}, "no event: nothing to wait for"
    parts = [_upload(airflow, f"cars/part-{i}.csv", seconds_ago=40 - 10 * i) for i in range(3)]
    _upload(airflow, "unknown/x.csv", seconds_ago=15)
    assert batch() is None, "the last upload came 10 s ago: uploads may still be arriving"
    airflow.clock.advance(20)
    through = batch()
    assert through == {"through_event_id": 4}

    runs, ignored = plan(airflow.context(), airflow.asset, 4, ROUTES, "aws_default")
    assert [run.conf["dataset"] for run in runs] == ["cars"]
    assert runs[0].conf["event"]["objects"] == [part.uri for part in parts]
    assert list(ignored) == ["s3://raw/unknown/x.csv"]
    assert plan(airflow.context(), airflow.asset, 4, ROUTES, "aws_default")[0] == runs, "a retry plans the same runs"

    assert record_handled(airflow.context(), airflow.asset, 4, clock=airflow.clock) == {
        "last_event_id": 4,
        "acted_on": 4,
    }
    assert airflow.variables[STATE_VARIABLE]["last_event_id"] == 4
    assert record_handled(airflow.context(), airflow.asset, 4, clock=airflow.clock)["acted_on"] == 0, "retried"

    # The triggerer restarted before committing the last offset: the notification comes back as event 5.
    airflow.events.append(
        SimpleNamespace(
            id=5, timestamp=airflow.events[2].timestamp + timedelta(seconds=60), extra=airflow.events[2].extra
        )
    )
    airflow.clock.advance(120)
    assert batch() == {"through_event_id": 5}, "handled at once: it carries nothing new"
    assert plan(airflow.context(), airflow.asset, 5, ROUTES, "aws_default") == ([], {})
    record_handled(airflow.context(), airflow.asset, 5, clock=airflow.clock)
    assert batch() == {"through_event_id": None}


def test_a_bad_routes_file_fails_the_plan_before_anything_is_started(airflow: Any, tmp_path: Path) -> None:
    from ml.events.routes import RoutesError
    from mlops_airflow.uploads import STATE_VARIABLE, plan

    _upload(airflow, "cars/a.csv", seconds_ago=60)
    bad = tmp_path / "event_routes.yaml"
    bad.write_text("version: 2\ndatasets: []\n")
    with pytest.raises(RoutesError, match=r"event_routes\.yaml"):
        plan(airflow.context(), airflow.asset, 1, bad, "aws_default")
    assert STATE_VARIABLE not in airflow.variables, "the events stay pending until the file is mended"
