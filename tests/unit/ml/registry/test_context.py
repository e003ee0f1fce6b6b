"""ml.registry.context.RegistryContext: how events leave (an injected recorder or Kafka), pipeline-event keys, and the
alias lock it builds from the lake settings and its clock."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ml.registry.context import RegistryContext
from ml.settings import KafkaSettings, LakeSettings, MlflowSettings, S3Settings
from ml.topics import MODEL_PROMOTED, PIPELINE_EVENTS
from tests.unit.ml.registry.fakes import FakeS3, SteppedClock

UNREACHABLE = KafkaSettings("127.0.0.1:1")  # nothing listens on port 1: a send that reached Kafka would fail


def context(published: list[tuple[Any, ...]] | None = None, **kwargs: Any) -> RegistryContext:
    def record(topic: Any, payload: dict[str, Any], key: str, dag_run_id: str | None) -> None:
        assert published is not None
        published.append((topic, payload, key, dag_run_id))

    if published is not None:
        kwargs["publish"] = record
    return RegistryContext(
        mlflow=MlflowSettings("http://127.0.0.1:1"),
        s3=S3Settings(endpoint_url="http://127.0.0.1:1"),
        lake=LakeSettings(lake_bucket="my-lake"),
        kafka=UNREACHABLE,
        **kwargs,
    )


def test_send_goes_to_the_injected_publisher() -> None:
    published: list[tuple[Any, ...]] = []
    context(published).send(MODEL_PROMOTED, {"version": "1"}, "m", "run-1")
    assert published == [(MODEL_PROMOTED, {"version": "1"}, "m", "run-1")]


def test_pipeline_events_are_keyed_by_dag_run_task_and_event() -> None:
    published: list[tuple[Any, ...]] = []
    context(published).send_pipeline_event("dag", "run-1", "register", "model_registered", {"version": "3"})
    context(published).send_pipeline_event("dag", None, None, "model_rejected", {})
    [(topic, payload, key, run), (_, _, second_key, second_run)] = published
    assert (topic, key, run) == (PIPELINE_EVENTS, "dag:run-1:register:model_registered", "run-1")
    assert payload == {"dag_id": "dag", "task_id": "register", "event": "model_registered", "details": {"version": "3"}}
    assert (second_key, second_run) == ("dag:-:-:model_rejected", None)


def test_a_failed_optional_event_is_logged_a_required_one_raises(caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any) -> None:
        raise ConnectionError("broker away")

    registry = context(publish=broken)
    with caplog.at_level(logging.WARNING, logger="ml.registry.context"):
        registry.send_pipeline_event("dag", "r", None, "model_registered", {}, required=False)
    assert "could not publish the model_registered pipeline event: broker away" in caplog.text
    with pytest.raises(ConnectionError, match="broker away"):
        registry.send_pipeline_event("dag", "r", None, "model_rejected", {})


def test_without_a_recorder_send_publishes_to_the_configured_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[Any, ...]] = []

    def publish_event(kafka: KafkaSettings, topic: Any, payload: Any, key: str, dag_run_id: str | None) -> None:
        sent.append((kafka, topic, payload, key, dag_run_id))

    monkeypatch.setattr("ml.events.publisher.publish_event", publish_event)
    context().send(MODEL_PROMOTED, {"v": 1}, "m", None)
    assert sent == [(UNREACHABLE, MODEL_PROMOTED, {"v": 1}, "m", None)]


def test_the_lock_lives_in_the_lake_and_uses_the_contexts_clock_and_limits() -> None:
    clock, s3 = SteppedClock(), FakeS3()
    registry = context(clock=clock, lock_ttl_s=7.0, lock_wait_s=3.0)
    registry.__dict__["s3_client"] = s3  # the cached client, as a test injects it
    alias_lock = registry.lock("iris-classification")
    assert str(alias_lock.uri) == "s3://my-lake/locks/registry/iris-classification.lock"
    assert (alias_lock.ttl_s, alias_lock.wait_s, alias_lock.clock, alias_lock.client) == (7.0, 3.0, clock, s3)
    assert alias_lock.keep_renewed and alias_lock.renew_every_s == 7.0 / 3  # renewed while held, by default
    with alias_lock:
        assert ("my-lake", "locks/registry/iris-classification.lock") in s3.objects
    assert alias_lock.renewer is not None
    clock.step(then_asleep=False)  # the renewal thread wakes up after the release and ends
    alias_lock.renewer.join(timeout=30)
    assert not alias_lock.renewer.is_alive() and s3.objects == {}


def test_a_context_can_turn_the_lock_renewal_off() -> None:
    assert not context(lock_keep_renewed=False).lock("m").keep_renewed


def test_clients_are_built_from_the_settings_once() -> None:
    registry = context()
    assert registry.client is registry.client
    assert registry.client.tracking_uri == "http://127.0.0.1:1"
    assert registry.s3_client is registry.s3_client
    assert registry.s3_client.meta.endpoint_url == "http://127.0.0.1:1"
