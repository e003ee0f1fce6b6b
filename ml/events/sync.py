"""Synchronous sends: each event waits for the broker's acknowledgement, and a failure raises EventPublishError.

`sync_publisher()` opens a producer for a block: the drift monitor's windows, and each `publish_event` (one event).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
