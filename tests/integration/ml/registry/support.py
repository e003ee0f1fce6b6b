"""Helpers of the registry tests: a tap on the event topics."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class EventTap:
    """Collects what is published to the given topics from now on (no consumer group, nothing committed)."""

    def __init__(self, kafka: Any, *topics: str) -> None:
        from ml.events.consumer import open_topic

        self.consumers = [open_topic(kafka, topic) for topic in topics]
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], count: int = 1, timeout_s: float = 30.0
    ) -> list[dict[str, Any]]:
        """The matching events once `count` of them arrived (a bounded poll: an AssertionError after `timeout_s`)."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            for consumer in self.consumers:
                for batch in consumer.poll(timeout_ms=200).values():
                    self.seen.extend((r.topic, json.loads(r.value)) for r in batch)
            matched = [envelope for topic, envelope in self.seen if predicate(topic, envelope)]
            if len(matched) >= count:
                return matched
            assert time.monotonic() < deadline, f"expected {count} matching events within {timeout_s} s: {self.seen}"

    def close(self) -> None:
        for consumer in self.consumers:
            consumer.close()
