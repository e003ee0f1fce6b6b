"""Airflow glue of the raw_data_events DAG: its asset events, its state (an Airflow variable) and S3, around
ml.events.uploads (the logic) and ml.events.routes (which dataset an upload trains)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ml.clock import SYSTEM_CLOCK, Clock
from ml.events.uploads import DispatchState, PlannedRun, Upload, plan_runs, quiet_since, uploads_from_events
from mlops_airflow import asset_events

STATE_VARIABLE = "mlops_raw_uploads_state"


def load_state() -> DispatchState:
    return asset_events.load_state(STATE_VARIABLE)


def save_state(state: DispatchState) -> None:
    asset_events.save_state(STATE_VARIABLE, state, "raw_data_events: handled uploads")


def pending_uploads(
    context: Mapping[str, Any], asset: Any, through_event_id: int | None = None
) -> tuple[DispatchState, list[Any], list[Upload]]:
    """The state, the asset's unhandled events (up to `through_event_id`) and their uploads not acted on yet."""
    state = load_state()
    events = asset_events.unhandled_events(context, asset, state, through_event_id)
    return state, events, state.pending(uploads_from_events(events))


def quiet_batch(
    context: Mapping[str, Any], asset: Any, quiet_seconds: float, clock: Clock = SYSTEM_CLOCK
) -> dict[str, Any] | None:
    """The batch to dispatch once no upload has arrived for `quiet_seconds`: {"through_event_id": N} (also when
    every pending event carries nothing new: they are then only marked handled); None while uploads still arrive."""
    _, events, uploads = pending_uploads(context, asset)
    if not events:
        return {"through_event_id": None}
    now = datetime.fromtimestamp(clock.time(), UTC)
    if uploads and not quiet_since(uploads, now, timedelta(seconds=quiet_seconds)):
        return None
    return {"through_event_id": max(event.id for event in events)}


def plan(
    context: Mapping[str, Any], asset: Any, through_event_id: int | None, routes_path: Path, aws_conn_id: str
) -> tuple[list[PlannedRun], dict[str, str]]:
    """The training runs the batch starts (TriggerDagRunOperator kwargs) and the objects it ignores, with why."""
    from ml.clients import s3_client
    from ml.events.routes import load_routes
    from ml.storage import S3Uri, current_etag
    from mlops_airflow.hooks import s3_settings

    if through_event_id is None:
        return [], {}
    routes = load_routes(routes_path)  # first: a bad routes file fails the task before anything is decided
    _, _, uploads = pending_uploads(context, asset, through_event_id)
    s3 = s3_client(s3_settings(aws_conn_id))
    return plan_runs(uploads, routes, lambda obj: current_etag(S3Uri(obj.bucket, obj.key), s3))


def record_handled(
    context: Mapping[str, Any], asset: Any, through_event_id: int | None, clock: Clock = SYSTEM_CLOCK
) -> dict[str, Any]:
    """Mark the batch handled (after its runs were started: a failure before this retries the batch, and the runs'
    fixed ids keep it from starting any twice)."""
    if through_event_id is None:
        return load_state().to_json()
    state, events, uploads = pending_uploads(context, asset, through_event_id)
    through = next((event for event in events if event.id == through_event_id), None)
    if through is None:  # a retry after the state was saved: handled already
        return {"last_event_id": state.last_event_id, "acted_on": 0}
    now = datetime.fromtimestamp(clock.time(), UTC)
    new_state = state.handled(uploads, through_event_id, through.timestamp, now)
    save_state(new_state)
    return {"last_event_id": new_state.last_event_id, "acted_on": len(uploads)}
