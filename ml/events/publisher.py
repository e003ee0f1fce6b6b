"""Publishing events: `EventPublisher` never blocks its caller; `publish_event` sends one event and waits.

`EventPublisher` suits training loops and serving: `publish()` validates and appends to a bounded buffer; one
background thread owns the KafkaProducer, reconnects while the broker is down and delivers what waited.
`publish_event()` is the synchronous one-off form that fails loudly (Airflow tasks, the registry); `sync_publisher()`
(`ml.events.sync`) opens one producer for several such sends (the drift monitor).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ml.clients import close_quietly, kafka_producer
from ml.clock import Backoff
from ml.events.envelope import make_envelope
from ml.events.sync import EventPublishError, SyncPublisher, sync_publisher
from ml.settings import KafkaSettings
from ml.topics import Topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishStats:
    """Counts of one publisher: every message published ends in exactly one of delivered/failed/dropped/pending."""

    sent: int  # handed to the Kafka client (a message re-sent after a delivery timeout counts again)
    delivered: int  # acknowledged by the broker (acks=all)
    failed: int  # rejected by Kafka with a non-retriable error (logged with its key)
    dropped: int  # pushed out of the full buffer (logged with its key)
    pending: int  # still in the buffer or in flight


def report_close(bootstrap_servers: str, stats: PublishStats, last_error: str | None) -> PublishStats:
    """A closed publisher's counts, logged when anything was not delivered; returned as they are."""
    if stats.dropped or stats.failed or stats.pending:
        log.warning(
            "event publisher to %s closed with %d delivered, %d dropped, %d failed, %d undelivered%s",
            bootstrap_servers,
            stats.delivered,
            stats.dropped,
            stats.failed,
            stats.pending,
            f" (last error: {last_error})" if last_error else "",
        )
    return stats


@dataclass
class _Message:
    topic: str
    key: bytes
    envelope: dict[str, Any]


class DropLog:
    """A publisher's dropped messages: how many (`dropped`, the count its stats report) and when to say so: each of
    the first `each` drops, then one line per `interval_s` with the number dropped since the last line, so that a
    broker down for an hour does not flood the log. Not thread-safe: the publisher calls it under its own lock."""

    def __init__(self, each: int, interval_s: float) -> None:
        self.each, self.interval_s = each, interval_s
        self.dropped = 0
        self._since_line = 0
        self._last_line = 0.0

    def count(self) -> int:
        """Count one drop; the number to report now (0: not yet)."""
        self.dropped += 1
        self._since_line += 1
        now = time.monotonic()
        if self.dropped <= self.each or now - self._last_line >= self.interval_s:
            since, self._since_line, self._last_line = self._since_line, 0, now
            return since
        return 0


class EventPublisher:
    """Publish events without ever blocking the caller.

    `publish()` validates the payload (a bad payload is a bug: EventValidationError at the call site), appends the
    envelope to a bounded in-memory buffer and returns. A background thread owns one KafkaProducer (acks="all",
    idempotent, retries, 20 ms linger for batching, JSON values, UTF-8 keys). While the broker is unreachable the
    messages wait in the buffer and the thread keeps trying to connect with capped exponential back-off; a message whose
    delivery timed out goes back to the front of the buffer. When the buffer is full the OLDEST message is dropped:
    for a live metrics stream the latest epochs matter most. Every drop is counted and logged with its key (the first
    ones one by one, then a summary at most every few seconds, and the total at close). `close()` flushes and reports.
    """

    # Class attributes so that tests (and the unreachable-broker case) can shorten them in a subclass.
    bootstrap_timeout_ms = 5000
    max_block_ms = 5000
    delivery_timeout_ms = 30000
    linger_ms = 20
    reconnect_backoff_s = (0.5, 10.0)
    batch_messages = 1000
    drop_log_each = 10
    drop_log_interval_s = 5.0

    def __init__(self, kafka: KafkaSettings, *, buffer_size: int = 10000, dag_run_id: str | None = None) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        self.kafka = kafka
        self.bootstrap_servers = kafka.bootstrap_servers
        self.buffer_size = buffer_size
        self.dag_run_id = dag_run_id
        self._buffer: deque[_Message] = deque()
        self._cond = threading.Condition()
        self._sent = self._delivered = self._failed = self._in_flight = 0
        self._closing = False
        self._abandon = False
        self._deadline = math.inf
        self._drops = DropLog(self.drop_log_each, self.drop_log_interval_s)
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()

    # -- the caller's side

    def publish(self, topic: Topic, payload: dict[str, Any], key: str) -> None:
        """Validate, buffer and return at once (the background thread sends it)."""
        envelope = make_envelope(topic, payload, self.dag_run_id)
        message = _Message(topic.name, key.encode(), envelope)
        with self._cond:
            if self._closing:
                raise RuntimeError("EventPublisher.publish() after close()")
            if len(self._buffer) >= self.buffer_size:
                self._drop(self._buffer.popleft())
            self._buffer.append(message)
            self._cond.notify()

    def stats(self) -> PublishStats:
        with self._cond:
            return PublishStats(
                sent=self._sent,
                delivered=self._delivered,
                failed=self._failed,
                dropped=self._drops.dropped,
                pending=len(self._buffer) + self._in_flight,
            )

    def close(self, timeout_s: float = 30.0) -> PublishStats:
        """Deliver what is buffered, waiting at most `timeout_s`; what is still pending then is reported and logged."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + max(timeout_s, 0.0)
            self._cond.notify_all()
        self._thread.join(max(self._deadline - time.monotonic(), 0.0) + 0.5)
        if self._thread.is_alive():
            with self._cond:
                self._abandon = True
                self._cond.notify_all()
        return report_close(self.bootstrap_servers, self.stats(), self._last_error)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the background thread

    def _new_producer(self) -> Any:
        """A connected KafkaProducer; raises (KafkaTimeoutError after bootstrap_timeout_ms) if no broker answers."""
        from kafka.serializer import JsonSerializer

        return kafka_producer(
            self.kafka,
            client_id="mlops-events",
            acks="all",
            enable_idempotence=True,  # retries cannot duplicate or reorder a partition's messages
            retries=2**31 - 1,
            delivery_timeout_ms=self.delivery_timeout_ms,
            # kafka-python refuses delivery_timeout_ms < linger_ms + request_timeout_ms (then no producer is ever made)
            request_timeout_ms=min(10000, self.delivery_timeout_ms - self.linger_ms),
            linger_ms=self.linger_ms,
            batch_size=64 * 1024,
            max_block_ms=self.max_block_ms,
            bootstrap_timeout_ms=self.bootstrap_timeout_ms,
            # The client's own reconnect back-off grows to 30 s by default: after a long outage it would find the
            # broker back only that late, past close()'s deadline. Cap it like ours.
            reconnect_backoff_max_ms=int(self.reconnect_backoff_s[1] * 1000),
            value_serializer=JsonSerializer(),
        )

    def _run(self) -> None:
        producer: Any = None
        backoff = Backoff(*self.reconnect_backoff_s)
        try:
            while True:
                with self._cond:
                    while not self._buffer and not self._abandon and not self._done_closing():
                        self._cond.wait(max(self._deadline - time.monotonic(), 0.0) if self._closing else None)
                    if self._abandon or (not self._buffer and self._done_closing()) or self._past_close_deadline():
                        break
                if producer is None:
                    try:
                        producer = self._new_producer()
                    except Exception as error:  # kafka-python 3 raises KafkaTimeoutError; keep trying
                        self._note_error(f"cannot connect to Kafka at {self.bootstrap_servers}: {error}")
                        self._sleep(backoff.next_delay())
                        continue
                    log.info("event publisher connected to %s", self.bootstrap_servers)
                    backoff.reset()
                if not self._send_batch(producer):
                    # The broker went away mid-send: start over with a fresh connection after a pause.
                    close_quietly(producer, timeout=0.0)
                    producer = None
                    self._sleep(backoff.next_delay())
            if producer is not None and not self._abandon:
                producer.flush(timeout=max(self._deadline - time.monotonic(), 0.1))
        except Exception:
            log.exception("event publisher thread failed; %d messages pending", self.stats().pending)
        finally:
            if producer is not None:
                close_quietly(producer, timeout=max(min(self._deadline - time.monotonic(), 5.0), 0.0))

    def _done_closing(self) -> bool:
        """Caller holds the lock. Closing ends when nothing is in flight or the close deadline passed. Not earlier:
        a message in flight while the broker is away times out and comes back to the buffer (see _on_failed), and it
        must be sent again if the broker returns before the deadline, not left behind by a flush that returned."""
        return self._closing and (self._in_flight == 0 or time.monotonic() >= self._deadline)

    def _past_close_deadline(self) -> bool:
        """Caller holds the lock. Past close()'s deadline nothing more is tried: what is still buffered stays pending
        (without this, a broker that stays down was retried without any pause until close() gave up on the thread)."""
        return self._closing and time.monotonic() >= self._deadline

    def _send_batch(self, producer: Any) -> bool:
        """Hand up to `batch_messages` buffered messages to the producer; False if sending raised."""
        with self._cond:
            batch = [self._buffer.popleft() for _ in range(min(self.batch_messages, len(self._buffer)))]
            self._in_flight += len(batch)
        for index, message in enumerate(batch):
            try:
                future = producer.send(message.topic, key=message.key, value=message.envelope)
            except Exception as error:  # metadata timeout while the broker is down: keep the rest, in order
                self._note_error(f"sending to {message.topic} failed: {error}")
                with self._cond:
                    rest = batch[index:]
                    self._in_flight -= len(rest)
                    for waiting in reversed(rest):
                        self._requeue_front(waiting)
                return False
            with self._cond:
                self._sent += 1
            future.add_callback(self._on_delivered).add_errback(self._on_failed, message)
        return True

    def _on_delivered(self, _metadata: Any) -> None:
        with self._cond:
            self._delivered += 1
            self._in_flight -= 1
            self._cond.notify_all()

    def _on_failed(self, message: _Message, error: BaseException) -> None:
        with self._cond:
            self._in_flight -= 1
            if getattr(error, "retriable", False) and not self._abandon:
                # Delivery timed out (broker gone): it waits in the buffer again for the next connection.
                self._requeue_front(message)
                self._last_error = str(error)
            else:
                self._failed += 1
                log.error(
                    "event %s key=%s to %s failed: %s",
                    message.envelope["event_id"],
                    message.key.decode(),
                    message.topic,
                    error,
                )
            self._cond.notify_all()

    def _requeue_front(self, message: _Message) -> None:
        # Caller holds the lock. A full buffer drops the oldest message, which is this one.
        if len(self._buffer) >= self.buffer_size:
            self._drop(message)
        else:
            self._buffer.appendleft(message)

    def _drop(self, message: _Message) -> None:
        # Caller holds the lock: count and log every drop, without flooding the log while the broker is down.
        since = self._drops.count()
        if since:
            log.warning(
                "event buffer full (%d): dropped %d message(s) up to key=%s on %s, %d dropped in total",
                self.buffer_size,
                since,
                message.key.decode(),
                message.topic,
                self._drops.dropped,
            )
        else:
            log.debug("event buffer full: dropped key=%s on %s", message.key.decode(), message.topic)

    def _note_error(self, text: str) -> None:
        if text != self._last_error:
            log.warning("%s (messages wait in the buffer)", text)
        self._last_error = text

    def _sleep(self, seconds: float) -> None:
        """Wait, waking early when the publisher is abandoned or its close deadline passes."""
        with self._cond:
            end = min(time.monotonic() + seconds, self._deadline)
            while not self._abandon and (remaining := end - time.monotonic()) > 0:
                self._cond.wait(remaining)


def publish_event(
    kafka: KafkaSettings,
    topic: Topic,
    payload: Mapping[str, Any],
    key: str,
    dag_run_id: str | None = None,
    timeout_s: float = 10,
) -> dict[str, Any]:
    """Send one event and wait for the broker's acknowledgement; returns the envelope sent.
    Raises EventPublishError naming the bootstrap servers when Kafka is unreachable or rejects it."""
    envelope = make_envelope(topic, payload, dag_run_id)  # an invalid payload fails before any connection
    with sync_publisher(kafka, timeout_s=timeout_s) as publisher:
        publisher.send(topic, envelope, key)
    return envelope


__all__ = [
    "EventPublishError",
    "EventPublisher",
    "PublishStats",
    "SyncPublisher",
    "publish_event",
    "report_close",
    "sync_publisher",
]
