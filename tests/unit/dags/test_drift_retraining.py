"""dags/drift_retraining.py and its glue (plugins/mlops_airflow/drift.py): the model_drift asset (the drift
monitor's drifted windows) schedules the DAG, which reads every drift event not handled yet, plans one mlops_training
run per dataset whose route says retrain (params mlops_training accepts, the drift as the run's `event`), and records
the batch handled. Airflow's inlet events and variables are doubles here; tests/e2e/dags/test_drift_retraining.py
runs the real thing."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ml.drift.retraining import DriftSignal, plan_drift_runs, signals_from_events
from ml.events.routes import load_routes
from tests.support.asset_events import Events

ROUTES = Path(__file__).resolve().parents[3] / "dags" / "event_routes.yaml"


def signal(dataset: str, window_start: str = "2026-12-03T10:00:00Z", event_id: str = "e1") -> DriftSignal:
    return DriftSignal(event_id, f"{dataset}-model", "3", dataset, window_start, "2026-12-03T10:01:00Z", ("x",))


def test_the_drift_asset_schedules_the_dag_which_starts_mlops_training(dagbag: Any) -> None:
    from ml.topics import DRIFT
    from mlops_airflow.assets import DRIFT_TOPIC, MODEL_DRIFT

    dag = dagbag.dags["drift_retraining"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert "model_drift" in repr(dag.timetable)
    [watcher] = MODEL_DRIFT.watchers
    assert watcher.trigger.topics == [DRIFT.name] == [DRIFT_TOPIC]
    assert watcher.trigger.kafka_config_id == "kafka_drift_events"
    assert {task_id: sorted(task.downstream_task_ids) for task_id, task in dag.task_dict.items()} == {
        "find_drift": ["plan_retraining", "record_handled"],
        "plan_retraining": ["start_retraining"],
        "start_retraining": ["record_handled"],
        "record_handled": [],
    }
    start = dag.task_dict["start_retraining"]
    assert start.partial_kwargs["trigger_dag_id"] == "mlops_training"
    assert start.partial_kwargs["skip_when_already_exists"] is True
    assert "model_drift" not in repr(dagbag.dags["mlops_training"].timetable)


def test_a_retraining_run_has_params_mlops_training_accepts(dagbag: Any) -> None:
    params = dagbag.dags["mlops_training"].params
    [run], _ = plan_drift_runs([signal("penguins")], load_routes(ROUTES))
    merged = copy.deepcopy(params)
    assert set(run.conf) <= set(merged), "every key of the conf is a param of the DAG"
    merged.update(run.conf)
    merged.validate()
    assert merged["dataset"] == "penguins" and merged["event"]["source"] == "drift"


def test_the_plan_reads_the_asset_events_the_watcher_stored() -> None:
    stored = SimpleNamespace(id=7, extra={"from_trigger": True, "payload": signal("penguins").as_dict()})
    by_hand = SimpleNamespace(id=8, extra={"note": "posted through the REST API"})
    assert signals_from_events([stored, by_hand]) == [signal("penguins")]


@pytest.fixture
def airflow(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The glue with its doubles: `.events` (the asset's events), `.variables`, `.context()`."""
    import airflow.sdk

    from mlops_airflow.assets import MODEL_DRIFT

    state = SimpleNamespace(events=[], variables={})

    class Variable:
        @staticmethod
        def get(key: str, default: Any = None, deserialize_json: bool = False) -> Any:
            return state.variables.get(key, default)

        @staticmethod
        def set(key: str, value: Any, serialize_json: bool = False, description: str | None = None) -> None:
            state.variables[key] = value

    monkeypatch.setattr(airflow.sdk, "Variable", Variable)
    state.context = lambda: {"inlet_events": {MODEL_DRIFT: Events(list(state.events))}}
    state.asset = MODEL_DRIFT
    return state


def _stored(state: Any, drifted: DriftSignal) -> None:
    at = datetime(2026, 12, 3, 10, 5, len(state.events), tzinfo=UTC)
    state.events.append(SimpleNamespace(id=len(state.events) + 1, timestamp=at, extra={"payload": drifted.as_dict()}))


def test_every_stored_event_is_planned_once_whatever_run_it_triggered(airflow: Any) -> None:
    """Events are read at task time from the asset, not from the run's triggering events (which can miss an event
    stored while the scheduler creates the run); once recorded, a batch is not planned again."""
    from mlops_airflow.drift import pending_batch, plan, record_handled

    assert pending_batch(airflow.context(), airflow.asset) == {"through_event_id": None}
    assert plan(airflow.context(), airflow.asset, None, ROUTES) == []
    _stored(airflow, signal("standin", event_id="e1"))  # a dataset no route names
    _stored(airflow, signal("cars", event_id="e2"))  # alert only
    _stored(airflow, signal("penguins", event_id="e3"))
    batch = pending_batch(airflow.context(), airflow.asset)
    assert batch == {"through_event_id": 3}
    _stored(airflow, signal("penguins", "2026-12-03T11:00:00Z", event_id="e4"))  # stored after the batch was taken
    [run] = plan(airflow.context(), airflow.asset, 3, ROUTES)
    assert run["trigger_run_id"] == "drift__penguins__20261203T10"
    assert run["conf"]["event"]["drift_event_ids"] == ["e3"]
    assert record_handled(airflow.context(), airflow.asset, 3) == {"last_event_id": 3}
    assert record_handled(airflow.context(), airflow.asset, 3) == {"last_event_id": 3}, "a retry changes nothing"
    # the next batch holds the event stored meanwhile, and only it
    assert pending_batch(airflow.context(), airflow.asset) == {"through_event_id": 4}
    [later] = plan(airflow.context(), airflow.asset, 4, ROUTES)
    assert later["trigger_run_id"] == "drift__penguins__20261203T11"
