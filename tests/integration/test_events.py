"""Events against the real Kafka broker: round trips with schema-valid envelopes, an unreachable broker, and a
broker that comes back (a TCP relay in front of the shared broker plays the part; the shared one is never stopped)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from ml.events import (
    EventPublisher,
    EventPublishError,
    PublishStats,
    publish_event,
    tail,
    training_metrics_key,
    validate_envelope,
)
from ml.topics import PIPELINE_EVENTS, TRAINING_METRICS, Topic

pytestmark = pytest.mark.integration

BROKER = ("127.0.0.1", 9092)


def metrics_payload(run_name: str, epoch: int) -> dict[str, Any]:
    return {
        "run_name": run_name,
        "trial_id": "t0",
        "epoch": epoch,
        "metrics": {"val_loss": 1.0 / (epoch + 1)},
        "params": {"lr": 0.01},
    }


def read_all(topic: str, expected: int, timeout_s: float = 20.0) -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers="127.0.0.1:9092",
        auto_offset_reset="earliest",
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        consumer_timeout_ms=1000,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer)
    finally:
        consumer.close()
    return records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_publisher_round_trip_delivers_schema_valid_envelopes(kafka_topic: str) -> None:
    topic = replace(TRAINING_METRICS, name=kafka_topic)
    run_name = f"it-{uuid.uuid4().hex[:6]}"
    publisher = EventPublisher("127.0.0.1:9092", dag_run_id="manual__it")
    for epoch in range(10):
        publisher.publish(topic, metrics_payload(run_name, epoch), key=training_metrics_key(run_name, "t0", epoch))
    stats = publisher.close(timeout_s=30)
    assert stats == PublishStats(sent=10, delivered=10, failed=0, dropped=0, pending=0)

    records = read_all(kafka_topic, 10)
    assert [r.key.decode() for r in records] == [f"{run_name}:t0:{e}" for e in range(10)]
    for record in records:
        envelope = json.loads(record.value)
        validate_envelope(envelope, TRAINING_METRICS)
        assert envelope["dag_run_id"] == "manual__it" and envelope["payload"]["run_name"] == run_name


def test_publisher_with_an_unreachable_broker_buffers_counts_and_never_raises() -> None:
    port = free_port()  # nothing listens there
    publisher = EventPublisher(f"127.0.0.1:{port}", buffer_size=5)
    started = time.monotonic()
    for epoch in range(8):
        publisher.publish(TRAINING_METRICS, metrics_payload("down", epoch), key=f"down:t0:{epoch}")
    assert time.monotonic() - started < 0.5  # the caller never waits for Kafka
    stats = publisher.close(timeout_s=1.0)
    assert time.monotonic() - started < 10
    assert stats == PublishStats(sent=0, delivered=0, failed=0, dropped=3, pending=5)


class Relay:
    """A TCP relay on a free port to the shared broker, that can be switched off and on (the broker 'goes down')."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        self._server = server
        thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
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
def relay(kafka_service: None) -> Iterator[Relay]:
    relay = Relay(BROKER)
    yield relay
    relay.stop()


def test_publisher_delivers_what_waited_once_the_broker_is_reachable(kafka_topic: str, relay: Relay) -> None:
    # Bootstrap goes through the relay (down at first); the broker's metadata then points clients at the broker itself.
    class QuickReconnect(EventPublisher):
        bootstrap_timeout_ms = 1000
        reconnect_backoff_s = (0.2, 0.5)

    topic = replace(TRAINING_METRICS, name=kafka_topic)
    publisher = QuickReconnect(f"127.0.0.1:{relay.port}")
    for epoch in range(5):
        publisher.publish(topic, metrics_payload("back", epoch), key=f"back:t0:{epoch}")
    time.sleep(2.0)
    assert publisher.stats().pending == 5 and publisher.stats().delivered == 0
    relay.start()
    deadline = time.monotonic() + 20
    while publisher.stats().delivered < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = publisher.close(timeout_s=10)
    assert stats == PublishStats(sent=5, delivered=5, failed=0, dropped=0, pending=0)
    assert [r.key.decode() for r in read_all(kafka_topic, 5)] == [f"back:t0:{e}" for e in range(5)]


def test_publish_event_sync_and_its_clear_error(kafka_topic: str) -> None:
    topic = Topic(kafka_topic, PIPELINE_EVENTS.schema, partitions=1, retention_ms=60000)
    payload = {"dag_id": "mlops_training", "task_id": None, "event": "run_succeeded", "details": {"rows": 3}}
    envelope = publish_event(topic, payload, key="mlops_training:r1:-:run_succeeded", dag_run_id="r1")
    [record] = read_all(kafka_topic, 1)
    assert json.loads(record.value) == envelope

    port = free_port()
    started = time.monotonic()
    with pytest.raises(EventPublishError, match=f"127.0.0.1:{port}"):
        publish_event(topic, payload, key="k", timeout_s=1, bootstrap_servers=f"127.0.0.1:{port}")
    assert time.monotonic() - started < 5


def test_tail_prints_readable_lines(kafka_topic: str) -> None:
    topic = replace(TRAINING_METRICS, name=kafka_topic)
    with EventPublisher("127.0.0.1:9092") as publisher:
        for epoch in range(3):
            publisher.publish(topic, metrics_payload("tail", epoch), key=f"tail:t0:{epoch}")

    lines: list[str] = []
    assert tail(kafka_topic, from_beginning=True, max_messages=3, timeout_s=10, write=lines.append) == 3
    assert all("training_metrics.v1" in line and "INVALID" not in line for line in lines)
    assert [line.split()[2] for line in lines] == [f"tail:t0:{e}" for e in range(3)]

    # The real command line, once.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml",
            "events",
            "tail",
            kafka_topic,
            "--from-beginning",
            "--max-messages",
            "3",
            "--timeout-s",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("training_metrics.v1") == 3 and '"run_name":"tail"' in result.stdout
