"""S3 bucket notifications (AWS's event message structure) as the S3 server writes them to ml.topics.S3_EVENTS.

The local stack's S3 server (Versity S3 Gateway) sends one message per created object, with the key as it is; on AWS
the same records come through S3 -> SQS or EventBridge, with the key URL-encoded. `created_objects` turns one message
into the objects it says were created, and refuses anything else with a NotificationError naming what is wrong: the
caller logs it and goes on, a malformed message must never stop a watcher. The server's start-up test message
(`s3:TestEvent`) carries no record and is no error: it gives no object.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import unquote_plus

from ml.topics import S3_EVENTS

TEST_EVENT = "s3:TestEvent"
CREATED_PREFIX = "s3:ObjectCreated:"


class NotificationError(ValueError):
    """A message on the notifications topic that is not a bucket notification this project can read."""


@dataclass(frozen=True)
class CreatedObject:
    """One object a notification says was created."""

    bucket: str
    key: str  # decoded: the object's real name
    size: int | None
    etag: str | None  # without quotes
    event: str  # s3:ObjectCreated:Put, ...:CompleteMultipartUpload, ...
    event_time: str
    sequencer: str | None = None  # AWS orders the events of one key by it; the local server may leave it out

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def fingerprint(self) -> str:
        """The same for every delivery of one notification (Kafka and S3 deliver at least once), different for two
        uploads of one key: what a consumer remembers so that no object is acted on twice."""
        return "|".join((self.uri, self.etag or "", self.event_time, self.sequencer or ""))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CreatedObject:
        """Back from `as_dict` (an asset event's payload); KeyError/TypeError on anything else."""
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls) if field.name in data})


@cache
def _validator() -> Any:
    import fastjsonschema

    from ml.events.envelope import load_schema

    return fastjsonschema.compile(load_schema(S3_EVENTS.schema))


def created_objects(value: bytes | str, *, url_encoded_keys: bool = True) -> list[CreatedObject]:
    """The objects one notification message says were created (none for the server's test message or for other
    events, such as removals); NotificationError for a message that is not JSON or not a bucket notification.

    AWS URL-encodes keys in notifications (form encoding: a space is "+"); Versity S3 Gateway (v1.8.0) sends them
    as they are, so its messages are read with `url_encoded_keys=False` (a "+" in its key is a "+")."""
    import fastjsonschema

    try:
        message = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NotificationError(f"not JSON: {error}") from None
    if isinstance(message, dict) and message.get("Event") == TEST_EVENT:
        return []
    try:
        _validator()(message)
    except fastjsonschema.JsonSchemaValueException as error:
        raise NotificationError(f"not an S3 bucket notification: {error.message}") from None
    created = []
    for record in message["Records"]:
        if not record["eventName"].startswith(CREATED_PREFIX):
            continue
        data = record["s3"]["object"]
        etag = data.get("eTag")
        created.append(
            CreatedObject(
                bucket=record["s3"]["bucket"]["name"],
                key=unquote_plus(data["key"]) if url_encoded_keys else data["key"],
                size=data.get("size"),
                etag=etag.strip('"') if etag else None,
                event=record["eventName"],
                event_time=record["eventTime"],
                sequencer=data.get("sequencer"),
            )
        )
    return created
