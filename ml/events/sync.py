"""Synchronous sends: each event waits for the broker's acknowledgement, and a failure raises EventPublishError.

`sync_publisher()` opens a producer for a block (the drift monitor's windows); `send_from_process()` keeps one per
process and Kafka settings, opened on first use and closed at exit, for callers that send a few events over a
process's life: an Airflow task's callbacks and its registry events (`ml.events.publisher.publish_event`). Each new
producer logs in (SCRAM), fetches metadata and an idempotent producer id: ~0.1 s of every event it spared.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from ml.clients import close_quietly, kafka_producer
from ml.settings import KafkaSettings
from ml.topics import Topic


class EventPublishError(RuntimeError):
    """Kafka could not take an event; the message names the bootstrap servers."""


class SyncPublisher:
    """Sends events one at a time, each waiting for the broker's acknowledgement, over one producer (acks="all",
    idempotent); a failure raises EventPublishError naming the bootstrap servers. Open it with `sync_publisher`."""

    def __init__(self, kafka: KafkaSettings, producer: Any, timeout_s: float) -> None:
        self.kafka, self._producer, self.timeout_s = kafka, producer, timeout_s

    def send(self, topic: Topic, envelope: dict[str, Any], key: str) -> None:
        """Send an envelope (`make_envelope`) and wait for the acknowledgement."""
        from kafka.errors import KafkaError

        try:
            self._producer.send(topic.name, key=key.encode(), value=envelope).get(timeout=self.timeout_s)
        except KafkaError as error:
            raise EventPublishError(
                f"Kafka at {self.kafka.bootstrap_servers} did not take the {topic.schema} event on {topic.name}: "
                f"{error}"
            ) from error


@contextmanager
def sync_publisher(
    kafka: KafkaSettings, *, timeout_s: float = 10, client_id: str = "mlops-events-sync"
) -> Iterator[SyncPublisher]:
    """A SyncPublisher for the block; raises EventPublishError when Kafka is unreachable (no answer in `timeout_s`)."""
    from kafka.errors import KafkaError
    from kafka.serializer import JsonSerializer

    timeout_ms = max(int(timeout_s * 1000), 1000)
    try:
        producer = kafka_producer(
            kafka,
            client_id=client_id,
            acks="all",
            # Explicit, not kafka-python's default: a retried send is never written twice, and a setting that would
            # silently turn that off raises instead.
            enable_idempotence=True,
            bootstrap_timeout_ms=timeout_ms,
            max_block_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            delivery_timeout_ms=timeout_ms,
            value_serializer=JsonSerializer(),
        )
    except KafkaError as error:
        raise EventPublishError(
            f"Kafka is unreachable at {kafka.bootstrap_servers} (no answer within {timeout_s:g} s): {error}"
        ) from error
    try:
        yield SyncPublisher(kafka, producer, timeout_s)
    finally:
        close_quietly(producer, timeout=min(timeout_s, 5.0))


_process_publishers: dict[tuple[int, KafkaSettings, float], tuple[ExitStack, SyncPublisher]] = {}
_process_lock = threading.Lock()


def send_from_process(kafka: KafkaSettings, topic: Topic, envelope: dict[str, Any], key: str, timeout_s: float) -> None:
    """Send over this process's SyncPublisher for `kafka` (see the module's docstring), opened on first use. One
    whose send failed is closed and forgotten: the next event starts from a new connection rather than a client in
    an unknown state."""
    slot = (os.getpid(), kafka, timeout_s)  # a forked child opens its own: a producer's threads do not survive fork
    with _process_lock:
        found = _process_publishers.get(slot)
        if found is None:
            stack = ExitStack()
            publisher = stack.enter_context(sync_publisher(kafka, timeout_s=timeout_s))
            if not _process_publishers:
                atexit.register(close_process_publishers)
            found = _process_publishers[slot] = (stack, publisher)
    try:
        found[1].send(topic, envelope, key)
    except EventPublishError:
        _forget(slot)
        raise


def _forget(key: tuple[int, KafkaSettings, float]) -> None:
    with _process_lock:
        found = _process_publishers.pop(key, None)
    if found is not None:
        found[0].close()


def close_process_publishers() -> None:
    """Close this process's publishers (at exit; tests call it too)."""
    with _process_lock:
        mine = [key for key in _process_publishers if key[0] == os.getpid()]
    for key in mine:
        _forget(key)
