"""An asset's events as Airflow's Task SDK hands them to a task (`inlet_events[asset]`), for the glue's unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any


class Events:
    """inlet_events[asset] as the Task SDK gives it: iterable, `.after(iso)` keeps events at or after that time."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def after(self, when: str) -> Events:
        return Events([event for event in self.events if event.timestamp >= datetime.fromisoformat(when)])

    def __iter__(self) -> Iterator[Any]:
        return iter(self.events)
