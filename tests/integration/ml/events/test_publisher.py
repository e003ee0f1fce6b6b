"""ml.events.publisher against the real Kafka broker (SCRAM login): EventPublisher's round trip of schema-valid
envelopes, and messages published while the broker is unreachable delivered once it is back (a TCP relay in front of
the shared broker plays the part; the shared one is never stopped); publish_event and sync publishers. Assertions are
on what was delivered and counted, never on durations. With nothing listening at all: the unit tests
(tests/unit/ml/events/test_publisher.py); the service's own use, as the `serving` user:
tests/integration/ml/serve/test_serving_metrics.py."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import pytest

from ml.events.envelope import training_metrics_key, validate_envelope
from ml.events.publisher import EventPublisher, EventPublishError, PublishStats, publish_event
from ml.settings import KafkaSettings
from ml.topics import PIPELINE_EVENTS, TRAINING_METRICS, Topic
from tests.integration.ml.events.support import Relay, read_all
from tests.support.probes import free_port, wait_until


def metrics_payload(run_name: str, epoch: int) -> dict[str, Any]:
    return {
        "run_name": run_name,
        "trial_id": "t0",
        "epoch": epoch,
        "metrics": {"val_loss": 1.0 / (epoch + 1)},
        "params": {"lr": 0.01},
    }


def test_round_trip_delivers_schema_valid_envelopes_in_order(kafka_topic: str, settings: Any) -> None:
    topic = replace(TRAINING_METRICS, name=kafka_topic)
    run_name = f"it-{uuid.uuid4().hex[:6]}"
    publisher = EventPublisher(settings.kafka, dag_run_id="manual__it")
    for epoch in range(10):
        publisher.publish(topic, metrics_payload(run_name, epoch), key=training_metrics_key(run_name, "t0", epoch))
    stats = publisher.close(timeout_s=30)
    assert stats == PublishStats(sent=10, delivered=10, failed=0, dropped=0, pending=0)

    records = read_all(settings.kafka, kafka_topic, 10)
    assert [r.key.decode() for r in records] == [f"{run_name}:t0:{e}" for e in range(10)]
    for record in records:
        envelope = json.loads(record.value)
        validate_envelope(envelope, TRAINING_METRICS)
        assert envelope["dag_run_id"] == "manual__it" and envelope["payload"]["run_name"] == run_name


def test_a_training_publisher_delivers_what_waited_once_the_broker_is_back(
    kafka_topic: str, relay: Relay, settings: Any
) -> None:
    """The search's publisher (no time limit on a message) through a broker that is unreachable at first: every
    message waits in librdkafka's queue, the client keeps reconnecting, and all of them go out once it is back."""
    from ml.tune.callbacks import default_publisher_factory

    # Bootstrap goes through the relay (down at first); the broker's metadata then points clients at the broker itself.
    topic = replace(TRAINING_METRICS, name=kafka_topic)
    publisher = default_publisher_factory(replace(settings.kafka, bootstrap_servers=f"127.0.0.1:{relay.port}"), None)
    for epoch in range(5):
        publisher.publish(topic, metrics_payload("back", epoch), key=f"back:t0:{epoch}")
    assert publisher.stats() == PublishStats(sent=5, delivered=0, failed=0, dropped=0, pending=5)
    relay.start()
    wait_until(lambda: publisher.stats().delivered == 5, "delivery once the broker is reachable")
    assert publisher.close(timeout_s=10) == PublishStats(sent=5, delivered=5, failed=0, dropped=0, pending=0)
    assert [r.key.decode() for r in read_all(settings.kafka, kafka_topic, 5)] == [f"back:t0:{e}" for e in range(5)]


def test_a_sync_publishers_first_send_does_not_wait_out_the_metadata_backoff(kafka_topic: str, settings: Any) -> None:
    """kafka-python 3.0.12 builds its producer's metadata without the producer's retry_backoff_ms and waits 100 ms
    after the bootstrap before fetching a new topic's metadata; the sync publisher sets that backoff on the pinned
    release's producer (ml.events.sync._prompt_metadata), and its sends go through as before."""
    from ml.events.envelope import make_envelope
    from ml.events.sync import METADATA_RETRY_BACKOFF_MS, sync_publisher

    topic = Topic(kafka_topic, PIPELINE_EVENTS.schema, partitions=1, retention_ms=60000)
    payload = {"dag_id": "mlops_training", "task_id": "t", "event": "task_started", "details": {}}
    with sync_publisher(settings.kafka) as publisher:
        assert publisher._producer._metadata.config["retry_backoff_ms"] == METADATA_RETRY_BACKOFF_MS
        publisher.send(topic, make_envelope(topic, payload, None), "k")
    assert len(read_all(settings.kafka, kafka_topic, 1)) == 1


def test_publish_event_sync_and_its_clear_error(kafka_topic: str, settings: Any) -> None:
    topic = Topic(kafka_topic, PIPELINE_EVENTS.schema, partitions=1, retention_ms=60000)
    payload = {"dag_id": "mlops_training", "task_id": None, "event": "run_succeeded", "details": {"rows": 3}}
    envelope = publish_event(settings.kafka, topic, payload, key="mlops_training:r1:-:run_succeeded", dag_run_id="r1")
    [record] = read_all(settings.kafka, kafka_topic, 1)
    assert json.loads(record.value) == envelope and record.key == b"mlops_training:r1:-:run_succeeded"

    unreachable = KafkaSettings(f"127.0.0.1:{free_port()}")
    with pytest.raises(EventPublishError, match=f"Kafka is unreachable at {unreachable.bootstrap_servers}"):
        publish_event(unreachable, topic, payload, key="k", timeout_s=1)
