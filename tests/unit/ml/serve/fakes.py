"""Test doubles of the serving tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ml.events.envelope import make_envelope
from ml.events.publisher import PublishStats
from ml.topics import Topic


class FakePublisher:
    """EventPublisher's interface as telemetry uses it: keeps what is published, each one validated into its
    envelope as the real one does (a payload the schema refuses raises here, at once)."""

    def __init__(self) -> None:
        self.messages: list[tuple[Topic, dict[str, Any], str]] = []
        self.envelopes: list[dict[str, Any]] = []
        self.closed = False
        self.counts = PublishStats(0, 0, 0, 0, 0)

    def publish_later(self, topic: Topic, build: Callable[[], Mapping[str, Any]], key: str) -> None:
        """Builds the payload at once (the real one builds it on its thread, later)."""
        if self.closed:
            raise RuntimeError("EventPublisher.publish_later() after close()")
        payload = dict(build())
        self.envelopes.append(make_envelope(topic, payload))
        self.messages.append((topic, payload, key))

    def stats(self) -> PublishStats:
        return self.counts

    def close(self, timeout_s: float = 30.0) -> PublishStats:
        self.closed = True
        return self.counts

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [payload for _, payload, _ in self.messages]


class ScriptedSampler:
    """`random()` answers the scripted values in turn; `sample()` takes the first k (recorded)."""

    def __init__(self, values: Sequence[float] = ()) -> None:
        self.values = list(values)
        self.samples: list[tuple[int, int]] = []

    def random(self) -> float:
        return self.values.pop(0)

    def sample(self, population: Sequence[int], k: int) -> list[int]:
        self.samples.append((len(population), k))
        return list(population)[-k:][::-1]  # the last k, shuffled: the caller must put them back in order
