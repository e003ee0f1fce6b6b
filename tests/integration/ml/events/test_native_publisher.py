"""ml.events.native_publisher against the real broker (SCRAM login): a round trip of schema-valid envelopes, and
messages published while the broker is unreachable delivered once it is back (a TCP relay in front of the shared broker
plays the part; the shared one is never stopped). Assertions are on what was delivered and counted, never on
durations. The service's own use of it, as the `serving` user: tests/integration/ml/serve/test_serving_metrics.py."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

from ml.events.envelope import serving_metrics_key, validate_envelope
from ml.events.native_publisher import NativeEventPublisher
from ml.events.publisher import PublishStats
from ml.topics import SERVING_METRICS
from tests.integration.ml.events.support import Relay, read_all
from tests.support.probes import wait_until


def serving_payload(model: str, n: int) -> dict[str, Any]:
    return {
        "request_id": uuid.uuid4().hex,
        "model_name": model,
        "model_version": "1",
        "task": "classification",
        "status": 200,
        "latency_ms": 1.5 + n,
        "rows": 1,
        "prediction_summary": {"count": 1, "class_counts": {"Adelie": 1}},
        "rows_logged": 0,
        "inputs": None,
    }


def test_round_trip_delivers_schema_valid_envelopes(kafka_topic: str, settings: Any) -> None:
    topic = replace(SERVING_METRICS, name=kafka_topic)
    model = f"it-{uuid.uuid4().hex[:6]}"
    payloads = [serving_payload(model, n) for n in range(10)]
    with NativeEventPublisher(settings.kafka) as publisher:
        for payload in payloads:
            publisher.publish(topic, payload, serving_metrics_key(model, payload["request_id"]))
    assert publisher.stats() == PublishStats(sent=10, delivered=10, failed=0, dropped=0, pending=0)
    records = read_all(settings.kafka, kafka_topic, 10)
    assert [json.loads(r.value)["payload"] for r in records] == payloads
    assert [r.key.decode() for r in records] == [serving_metrics_key(model, p["request_id"]) for p in payloads]
    for record in records:
        validate_envelope(json.loads(record.value), SERVING_METRICS)


def test_what_waited_while_the_broker_was_away_is_delivered_once_it_is_back(
    kafka_topic: str, relay: Relay, settings: Any
) -> None:
    # Bootstrap goes through the relay (down at first); the broker's metadata then points clients at the broker itself.
    topic = replace(SERVING_METRICS, name=kafka_topic)
    publisher = NativeEventPublisher(replace(settings.kafka, bootstrap_servers=f"127.0.0.1:{relay.port}"))
    payloads = [serving_payload("back", n) for n in range(5)]
    for payload in payloads:
        publisher.publish(topic, payload, serving_metrics_key("back", payload["request_id"]))
    assert publisher.stats() == PublishStats(sent=5, delivered=0, failed=0, dropped=0, pending=5)
    relay.start()
    wait_until(lambda: publisher.stats().delivered == 5, "delivery once the broker is reachable")
    assert publisher.close(timeout_s=10) == PublishStats(sent=5, delivered=5, failed=0, dropped=0, pending=0)
    assert [json.loads(r.value)["payload"] for r in read_all(settings.kafka, kafka_topic, 5)] == payloads
