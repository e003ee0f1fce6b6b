"""ml.events.publisher: EventPublisher's librdkafka settings from KafkaSettings, what is handed to the client (a
compact schema-valid envelope, its key, acks=all and idempotence), the counts of every outcome (delivered, failed,
expired and refused: dropped), with librdkafka itself and nothing listening; publish_event sends one event and fails
loudly. Against the broker: tests/integration/ml/events/test_publisher.py."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from confluent_kafka import KafkaError

from ml.events import publisher as publisher_module
from ml.events.envelope import EventValidationError, validate_envelope
from ml.events.publisher import (
    DEFAULT_LINGER_MS,
    EventPublisher,
    EventPublishError,
    PublishStats,
    librdkafka_options,
    publish_event,
)
from ml.settings import KafkaSettings
from ml.topics import PIPELINE_EVENTS, SERVING_METRICS, TRAINING_METRICS
from tests.support.fake_clock import FakeClock
from tests.support.probes import free_port
from tests.unit.ml.events.samples import METRICS, PIPELINE, SERVING

PAYLOAD = {**SERVING, "rows_logged": 0, "inputs": None}
KAFKA = KafkaSettings("fake:9092")


def test_librdkafka_options_carry_the_login() -> None:
    assert librdkafka_options(KafkaSettings("a:1,b:2")) == {
        "bootstrap.servers": "a:1,b:2",
        "security.protocol": "plaintext",
    }
    scram = KafkaSettings("a:1", username="serving", password="pw")
    assert librdkafka_options(scram) == {
        "bootstrap.servers": "a:1",
        "security.protocol": "sasl_plaintext",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "serving",
        "sasl.password": "pw",
    }
    with pytest.raises(ValueError, match="carry no password"):
        librdkafka_options(KafkaSettings("a:1", username="serving"))


class RecordingProducer:
    """The calls the publisher makes to confluent_kafka.Producer, recorded; `full`: produce() refuses, as when full."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.produced: list[tuple[str, bytes, bytes, Any]] = []
        self.full = False
        self.flushed: list[float] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        if self.full:
            raise BufferError("Local: Queue full")
        self.produced.append((topic, value, key, on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushed.append(timeout)
        return 0


class Delivered:
    """The message object of a delivery report."""

    def __init__(self, topic: str, key: bytes) -> None:
        self._topic, self._key = topic, key

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> list[RecordingProducer]:
    import confluent_kafka

    made: list[RecordingProducer] = []

    def producer(config: dict[str, Any]) -> RecordingProducer:
        made.append(RecordingProducer(config))
        return made[-1]

    monkeypatch.setattr(confluent_kafka, "Producer", producer)
    return made


def test_each_publish_hands_a_compact_valid_envelope_and_its_key_to_the_client(
    recording: list[RecordingProducer],
) -> None:
    publisher = EventPublisher(KafkaSettings("k:9092", username="serving", password="pw"), buffer_size=7)
    [client] = recording
    assert client.config["acks"] == "all" and client.config["enable.idempotence"] is True
    assert client.config["queue.buffering.max.messages"] == 7 and client.config["sasl.username"] == "serving"
    publisher.publish(SERVING_METRICS, PAYLOAD, key="m:1")
    [(topic, value, key, _)] = client.produced
    envelope = json.loads(value)
    validate_envelope(envelope, SERVING_METRICS)
    assert (topic, key, envelope["payload"]) == (SERVING_METRICS.name, b"m:1", PAYLOAD)
    assert b" " not in value.replace(b"penguins-classification", b"")  # compact separators
    assert publisher.close(timeout_s=1.5) == PublishStats(sent=1, delivered=0, failed=0, dropped=0, pending=1)
    assert client.flushed == [1.5]
    with pytest.raises(RuntimeError, match="after close"):
        publisher.publish(SERVING_METRICS, PAYLOAD, key="m:2")


def test_the_serving_publisher_batches_longer_than_the_default(recording: list[RecordingProducer]) -> None:
    """The service's messages may wait up to 100 ms for a batch: fewer produce requests for the broker (B10)."""
    from ml.serve.app import SERVING_LINGER_MS, _event_publisher

    EventPublisher(KafkaSettings("k:9092")).close(timeout_s=0)
    _event_publisher(KafkaSettings("k:9092"), 5)().close(timeout_s=0)
    assert [client.config["linger.ms"] for client in recording] == [DEFAULT_LINGER_MS, SERVING_LINGER_MS]
    assert recording[1].config["client.id"] == "mlops-serve" and SERVING_LINGER_MS > DEFAULT_LINGER_MS


def test_every_outcome_is_counted_once(recording: list[RecordingProducer], caplog: pytest.LogCaptureFixture) -> None:
    publisher = EventPublisher(KafkaSettings("k:9092"), buffer_size=3)
    [client] = recording
    for n in range(4):
        publisher.publish(SERVING_METRICS, PAYLOAD, key=f"m:{n}")
    client.full = True
    publisher.publish(SERVING_METRICS, PAYLOAD, key="m:refused")
    reports = [produced[3] for produced in client.produced]
    message = Delivered(SERVING_METRICS.name, b"m:x")
    with caplog.at_level(logging.WARNING, logger=publisher_module.__name__):
        reports[0](None, message)
        reports[1](KafkaError(KafkaError._MSG_TIMED_OUT), message)
        reports[2](KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), message)
    # refused (never sent) and expired (sent) are the two kinds of dropped; the fourth one still waits.
    assert publisher.stats() == PublishStats(sent=4, delivered=1, failed=1, dropped=2, pending=1)
    logged = caplog.text
    assert "the queue is full (3): dropped 1 message(s) up to key=m:refused" in logged
    assert "undelivered after 60000 ms: dropped 1 message(s) up to key=m:x" in logged
    assert "event key=m:x to mlops.serving.metrics.v1 failed" in logged
    publisher.close(timeout_s=0)


def test_with_nothing_listening_messages_wait_and_the_full_queue_refuses_new_ones() -> None:
    publisher = EventPublisher(KafkaSettings(f"127.0.0.1:{free_port()}"), buffer_size=2)
    for n in range(5):
        publisher.publish(SERVING_METRICS, PAYLOAD, key=f"m:{n}")  # never blocks, never raises
    assert publisher.stats() == PublishStats(sent=2, delivered=0, failed=0, dropped=3, pending=2)
    assert publisher.close(timeout_s=0) == PublishStats(sent=2, delivered=0, failed=0, dropped=3, pending=2)


def test_client_errors_are_logged_once_per_kind_until_a_message_gets_through(
    recording: list[RecordingProducer], caplog: pytest.LogCaptureFixture
) -> None:
    publisher = EventPublisher(KafkaSettings("k:9092"))
    refused, all_down = KafkaError(KafkaError._TRANSPORT), KafkaError(KafkaError._ALL_BROKERS_DOWN)
    with caplog.at_level(logging.WARNING, logger=publisher_module.__name__):
        for error in (refused, all_down) * 5:  # a broker that stays down, reconnect after reconnect
            publisher._on_client_error(error)
        assert len(caplog.records) == 2
        publisher._on_delivery(None, Delivered(SERVING_METRICS.name, b"m:1"))  # back: the next outage is logged again
        publisher._on_client_error(refused)
    assert len(caplog.records) == 3 and "k:9092" in caplog.records[-1].getMessage()
    publisher.close(timeout_s=0)


class Unhurried(EventPublisher):
    """Its thread never comes round during a test: what waits is built when the test says (or at close)."""

    poll_interval_s = 3600.0


def test_publish_later_builds_the_message_on_the_publishers_thread_stamped_when_it_was_queued(
    recording: list[RecordingProducer],
) -> None:
    clock = FakeClock(wall=1_767_225_600.5)
    publisher = Unhurried(KafkaSettings("k:9092"), clock=clock)
    [client] = recording
    built: list[str] = []

    def build() -> dict[str, Any]:
        built.append("payload")
        return PAYLOAD

    publisher.publish_later(SERVING_METRICS, build, key="m:1")
    clock.advance(5)
    assert built == [] and client.produced == [], "the caller pays for a tuple, not for the message"
    assert publisher.stats() == PublishStats(sent=1, delivered=0, failed=0, dropped=0, pending=1)
    publisher._build_waiting()
    [(topic, value, key, _)] = client.produced
    envelope = json.loads(value)
    validate_envelope(envelope, SERVING_METRICS)
    assert (topic, key, envelope["payload"], built) == (SERVING_METRICS.name, b"m:1", PAYLOAD, ["payload"])
    assert envelope["event_time"] == "2026-01-01T00:00:00.500Z", "the time it was queued, not built"
    publisher.close(timeout_s=0)


def test_what_waits_to_be_built_is_bounded_and_built_at_close(recording: list[RecordingProducer]) -> None:
    publisher = Unhurried(KafkaSettings("k:9092"), buffer_size=2)
    [client] = recording
    for n in range(3):
        publisher.publish_later(SERVING_METRICS, lambda: PAYLOAD, key=f"m:{n}")
    assert publisher.stats() == PublishStats(sent=2, delivered=0, failed=0, dropped=1, pending=2)
    assert publisher.close(timeout_s=0) == PublishStats(sent=2, delivered=0, failed=0, dropped=1, pending=2)
    assert [key for _, _, key, _ in client.produced] == [b"m:0", b"m:1"], "built and handed over before the flush"
    with pytest.raises(RuntimeError, match="after close"):
        publisher.publish_later(SERVING_METRICS, lambda: PAYLOAD, key="m:3")


def test_a_message_that_cannot_be_built_is_failed_and_the_others_still_go(
    recording: list[RecordingProducer], caplog: pytest.LogCaptureFixture
) -> None:
    publisher = Unhurried(KafkaSettings("k:9092"))
    [client] = recording

    def broken() -> dict[str, Any]:
        raise KeyError("outputs")

    publisher.publish_later(SERVING_METRICS, broken, key="m:broken")
    publisher.publish_later(SERVING_METRICS, lambda: {**PAYLOAD, "status": "ok"}, key="m:invalid")  # the schema's
    publisher.publish_later(SERVING_METRICS, lambda: PAYLOAD, key="m:good")
    with caplog.at_level(logging.ERROR, logger=publisher_module.__name__):
        publisher._build_waiting()
    assert [key for _, _, key, _ in client.produced] == [b"m:good"]
    assert publisher.stats() == PublishStats(sent=3, delivered=0, failed=2, dropped=0, pending=1)
    assert "event key=m:broken to mlops.serving.metrics.v1 could not be built (1 so far)" in caplog.text
    publisher.close(timeout_s=0)


def test_what_the_full_queue_would_refuse_is_dropped_unbuilt(recording: list[RecordingProducer]) -> None:
    publisher = Unhurried(KafkaSettings("k:9092"), buffer_size=2)
    [client] = recording
    built: list[str] = []

    def build() -> dict[str, Any]:
        built.append("payload")
        return PAYLOAD

    for n in range(2):  # the broker is down: librdkafka holds as many as it may
        publisher.publish(SERVING_METRICS, PAYLOAD, key=f"m:{n}")
    publisher.publish_later(SERVING_METRICS, build, key="m:2")
    publisher._build_waiting()
    assert built == [] and len(client.produced) == 2
    assert publisher.stats() == PublishStats(sent=2, delivered=0, failed=0, dropped=1, pending=2)
    client.produced[0][3](None, Delivered(SERVING_METRICS.name, b"m:0"))  # back: one delivered, room for one
    publisher.publish_later(SERVING_METRICS, build, key="m:3")
    publisher._build_waiting()
    assert built == ["payload"] and client.produced[-1][2] == b"m:3"
    assert publisher.stats() == PublishStats(sent=3, delivered=1, failed=0, dropped=1, pending=2)
    publisher.close(timeout_s=0)


def test_the_training_publisher_keeps_each_message_until_it_is_delivered(recording: list[RecordingProducer]) -> None:
    """A search's metrics wait out a broker outage of any length (librdkafka's message.timeout.ms 0: no limit)."""
    from ml.tune.callbacks import default_publisher_factory

    default_publisher_factory(KafkaSettings("k:9092"), "manual__r").close(timeout_s=0)
    EventPublisher(KafkaSettings("k:9092")).close(timeout_s=0)
    assert [client.config["message.timeout.ms"] for client in recording] == [0, EventPublisher.delivery_timeout_ms]
    assert recording[0].config["client.id"] == "mlops-training" and EventPublisher.delivery_timeout_ms > 0
    with pytest.raises(ValueError, match="delivery_timeout_ms must be 0"):
        EventPublisher(KafkaSettings("k:9092"), delivery_timeout_ms=-1)


def test_an_invalid_payload_fails_at_the_call_site_and_is_not_handed_over(recording: list[RecordingProducer]) -> None:
    publisher = EventPublisher(KAFKA)
    [client] = recording
    with pytest.raises(EventValidationError):
        publisher.publish(TRAINING_METRICS, {**METRICS, "epoch": "one"}, key="r:t:1")
    publisher.publish(TRAINING_METRICS, METRICS, key="r:t:1")
    assert [key for _, _, key, _ in client.produced] == [b"r:t:1"]
    assert publisher.close(timeout_s=0) == PublishStats(sent=1, delivered=0, failed=0, dropped=0, pending=1)


def test_buffer_size_must_be_positive(recording: list[RecordingProducer]) -> None:
    with pytest.raises(ValueError, match="buffer_size must be at least 1"):
        EventPublisher(KAFKA, buffer_size=0)
    assert recording == []


# --- publish_event ---------------------------------------------------------------------------------------------------


class SyncProducer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []
        self.closed: list[float | None] = []

    def send(self, topic: str, key: bytes, value: dict[str, Any]) -> Any:
        self.sent.append((topic, key, value))
        producer = self

        class Result:
            def get(self, timeout: float) -> None:
                if producer.error is not None:
                    raise producer.error

        return Result()

    def close(self, timeout: float | None = None) -> None:
        self.closed.append(timeout)


def test_publish_event_sends_one_validated_event_and_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    producer, options = SyncProducer(), []
    monkeypatch.setattr("ml.events.sync.kafka_producer", lambda kafka, **kw: options.append((kafka, kw)) or producer)
    envelope = publish_event(KAFKA, PIPELINE_EVENTS, PIPELINE, "dag:r:-:run_succeeded", dag_run_id="r", timeout_s=3)
    assert producer.sent == [(PIPELINE_EVENTS.name, b"dag:r:-:run_succeeded", envelope)]
    assert envelope["dag_run_id"] == "r" and producer.closed == [3]
    [(kafka, kw)] = options
    assert kafka == KAFKA and kw["acks"] == "all" and kw["bootstrap_timeout_ms"] == 3000
    # the producer's own retries never write an event twice (and a setting that would disable that raises instead)
    assert kw["enable_idempotence"] is True
    validate_envelope(envelope, PIPELINE_EVENTS)


def test_publish_event_errors_name_the_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    def unreachable(kafka: KafkaSettings, **kw: Any) -> Any:
        raise KafkaConnectionError("no broker answered")

    monkeypatch.setattr("ml.events.sync.kafka_producer", unreachable)
    with pytest.raises(EventPublishError, match=r"Kafka is unreachable at fake:9092 \(no answer within 2 s\)"):
        publish_event(KAFKA, PIPELINE_EVENTS, PIPELINE, "k", timeout_s=2)

    refusing = SyncProducer(KafkaTimeoutError("no ack"))
    monkeypatch.setattr("ml.events.sync.kafka_producer", lambda kafka, **kw: refusing)
    with pytest.raises(EventPublishError, match=r"Kafka at fake:9092 did not take the pipeline_event\.v1 event on"):
        publish_event(KAFKA, PIPELINE_EVENTS, PIPELINE, "k")
    assert refusing.closed  # closed on the error path too


def test_a_sync_publisher_sends_each_event_over_one_producer_and_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.events.envelope import make_envelope
    from ml.events.publisher import sync_publisher

    producer, options = SyncProducer(), []
    monkeypatch.setattr("ml.events.sync.kafka_producer", lambda kafka, **kw: options.append(kw) or producer)
    envelopes = [
        make_envelope(PIPELINE_EVENTS, PIPELINE, event_id=f"00000000-0000-4000-8000-00000000000{n}") for n in (1, 2)
    ]
    with sync_publisher(KAFKA, timeout_s=4, client_id="monitor") as publisher:
        for n, envelope in enumerate(envelopes):
            publisher.send(PIPELINE_EVENTS, envelope, f"k{n}")
        assert not producer.closed
    assert [(key, value["event_id"]) for _, key, value in producer.sent] == [
        (b"k0", envelopes[0]["event_id"]),
        (b"k1", envelopes[1]["event_id"]),
    ]
    assert [kw["client_id"] for kw in options] == ["monitor"] and producer.closed == [4]


def test_publish_event_refuses_an_invalid_payload_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    connected: list[Any] = []
    monkeypatch.setattr("ml.events.sync.kafka_producer", lambda kafka, **kw: connected.append(kw))
    with pytest.raises(EventValidationError):
        publish_event(KAFKA, PIPELINE_EVENTS, {"dag_id": "d"}, "k")
    assert connected == []


def test_a_drop_log_reports_the_first_drops_then_one_line_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(publisher_module.time, "monotonic", lambda: now[0])
    drops = publisher_module.DropLog(each=2, interval_s=5.0)
    reported = [drops.count() for _ in range(4)]  # two one by one, then nothing until the interval has passed
    now[0] += 5.0
    reported.append(drops.count())  # the three since the last line
    assert reported == [1, 1, 0, 0, 3] and drops.dropped == 5
