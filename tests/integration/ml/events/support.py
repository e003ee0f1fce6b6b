"""Helpers of the events tests: reading a test topic back."""

from __future__ import annotations

import time
from typing import Any

from ml.events.consumer import open_topic
from ml.settings import KafkaSettings


def read_all(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """The topic's records from its beginning, once `expected` of them arrived (a bounded poll)."""
    consumer = open_topic(kafka, topic, from_beginning=True)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))
