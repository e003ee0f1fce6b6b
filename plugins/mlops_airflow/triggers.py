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

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from airflow.providers.apache.kafka.hooks.consume import KafkaConsumerHook
from airflow.providers.apache.kafka.triggers.shared_stream import (
    KafkaBrokerPayload,
    KafkaSharedStreamProducer,
    KafkaSharedStreamTrigger,
)
from airflow.triggers.base import TriggerEvent
from airflow.triggers.shared_stream import AdvanceItem, reject_shared_stream_event
from asgiref.sync import sync_to_async

log = logging.getLogger(__name__)


class MalformedMessage(ValueError):
    """A message the trigger cannot read: logged and rejected (committed past; it would fail again)."""


CONSUME_BATCH = 500  # messages one read may return: a backlog drains in batches, not one message per read


def in_flight_limit(subscriber_queue_size: int) -> int:
    """How many messages the producer may have handed out and not yet seen advanced: half the subscribers' queue
    (`[triggerer] shared_stream_subscriber_queue_size`), at most a read's worth, at least two: a subscriber moves
    past a message only when it takes the next one, so with one the stream would wait for itself."""
    return max(2, min(CONSUME_BATCH, subscriber_queue_size // 2))


class BatchingStreamProducer(KafkaSharedStreamProducer):
    """The provider's shared-stream producer (ack mode, the same offsets committed), reading in batches off the
    triggerer's event loop thread, and never more than `in_flight` messages ahead of the subscribers.

    Why: the provider polls one message per `sync_to_async(consumer.poll)` call, and asgiref runs every such
    thread-sensitive call on one shared thread. With two shared streams in one triggerer (the upload and the drift
    watchers), each idle stream's poll holds that thread for its whole `poll_timeout`, so the other stream got one
    message per second: measured, 300 notifications of the lake bucket took five minutes to skip, and the drift
    monitor's checkpoint writes alone come at about that rate. Here a read takes up to CONSUME_BATCH messages and
    runs in the loop's thread pool (confluent-kafka's consumer is thread-safe), leaving the shared thread to the
    commits.

    Back-pressure: Airflow's shared stream puts each message into every subscriber's queue without waiting, and fails
    a subscriber whose queue is full; the restarted trigger reads again from the last committed offset. With a
    backlog larger than the queue (the drift monitor's checkpoint files notify about one object a second, so an hour
    with Airflow down is enough) the watcher overflowed, restarted and overflowed again for good, and every restart
    turned the same first notifications into new asset events (raw_data_events ran every 2 s; seen on the dev stack).
    So a message is handed out only while fewer than `in_flight` are waiting for their advance (the subscribers
    moved past them: `advance`), which keeps every queue below half full."""

    def __init__(self, *, in_flight: int = CONSUME_BATCH, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.in_flight = in_flight
        self._room: asyncio.Semaphore | None = None

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        try:
            await super().advance(batch)
        finally:
            if self._room is not None:
                for _ in batch:
                    self._room.release()

    async def open_stream(self) -> AsyncIterator[tuple[Any, KafkaBrokerPayload]]:
        hook = KafkaConsumerHook(topics=self.topics, kafka_config_id=self.kafka_config_id)
        await self._ensure_manual_commit(hook)
        consumer = await sync_to_async(hook.get_consumer)()
        self._consumer = consumer
        consume = sync_to_async(consumer.consume, thread_sensitive=False)
        keep_for_dlq = self.dlq_topic is not None
        room = self._room = asyncio.Semaphore(self.in_flight)
        while True:
            for message in await consume(num_messages=CONSUME_BATCH, timeout=self.poll_timeout):
                if message.error():
                    raise RuntimeError(f"Kafka consumer error: {message.error()}")
                await room.acquire()  # released by advance, once the subscribers have moved past it
                value = message.value()
                yield (
                    value,
                    KafkaBrokerPayload(
                        # set on every message without an error
                        topic=cast("str", message.topic()),
                        partition=cast("int", message.partition()),
                        offset=cast("int", message.offset()),
                        value=value if keep_for_dlq else None,
                        key=message.key() if keep_for_dlq else None,
                    ),
                )


class MessageTrigger(KafkaSharedStreamTrigger):
    """One asset event per message that `payload_of` turns into a payload (None: the message is skipped, a
    MalformedMessage: logged and rejected). The serialized class path is the subclass's own."""

    def payload_of(self, value: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> KafkaSharedStreamProducer:
        from airflow.configuration import conf

        return BatchingStreamProducer(
            in_flight=in_flight_limit(conf.getint("triggerer", "shared_stream_subscriber_queue_size")),
            topics=kwargs["topics"],
            kafka_config_id=kwargs["kafka_config_id"],
            poll_timeout=kwargs["poll_timeout"],
            dlq_topic=kwargs.get("dlq_topic"),
        )

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
                # At debug: the drift monitor's checkpoint files alone notify about one object a second.
                log.debug("skipped %s: bucket %r is not watched (%s)", obj.uri, obj.bucket, ", ".join(self.buckets))
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
