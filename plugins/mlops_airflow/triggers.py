"""The asset watchers' triggers: S3 upload notifications (ml.topics.S3_EVENTS) and the drift monitor's drifted
windows (ml.topics.DRIFT) become asset events.

It is the Kafka provider's KafkaSharedStreamTrigger (Airflow 3.3's shared-stream ack channel: a message's offset is
committed only after the asset events derived from it are stored, so a triggerer killed in between loses nothing;
the message comes again, which the dispatcher, ml.events.uploads, recognises). This subclass only reads the messages:
one asset event per notification of created objects in the watched buckets, with the objects as its payload. A
malformed message is logged and rejected (committed past: it would fail again); a removal, the S3 server's test
message or an object of another bucket is logged and skipped. Which dataset an object trains is decided later, by the
dispatcher, so that a bad routes file fails a task (and is mended) instead of dropping events here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.providers.apache.kafka.triggers.shared_stream import KafkaSharedStreamTrigger
from airflow.triggers.base import TriggerEvent
from airflow.triggers.shared_stream import reject_shared_stream_event

log = logging.getLogger(__name__)


class MalformedMessage(ValueError):
    """A message the trigger cannot read: logged and rejected (committed past; it would fail again)."""


class MessageTrigger(KafkaSharedStreamTrigger):
    """One asset event per message that `payload_of` turns into a payload (None: the message is skipped, a
    MalformedMessage: logged and rejected). The serialized class path is the subclass's own."""

    def payload_of(self, value: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        async for value in shared_stream:
            try:
                payload = self.payload_of(value)
            except MalformedMessage as error:
                log.warning("%s: skipped a malformed message: %s", self.topics, error)
                reject_shared_stream_event()
                continue
            if payload:
                yield TriggerEvent(payload)


class S3NotificationTrigger(MessageTrigger):
    """Fires one event per S3 notification that created objects in `buckets`; its payload: {"objects": [...]}, each
    ml.events.s3_notifications.CreatedObject.as_dict().

    `url_encoded_keys`: AWS URL-encodes keys in notifications, the local S3 server (Versity S3 Gateway) does not."""

    def __init__(
        self,
        *,
        topics: Sequence[str],
        buckets: Sequence[str],
        kafka_config_id: str = "kafka_default",
        url_encoded_keys: bool = True,
        poll_timeout: float = 1.0,
        dlq_topic: str | None = None,
    ) -> None:
        super().__init__(topics=topics, kafka_config_id=kafka_config_id, poll_timeout=poll_timeout, dlq_topic=dlq_topic)
        self.buckets = sorted(buckets)
        self.url_encoded_keys = url_encoded_keys

    def serialize(self) -> tuple[str, dict[str, Any]]:
        classpath, kwargs = super().serialize()
        return classpath, {**kwargs, "buckets": self.buckets, "url_encoded_keys": self.url_encoded_keys}

    def payload_of(self, value: Any) -> dict[str, Any] | None:
        """The watched created objects of one notification; None when it names none (a removal, another bucket)."""
        from ml.events.s3_notifications import NotificationError, created_objects

        try:
            objects = created_objects(value or b"", url_encoded_keys=self.url_encoded_keys)
        except NotificationError as error:
            raise MalformedMessage(error) from None
        watched = []
        for obj in objects:
            if obj.bucket in self.buckets:
                watched.append(obj.as_dict())
            else:
                log.info("skipped %s: bucket %r is not watched (%s)", obj.uri, obj.bucket, ", ".join(self.buckets))
        return {"objects": watched} if watched else None


class DriftEventTrigger(MessageTrigger):
    """Fires one event per drift.v1 message whose window drifted; its payload: ml.drift.retraining.DriftSignal as a
    dict. A window that did not drift is skipped; a message that is not a valid drift.v1 envelope is rejected. Its
    offset is committed only once the asset event is stored, as above."""

    def payload_of(self, value: Any) -> dict[str, Any] | None:
        import json

        from ml.drift.retraining import drift_signal
        from ml.events.envelope import EventValidationError

        try:
            signal = drift_signal(json.loads(value or b""))
        except (ValueError, EventValidationError) as error:  # JSONDecodeError is a ValueError
            raise MalformedMessage(error) from None
        return signal.as_dict() if signal is not None else None
