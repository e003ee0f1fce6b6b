"""ml.events.replay: a lost upload notification sent again, in the format the watcher reads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ml.events.replay import REPLAY_SOURCE, notification, replay_uploads
from ml.events.s3_notifications import CreatedObject, created_objects
from ml.settings import KafkaSettings
from ml.storage import S3Uri
from ml.topics import S3_EVENTS

EARLY, LATE = datetime(2026, 12, 3, 7, 0, tzinfo=UTC), datetime(2026, 12, 3, 9, 30, 1, 250000, tzinfo=UTC)


def listed(key: str, modified: datetime = EARLY) -> dict[str, Any]:
    return {"Key": key, "Size": 12, "ETag": '"abc123"', "LastModified": modified}


@pytest.mark.parametrize("encoded", [False, True])
def test_a_replayed_notification_reads_back_as_the_object_it_names(encoded: bool) -> None:
    [created] = created_objects(
        notification("raw", listed("cars/a b+c.csv", LATE), url_encode_keys=encoded), url_encoded_keys=encoded
    )
    assert created == CreatedObject(
        "raw", "cars/a b+c.csv", 12, "abc123", "s3:ObjectCreated:Put", "2026-12-03T09:30:01.250Z", None
    )


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.flushed = False

    def send(self, topic: str, value: bytes) -> None:
        self.sent.append((topic, value))

    def flush(self) -> None:
        self.flushed = True


class Listing:
    """The listing part of a boto3 client."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects

    def get_paginator(self, name: str) -> Any:
        objects = self.objects

        class Paginator:
            def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
                return [{"Contents": [o for o in objects if o["Key"].startswith(Prefix)]}]

        return Paginator()


def test_every_object_under_the_prefix_since_the_given_time_is_sent_then_flushed() -> None:
    producer = Producer()
    s3 = Listing([listed("cars/old.csv"), listed("cars/new.csv", LATE), listed("penguins/p.csv", LATE)])
    result = replay_uploads(
        S3Uri.parse("s3://raw/cars/"), s3, KafkaSettings("unused:9092"), since=LATE, producer=producer
    )
    assert result == {"topic": S3_EVENTS.name, "prefix": "s3://raw/cars/", "replayed": 1}
    [(topic, value)] = producer.sent
    assert topic == S3_EVENTS.name and producer.flushed
    assert [o.key for o in created_objects(value, url_encoded_keys=False)] == ["cars/new.csv"]
    assert REPLAY_SOURCE.encode() in value
    everything = Producer()
    replay_uploads(S3Uri.parse("s3://raw/cars/"), s3, KafkaSettings("unused:9092"), producer=everything)
    assert len(everything.sent) == 2
