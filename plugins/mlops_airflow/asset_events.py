"""Reading an asset's events in batches, for a DAG that acts on each event once: its state (the last event handled,
in an Airflow variable) and the events after it. The DAG run's own triggering events are not enough: an event stored
while the scheduler creates a run can be left out of that run's triggering events and start no run of its own (seen
with five drift events stored within 0.3 s: one run, one event); read at task time, every stored event is found."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ml.events.uploads import DispatchState

# Read the asset's events from a little before the last handled one: ids, not timestamps, decide what is new, and two
# events stored at once may carry timestamps out of id order.
READ_MARGIN = timedelta(minutes=1)


def load_state(variable: str) -> DispatchState:
    from airflow.sdk import Variable

    return DispatchState.from_json(Variable.get(variable, default=None, deserialize_json=True))


def save_state(variable: str, state: DispatchState, description: str) -> None:
    from airflow.sdk import Variable

    Variable.set(variable, state.to_json(), serialize_json=True, description=description)


def unhandled_events(
    context: Mapping[str, Any], asset: Any, state: DispatchState, through_event_id: int | None = None
) -> list[Any]:
    """The asset's events after the state's last handled one (and up to `through_event_id`), from inlet_events."""
    events = context["inlet_events"][asset]
    if state.last_received:
        events = events.after((datetime.fromisoformat(state.last_received) - READ_MARGIN).isoformat())
    return [
        event
        for event in events
        if event.id > state.last_event_id and (through_event_id is None or event.id <= through_event_id)
    ]
