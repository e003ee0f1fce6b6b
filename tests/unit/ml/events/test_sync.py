"""ml.events.sync's metadata prompt on stand-ins: it sets the backoff where the producer has kafka-python 3.0's layout
and leaves any other producer alone (the real one: tests/integration/ml/events/test_publisher.py)."""

from __future__ import annotations

from types import SimpleNamespace

from ml.events.sync import METADATA_RETRY_BACKOFF_MS, _prompt_metadata


def test_the_backoff_is_set_on_kafka_pythons_layout_and_nothing_else_is_touched() -> None:
    producer = SimpleNamespace(_metadata=SimpleNamespace(config={"retry_backoff_ms": 100, "metadata_max_age_ms": 1}))
    _prompt_metadata(producer)
    assert producer._metadata.config == {"retry_backoff_ms": METADATA_RETRY_BACKOFF_MS, "metadata_max_age_ms": 1}

    for other in (
        SimpleNamespace(),
        SimpleNamespace(_metadata=None),
        SimpleNamespace(_metadata=SimpleNamespace(config={})),
    ):
        _prompt_metadata(other)  # another release's layout: no error, nothing added
    assert other._metadata.config == {}
