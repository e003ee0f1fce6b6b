"""The serving unit tests never start a real Kafka publisher unless a test asks for one: every app built with the
default publisher factory gets a FakePublisher (tests that look at the messages inject their own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.ml.serve.fakes import FakePublisher


@pytest.fixture(autouse=True)
def no_kafka_publisher(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakePublisher]]:
    made: list[FakePublisher] = []

    def factory(kafka: object, buffer_size: int) -> object:
        return lambda: made.append(FakePublisher()) or made[-1]

    monkeypatch.setattr("ml.serve.app._event_publisher", factory)
    yield made
