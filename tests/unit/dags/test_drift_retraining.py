"""dags/drift_retraining.py: the model_drift asset (the drift monitor's drifted windows) schedules the DAG, which plans
one mlops_training run per dataset whose route says retrain, with params mlops_training accepts and the drift as the
run's `event`. tests/e2e/dags/test_drift_retraining.py runs the real thing."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ml.drift.retraining import DriftSignal, plan_drift_runs, signals_from_events
from ml.events.routes import load_routes

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
        "plan_retraining": ["start_retraining"],
        "start_retraining": [],
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
