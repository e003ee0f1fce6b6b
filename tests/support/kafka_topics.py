"""Reading a whole topic back in a test: every record on every partition, from the beginning, without a group."""

from __future__ import annotations

import time
from typing import Any

from ml.settings import KafkaSettings


def topic_messages(kafka: KafkaSettings, topic: str, timeout_s: float = 20.0, expect: int = 0) -> list[Any]:
    """Every record of `topic` on `kafka`'s brokers (all partitions, from the beginning): until `expect` are read and
    no more come for 2 s, or `timeout_s`."""
    from kafka import TopicPartition

    from ml.clients import kafka_consumer

    servers = kafka.bootstrap_servers
    consumer = kafka_consumer(kafka, enable_auto_commit=False, consumer_timeout_ms=2000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert partitions, f"topic {topic} is missing on {servers}"
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = list(consumer)  # until 2 s without a record
            records.extend(batch)
            if not batch and len(records) >= expect:
                break
        return records
    finally:
        consumer.close()
