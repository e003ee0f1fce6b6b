"""plugins/mlops_airflow/callbacks.py: the pipeline event each callback publishes (schema-valid, keyed per run, task
and event), and that a broker that is down never fails a task: the event is logged as undelivered instead."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from ml.settings import KafkaSettings
from tests.support.airflow_connections import KAFKA_SERVERS

Define = Callable[..., None]
RUN_ID = "scheduled__2026-01-01T03:00:00+00:00"


def _task_context(**extra: Any) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="mlops_training", task_id="tune_models", try_number=2)
    return {"dag": SimpleNamespace(dag_id="mlops_training"), "ti": ti, "run_id": RUN_ID, **extra}


def _run_context(**extra: Any) -> dict[str, Any]:
    # A DAG-level callback's context: the DAG run's, with the last task instance that ran.
    return _task_context(**extra)


@pytest.mark.parametrize(
    ("callback", "context", "task_id", "details"),
    [
        ("task_started", _task_context(), "tune_models", {"try_number": 2}),
        ("task_succeeded", _task_context(), "tune_models", {"try_number": 2}),
        (
            "task_failed",
            _task_context(exception=RuntimeError("trials all failed")),
            "tune_models",
            {"try_number": 2, "error": "RuntimeError: trials all failed"},
        ),
        ("run_succeeded", _run_context(), None, {}),
        ("run_failed", _run_context(reason="task_failure"), None, {"reason": "task_failure"}),
    ],
)
def test_each_callback_publishes_its_pipeline_event(
    connections: Define,
    published: list[dict[str, Any]],
    callback: str,
    context: dict[str, Any],
    task_id: str | None,
    details: dict[str, Any],
) -> None:
    from ml.events.envelope import pipeline_event_key
    from ml.topics import PIPELINE_EVENTS
    from mlops_airflow import callbacks

    connections("kafka_default")
    event = callback  # each callback publishes the event of its own name
    getattr(callbacks, callback)(context)
    [message] = published
    assert (message["kafka"], message["topic"]) == (KafkaSettings(KAFKA_SERVERS), PIPELINE_EVENTS)
    assert message["key"] == pipeline_event_key("mlops_training", RUN_ID, task_id, event)
    assert message["envelope"]["dag_run_id"] == RUN_ID
    assert message["envelope"]["payload"] == {
        "dag_id": "mlops_training",
        "task_id": task_id,
        "event": event,
        "details": details,
    }


def test_a_failure_message_is_cut_to_a_size_kafka_takes(connections: Define, published: list[dict[str, Any]]) -> None:
    from mlops_airflow import callbacks

    connections("kafka_default")
    callbacks.task_failed(_task_context(exception=ValueError("x" * 10_000)))
    callbacks.run_failed(_run_context(reason="y" * 10_000))
    error, reason = (m["envelope"]["payload"]["details"] for m in published)
    assert (len(error["error"]), len(reason["reason"])) == (2000, 2000)


def test_a_task_instance_without_a_dag_in_the_context_still_names_its_dag(
    connections: Define, published: list[dict[str, Any]]
) -> None:
    from mlops_airflow import callbacks

    connections("kafka_default")
    context = _task_context()
    del context["dag"]
    callbacks.task_succeeded(context)
    assert published[0]["envelope"]["payload"]["dag_id"] == "mlops_training"


def test_a_broker_that_is_down_never_fails_a_task(
    connections: Define, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """publish_event raises EventPublishError when Kafka does not answer (ml.events.publisher): the callback logs the
    event as NOT delivered and returns, whatever the event."""
    import ml.events.publisher
    from ml.events.publisher import EventPublishError
    from mlops_airflow import callbacks

    def broker_down(*args: Any, **kwargs: Any) -> Any:
        raise EventPublishError(f"Kafka is unreachable at {KAFKA_SERVERS} (no answer within 10 s)")

    connections("kafka_default")
    monkeypatch.setattr(ml.events.publisher, "publish_event", broker_down)
    caplog.set_level(logging.ERROR, logger="mlops_airflow.callbacks")
    for name in ("task_started", "task_succeeded", "task_failed", "run_succeeded", "run_failed"):
        assert getattr(callbacks, name)(_task_context(exception=RuntimeError("boom"))) is None
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 5 and all("was NOT delivered" in e and KAFKA_SERVERS in e for e in errors), errors


def test_a_kafka_connection_without_servers_never_fails_a_task(
    connections: Define, caplog: pytest.LogCaptureFixture
) -> None:
    from mlops_airflow import callbacks

    connections(kafka_default={"conn_type": "kafka"})
    caplog.set_level(logging.ERROR, logger="mlops_airflow.callbacks")
    callbacks.task_started(_task_context())
    assert any("task_started" in r.getMessage() and "NOT delivered" in r.getMessage() for r in caplog.records)
