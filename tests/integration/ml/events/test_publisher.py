"""ml.events.publisher against the real Kafka broker: round trips with schema-valid envelopes, an unreachable broker,
and a broker that becomes reachable (a TCP relay in front of the shared broker plays the part; the shared one is never
stopped). Assertions are on what was delivered and counted, never on durations."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from ml.events.envelope import training_metrics_key, validate_envelope
from ml.events.publisher import EventPublisher, EventPublishError, PublishStats, publish_event
from ml.settings import KafkaSettings
from ml.topics import PIPELINE_EVENTS, TRAINING_METRICS, Topic
from tests.integration.ml.events.support import read_all
from tests.support.probes import free_port


def metrics_payload(run_name: str, epoch: int) -> dict[str, Any]:
    return {
        "run_name": run_name,
        "trial_id": "t0",
        "epoch": epoch,
        "metrics": {"val_loss": 1.0 / (epoch + 1)},
        "params": {"lr": 0.01},
    }


def wait_until(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    """A bounded poll for an observable condition."""
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        pause.wait(0.05)
    assert condition(), f"not within {timeout_s:g} s: {what}"


def test_publisher_round_trip_delivers_schema_valid_envelopes(kafka_topic: str, settings: Any) -> None:
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


def test_publisher_with_an_unreachable_broker_buffers_counts_and_never_raises() -> None:
    publisher = EventPublisher(KafkaSettings(f"127.0.0.1:{free_port()}"), buffer_size=5)  # nothing listens there
    for epoch in range(8):
        publisher.publish(TRAINING_METRICS, metrics_payload("down", epoch), key=f"down:t0:{epoch}")
    # Every publish returned with nothing sent: the caller never waits for Kafka.
    assert publisher.stats() == PublishStats(sent=0, delivered=0, failed=0, dropped=3, pending=5)
    stats = publisher.close(timeout_s=1.0)
    assert stats == PublishStats(sent=0, delivered=0, failed=0, dropped=3, pending=5)


class Relay:
    """A TCP relay on a free port to the shared broker, that can be switched on later (the broker 'comes back')."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: Any = None

    def start(self) -> None:
        import socket

        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _accept(self, server: Any) -> None:
        import socket

        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        import socket

        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def relay(kafka_service: None, settings: Any) -> Iterator[Relay]:
    host, port = settings.kafka.servers[0].rsplit(":", 1)
    relay = Relay((host, int(port)))
    yield relay
    relay.stop()


def test_publisher_delivers_what_waited_once_the_broker_is_reachable(
    kafka_topic: str, relay: Relay, settings: Any
) -> None:
    # Bootstrap goes through the relay (down at first); the broker's metadata then points clients at the broker itself.
    attempts: list[str] = []

    class QuickReconnect(EventPublisher):
        bootstrap_timeout_ms = 1000
        reconnect_backoff_s = (0.2, 0.5)

        def _new_producer(self) -> Any:
            attempts.append("connect")
            return super()._new_producer()

    topic = replace(TRAINING_METRICS, name=kafka_topic)
    publisher = QuickReconnect(replace(settings.kafka, bootstrap_servers=f"127.0.0.1:{relay.port}"))  # same login
    for epoch in range(5):
        publisher.publish(topic, metrics_payload("back", epoch), key=f"back:t0:{epoch}")
    wait_until(lambda: len(attempts) >= 2, "a second connection attempt")  # the first one failed: it keeps trying
    assert publisher.stats() == PublishStats(sent=0, delivered=0, failed=0, dropped=0, pending=5)
    relay.start()
    wait_until(lambda: publisher.stats().delivered == 5, "delivery once the broker is reachable")
    stats = publisher.close(timeout_s=10)
    assert stats == PublishStats(sent=5, delivered=5, failed=0, dropped=0, pending=0)
    assert [r.key.decode() for r in read_all(settings.kafka, kafka_topic, 5)] == [f"back:t0:{e}" for e in range(5)]


def test_publish_event_sync_and_its_clear_error(kafka_topic: str, settings: Any) -> None:
    topic = Topic(kafka_topic, PIPELINE_EVENTS.schema, partitions=1, retention_ms=60000)
    payload = {"dag_id": "mlops_training", "task_id": None, "event": "run_succeeded", "details": {"rows": 3}}
    envelope = publish_event(settings.kafka, topic, payload, key="mlops_training:r1:-:run_succeeded", dag_run_id="r1")
    [record] = read_all(settings.kafka, kafka_topic, 1)
    assert json.loads(record.value) == envelope and record.key == b"mlops_training:r1:-:run_succeeded"

    unreachable = KafkaSettings(f"127.0.0.1:{free_port()}")
    with pytest.raises(EventPublishError, match=f"Kafka is unreachable at {unreachable.bootstrap_servers}"):
        publish_event(unreachable, topic, payload, key="k", timeout_s=1)
