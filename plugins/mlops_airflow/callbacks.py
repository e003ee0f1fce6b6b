"""DAG and task callbacks that publish lifecycle events to Kafka. A broker that is down never fails a task: the
event is logged as undelivered instead."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _publish(context: Any, event: str, details: dict[str, Any] | None = None) -> None:
    from ml.events.envelope import pipeline_event_key
    from ml.events.publisher import EventPublishError
    from ml.topics import PIPELINE_EVENTS
    from mlops_airflow.hooks import KafkaEventsHook

    ti = context.get("ti") or context.get("task_instance")
    dag_id = context["dag"].dag_id if context.get("dag") else getattr(ti, "dag_id", "unknown")
    task_id = getattr(ti, "task_id", None) if event.startswith("task_") else None
    run_id = context.get("run_id")
    details = dict(details or {})
    if ti is not None and event.startswith("task_"):
        details["try_number"] = getattr(ti, "try_number", None)
    payload = {"dag_id": dag_id, "task_id": task_id, "event": event, "details": details}
    try:
        KafkaEventsHook().publish(PIPELINE_EVENTS, payload, pipeline_event_key(dag_id, run_id, task_id, event), run_id)
    except (EventPublishError, ValueError, OSError) as error:
        log.error("pipeline event %s for %s/%s was NOT delivered: %s", event, dag_id, task_id, error)


def task_started(context: Any) -> None:
    _publish(context, "task_started")


def task_succeeded(context: Any) -> None:
    _publish(context, "task_succeeded")


def task_failed(context: Any) -> None:
    error = context.get("exception")
    _publish(context, "task_failed", {"error": f"{type(error).__name__}: {error}"[:2000] if error else None})


def run_succeeded(context: Any) -> None:
    _publish(context, "run_succeeded")


def run_failed(context: Any) -> None:
    _publish(context, "run_failed", {"reason": str(context.get("reason") or "")[:2000]})
