"""The glue's unit tests define Airflow connections per test (tests.support.airflow_connections) and record what
would be published to Kafka."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.airflow_connections import define_connections


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Define exactly these connections (ids of `connection_documents`, or id=document pairs)."""
    return define_connections(monkeypatch, tmp_path / "hive")


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """ml.events.publisher.publish_event replaced: the envelope is made (and schema-checked) as for Kafka."""
    import ml.events.publisher
    from ml.events.envelope import make_envelope

    sent: list[dict[str, Any]] = []

    def fake_publish(kafka: Any, topic: Any, payload: Any, key: str, dag_run_id: Any = None, **_: Any) -> Any:
        envelope = make_envelope(topic, payload, dag_run_id)
        sent.append({"kafka": kafka, "topic": topic, "key": key, "envelope": envelope})
        return envelope

    monkeypatch.setattr(ml.events.publisher, "publish_event", fake_publish)
    return sent


@pytest.fixture(autouse=True)
def mlflow_checks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """ml.preflight.require_mlflow replaced (the unit tests' MLflow hosts do not exist): the settings it was asked to
    check, in order."""
    import ml.preflight

    checked: list[Any] = []
    monkeypatch.setattr(ml.preflight, "require_mlflow", checked.append)
    return checked
