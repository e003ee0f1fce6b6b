"""Fixtures of the events tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.ml.events.support import Relay


@pytest.fixture
def relay(kafka_service: None, settings: Any) -> Iterator[Relay]:
    host, port = settings.kafka.servers[0].rsplit(":", 1)
    relay = Relay((host, int(port)))
    yield relay
    relay.stop()
