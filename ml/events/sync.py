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

# How long the producer's metadata waits before it may be fetched again (see `_prompt_metadata`).
METADATA_RETRY_BACKOFF_MS = 10


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
    _prompt_metadata(producer)
    try:
        yield SyncPublisher(kafka, producer, timeout_s)
    finally:
        close_quietly(producer, timeout=min(timeout_s, 5.0))


def _prompt_metadata(producer: Any) -> None:
    """Let the first send fetch its topic's metadata at once. kafka-python 3.0 counts the bootstrap's metadata fetch as
    a refresh and waits its metadata backoff, 100 ms whatever `retry_backoff_ms` the producer was given (its
    ClusterMetadata is built without it), before asking for the topic the first send names: ~90 of a one-shot event's
    ~105 ms on the local broker, paid twice by every Airflow task (its started and succeeded events). Failed refreshes
    still back off exponentially (the connection manager's own delay). Nothing happens when a kafka-python release
    lays its producer out differently (tests/integration/ml/events/test_publisher.py checks the pinned one)."""
    config = getattr(getattr(producer, "_metadata", None), "config", None)
    if isinstance(config, dict) and "retry_backoff_ms" in config:
        config["retry_backoff_ms"] = METADATA_RETRY_BACKOFF_MS
