"""Airflow glue of the drift_retraining DAG: the model_drift asset's events read in batches (asset_events: every
stored event once, whatever run it triggered), planned by ml.drift.retraining, then recorded as handled."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ml.clock import SYSTEM_CLOCK, Clock
from mlops_airflow import asset_events

STATE_VARIABLE = "mlops_drift_state"


def pending_batch(context: Mapping[str, Any], asset: Any) -> dict[str, Any]:
    """{"through_event_id": the newest unhandled event's id, or None when there is none}."""
    events = asset_events.unhandled_events(context, asset, asset_events.load_state(STATE_VARIABLE))
    return {"through_event_id": max((event.id for event in events), default=None)}


def plan(
    context: Mapping[str, Any], asset: Any, through_event_id: int | None, routes_path: Path
) -> list[dict[str, Any]]:
    """The retraining runs of the batch, as TriggerDagRunOperator kwargs (a dataset that only alerts, or has no
    route, is logged by ml.drift.retraining)."""
    from ml.drift.retraining import plan_drift_runs, signals_from_events
    from ml.events.routes import load_routes

    if through_event_id is None:
        return []
    routes = load_routes(routes_path)  # first: a bad routes file fails the task before anything is decided
    state = asset_events.load_state(STATE_VARIABLE)
    events = asset_events.unhandled_events(context, asset, state, through_event_id)
    runs, not_run = plan_drift_runs(signals_from_events(events), routes)
    print(f"{len(runs)} retraining run(s) to start; not retrained: {not_run or 'nothing'}")
    return [{"trigger_run_id": run.run_id, "conf": run.conf} for run in runs]


def record_handled(
    context: Mapping[str, Any], asset: Any, through_event_id: int | None, clock: Clock = SYSTEM_CLOCK
) -> dict[str, Any]:
    """Mark the batch handled, once its runs were started (a failure before this plans the batch again; the runs'
    ids keep a retry from starting any twice)."""
    state = asset_events.load_state(STATE_VARIABLE)
    if through_event_id is None or through_event_id <= state.last_event_id:
        return {"last_event_id": state.last_event_id}
    events = asset_events.unhandled_events(context, asset, state, through_event_id)
    through = next(event for event in events if event.id == through_event_id)
    now = datetime.fromtimestamp(clock.time(), UTC)
    handled = state.handled([], through_event_id, through.timestamp, now)
    asset_events.save_state(STATE_VARIABLE, handled, "drift_retraining: handled drift events")
    return {"last_event_id": handled.last_event_id}
