"""Reading topics without a consumer group: every reader sees every message, and nothing is committed.

`open_topic` is the one way the project reads a topic: the prediction service's promotion watcher follows
`mlops.model.promoted.v1` from its end, and `tail` (`python -m ml events tail`) prints a topic as readable lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ml.clients import close_quietly, kafka_consumer
from ml.clock import SYSTEM_CLOCK, Clock
from ml.events.envelope import EventValidationError, validate_envelope
from ml.events.publisher import EventPublishError
from ml.settings import KafkaSettings


def open_topic(kafka: KafkaSettings, topic_name: str, *, from_beginning: bool = False, **options: Any) -> Any:
    """A consumer with every partition of `topic_name` assigned, at its end or its beginning.

    "The end" is resolved before this returns, so nothing published afterwards is missed. LookupError when the broker
    lists no partition of the topic: it does not exist, or the settings' user may not describe it (a broker with ACLs
    hides such topics); `options` are kafka-python's (client_id, timeouts). No consumer group: a user with READ and
    DESCRIBE on the topic is enough."""
    from kafka import TopicPartition

    consumer = kafka_consumer(kafka, group_id=None, enable_auto_commit=False, **options)
    try:
        partitions = consumer.partitions_for_topic(topic_name)
        if not partitions:
            who = f"user {kafka.username!r}" if kafka.uses_sasl else "this client"
            raise LookupError(
                f"topic {topic_name!r} on {kafka.bootstrap_servers} does not exist or {who} may not describe it"
            )
        assigned = [TopicPartition(topic_name, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*assigned)
        for partition in assigned:
            consumer.position(partition)
    except BaseException:
        close_quietly(consumer)
        raise
    return consumer


def format_message(key: bytes | None, value: bytes | None, *, max_payload_chars: int = 400) -> str:
    """One readable line for a Kafka message: event time, schema, key, compact payload (or why it is invalid)."""
    key_text = key.decode(errors="replace") if key is not None else "-"
    if value is None:  # a tombstone
        return f"{'-':24}  {'NO-VALUE':22}  {key_text}"
    try:
        envelope = json.loads(value)
    except ValueError:
        return f"{'-':24}  {'NOT-JSON':22}  {key_text}  {value[:max_payload_chars]!r}"
    if not isinstance(envelope, dict):
        return f"{'-':24}  {'NOT-AN-ENVELOPE':22}  {key_text}  {json.dumps(envelope)[:max_payload_chars]}"
    try:
        validate_envelope(envelope)
        status = ""
    except EventValidationError as error:
        status = f"  INVALID: {error}"
    payload = json.dumps(envelope.get("payload"), separators=(",", ":"), sort_keys=True)
    if len(payload) > max_payload_chars:
        payload = payload[: max_payload_chars - 3] + "..."
    return f"{envelope.get('event_time', '-')!s:24}  {envelope.get('schema', '-')!s:22}  {key_text}  {payload}{status}"


def tail(
    kafka: KafkaSettings,
    topic_name: str,
    *,
    from_beginning: bool = False,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    write: Callable[[str], None] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> int:
    """Follow a topic and write one line per message. Stops after `max_messages`, or after `timeout_s` seconds
    without a message; returns how many were read."""
    from kafka.errors import KafkaError

    write = write or (lambda line: print(line, flush=True))
    try:
        consumer = open_topic(
            kafka, topic_name, from_beginning=from_beginning, client_id="mlops-events-tail", bootstrap_timeout_ms=10000
        )
    except KafkaError as error:
        raise EventPublishError(f"Kafka is unreachable at {kafka.bootstrap_servers}: {error}") from error
    try:
        count = 0
        idle_since = clock.monotonic()
        while max_messages is None or count < max_messages:
            records = consumer.poll(timeout_ms=500)
            batch = sorted(
                (r for rs in records.values() for r in rs), key=lambda r: (r.timestamp, r.partition, r.offset)
            )
            for record in batch[: None if max_messages is None else max_messages - count]:
                write(format_message(record.key, record.value))
                count += 1
            if batch:
                idle_since = clock.monotonic()
            elif timeout_s is not None and clock.monotonic() - idle_since >= timeout_s:
                break
        return count
    finally:
        close_quietly(consumer)
