"""Publishing events: `EventPublisher` never blocks its caller; `publish_event` sends one event and waits.

`EventPublisher` serves training loops (the search's metrics, ml.tune.callbacks) and the prediction service's request
threads (ml.serve.telemetry), on librdkafka (confluent-kafka). Why librdkafka: its serializing, batching and I/O run in
C threads that do not hold the GIL, ~7 us of CPU a message on this machine against kafka-python's ~71 us and a Python
thread woken for each message (B10 and B5b, bench/README.md): every microsecond of Python a message costs is taken from
the request threads or the trainer that share the process. `publish()` builds the envelope, encodes it and hands it to
librdkafka's own bounded queue (`produce()`, which never blocks: a full queue raises BufferError at once). A background
thread serves the delivery reports (`poll`) and the client's errors.

Delivery: acks=all, idempotent (a retry never duplicates or reorders a partition's messages), 20 ms linger.
While the broker is down librdkafka keeps the messages queued and reconnects by itself (back-off capped at 10 s), so
publishing resumes when the broker returns. Counted as `dropped`:
  * a message a full queue refuses (the NEW one: librdkafka cannot take back what it holds);
  * a message still undelivered `delivery_timeout_ms` after it was published (librdkafka's message.timeout.ms), which
    makes room for newer ones during a long outage, so that the latest traffic is what gets through once the broker is
    back. 0 keeps every message until it is delivered: training's metrics (a few a second) wait out an outage whole.
Every other delivery error is `failed` (logged with its key).

`publish_later()` is the request threads' way in: it queues the topic, a function that builds the payload, the key and
the moment, and the background thread builds, validates, encodes and hands over what has queued, every
`poll_interval_s` in one go. In a tight loop that work costs ~8 us a message; paced between requests, with the caches
cold, the same work cost a request thread ~45 us (B10, bench/README.md). At most `buffer_size` messages wait to be
built (a full wait drops the new one, counted); a payload that cannot be built is `failed`, logged there.

`publish_event()` is the synchronous one-off form that fails loudly (Airflow tasks, the registry); `sync_publisher()`
(`ml.events.sync`) opens one producer for several such sends (the drift monitor).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ml.clock import SYSTEM_CLOCK, Clock
from ml.events.envelope import make_envelope
from ml.events.sync import EventPublishError, SyncPublisher, sync_publisher
from ml.settings import KafkaSettings
from ml.topics import Topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishStats:
    """Counts of one publisher: every message published ends in exactly one of delivered/failed/dropped/pending."""

    sent: int  # handed to the Kafka client
    delivered: int  # acknowledged by the broker (acks=all)
    failed: int  # rejected by Kafka with a non-retriable error, or a payload that could not be built (logged)
    dropped: int  # refused by the full queue, or expired undelivered (logged with its key)
    pending: int  # waiting to be built, queued or in flight


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


DEFAULT_LINGER_MS = 20  # how long a message may wait for others to fill a batch


def librdkafka_options(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka's connection properties for these settings: the bootstrap servers and, for SASL, the login."""
    options: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": str(kafka.security_protocol).lower(),
    }
    if kafka.uses_sasl:
        if not kafka.password:
            raise ValueError(
                f"Kafka settings for user {kafka.username!r} at {kafka.bootstrap_servers} carry no password (a "
                "pickled copy never does): give the password again"
            )
        options.update(
            {"sasl.mechanism": kafka.sasl_mechanism, "sasl.username": kafka.username, "sasl.password": kafka.password}
        )
    return options


class EventPublisher:
    """Publish events without ever blocking the caller, through librdkafka (see the module's docstring)."""

    # Class attributes so that tests can shorten them in a subclass.
    delivery_timeout_ms = 60000  # the default of the constructor's argument
    reconnect_backoff_max_ms = 10000
    poll_interval_s = 0.2
    drop_log_each = 10
    drop_log_interval_s = 5.0

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        buffer_size: int = 10000,
        dag_run_id: str | None = None,
        client_id: str = "mlops-events",
        linger_ms: int = DEFAULT_LINGER_MS,
        delivery_timeout_ms: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        import msgspec
        from confluent_kafka import Producer

        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        if delivery_timeout_ms is not None:
            if delivery_timeout_ms < 0:
                raise ValueError(f"delivery_timeout_ms must be 0 (no limit) or more, got {delivery_timeout_ms}")
            self.delivery_timeout_ms = delivery_timeout_ms
        self.kafka = kafka
        self.bootstrap_servers = kafka.bootstrap_servers
        self.buffer_size = buffer_size
        self.dag_run_id = dag_run_id
        self.clock = clock  # stamps publish_later's messages
        self._lock = threading.Lock()
        self._published = self._delivered = self._failed = 0  # failed: deliveries refused and payloads not built
        self._unbuilt = 0  # of those failed, the payloads that could not be built (what their log line counts)
        self._refused = 0  # dropped because librdkafka's queue was full: never sent
        self._waiting: deque[tuple[Topic, Callable[[], Mapping[str, Any]], str, float]] = deque()  # publish_later's
        self._drops = DropLog(self.drop_log_each, self.drop_log_interval_s)
        self._last_error: str | None = None
        self._errors_reported: set[int] = set()  # error codes logged since the last delivery (the reports' thread)
        # msgspec's encoder: ~0.6 us an envelope against json.dumps' ~7 (an envelope holds JSON values only:
        # make_envelope proved or made them so, non-finite floats included).
        self._encoder = msgspec.json.Encoder()
        self._closing = threading.Event()
        self._closed = False
        self._producer = Producer(
            {
                **librdkafka_options(kafka),
                "client.id": client_id,
                "acks": "all",
                "enable.idempotence": True,
                # Java's (and kafka-python's) key hashing: a key lands on the partition other producers pick for it.
                "partitioner": "murmur2_random",
                "linger.ms": linger_ms,
                "queue.buffering.max.messages": buffer_size,
                "message.timeout.ms": self.delivery_timeout_ms,
                "reconnect.backoff.max.ms": self.reconnect_backoff_max_ms,
                "error_cb": self._on_client_error,
                # librdkafka's own log repeats what error_cb reports, at every reconnect: only its critical lines.
                "logger": log,
                "log_level": 2,
            }
        )
        self._thread = threading.Thread(target=self._serve_reports, name="event-publisher", daemon=True)
        self._thread.start()

    # -- the caller's side

    def publish(self, topic: Topic, payload: dict[str, Any], key: str) -> None:
        """Validate, hand to librdkafka's queue and return at once (a full queue: counted as dropped)."""
        value = self._encoder.encode(make_envelope(topic, payload, self.dag_run_id))
        if self._closed:
            raise RuntimeError("EventPublisher.publish() after close()")
        with self._lock:
            self._published += 1
        self._produce(topic, value, key)

    def publish_later(self, topic: Topic, build: Callable[[], Mapping[str, Any]], key: str) -> None:
        """Queue a message stamped now whose payload `build()` makes on the background thread; return at once."""
        stamped = (topic, build, key, self.clock.time())
        if self._closed:
            raise RuntimeError("EventPublisher.publish_later() after close()")
        with self._lock:
            self._published += 1
            if len(self._waiting) < self.buffer_size:
                self._waiting.append(stamped)
                return
        self._count_drop(f"{self.buffer_size} messages wait to be built", key, topic.name)

    def stats(self) -> PublishStats:
        with self._lock:
            # What librdkafka took is `sent`; what it refused is dropped without having been sent.
            settled = self._delivered + self._failed + self._drops.dropped
            return PublishStats(
                sent=self._published - self._refused,
                delivered=self._delivered,
                failed=self._failed,
                dropped=self._drops.dropped,
                pending=self._published - settled,
            )

    def close(self, timeout_s: float = 30.0) -> PublishStats:
        """Deliver what is queued, waiting at most `timeout_s`; what is still pending then is reported and logged."""
        if not self._closed:
            self._closed = True
            self._closing.set()
            self._thread.join()
            self._build_waiting()
            self._producer.flush(max(timeout_s, 0.0))
        return report_close(self.bootstrap_servers, self.stats(), self._last_error)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- librdkafka's callbacks, served by the background thread (and by flush() at close)

    def _serve_reports(self) -> None:
        # Every poll_interval_s, whatever reports have come in, in one go: poll(timeout) would wake this thread at
        # each batch the broker acknowledges (tens a second), and each wake takes the GIL from the request threads.
        while not self._closing.wait(self.poll_interval_s):
            try:
                self._build_waiting()
                self._producer.poll(0)
            except Exception:
                log.exception("event publisher: serving delivery reports failed")

    def _build_waiting(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, deque()
            # What librdkafka holds: handed over and not settled yet (its own len() counts its error events too).
            held = self._published - self._delivered - self._failed - self._drops.dropped - len(waiting)
        # What librdkafka's full queue would refuse is dropped unbuilt: a broker down costs the serving process nothing
        # more than the queueing.
        room = self.buffer_size - held
        for topic, build, key, stamp in waiting:
            if room <= 0:
                self._count_drop(f"the queue is full ({self.buffer_size})", key, topic.name)
                continue
            room -= 1
            try:
                value = self._encoder.encode(make_envelope(topic, build(), self.dag_run_id, event_time=stamp))
            except Exception:
                with self._lock:
                    self._failed += 1
                    self._unbuilt += 1
                    unbuilt = self._unbuilt
                if unbuilt == 1 or unbuilt % 1000 == 0:  # a payload that never builds would log every message
                    log.exception("event key=%s to %s could not be built (%d so far)", key, topic.name, unbuilt)
                continue
            self._produce(topic, value, key)

    def _produce(self, topic: Topic, value: bytes, key: str) -> None:
        try:
            self._producer.produce(topic.name, value, key.encode(), on_delivery=self._on_delivery)
        except BufferError:
            self._count_drop(f"the queue is full ({self.buffer_size})", key, topic.name)

    def _on_delivery(self, error: Any, message: Any) -> None:
        from confluent_kafka import KafkaError

        if error is None:
            with self._lock:
                self._delivered += 1
            if self._errors_reported:
                self._errors_reported.clear()
            return
        key = (message.key() or b"").decode(errors="replace")
        if error.code() == KafkaError._MSG_TIMED_OUT:
            self._count_drop(f"undelivered after {self.delivery_timeout_ms} ms", key, message.topic(), sent=True)
            return
        with self._lock:
            self._failed += 1
        log.error("event key=%s to %s failed: %s", key, message.topic(), error)

    def _on_client_error(self, error: Any) -> None:
        # Logged once per kind of error until a message gets through: a broker that stays down alternates between
        # "connection refused" and "all brokers down" at every reconnect.
        self._last_error = f"Kafka at {self.bootstrap_servers}: {error.str()}"
        if error.code() not in self._errors_reported:
            self._errors_reported.add(error.code())
            log.warning("%s (messages wait in the queue)", self._last_error)

    def _count_drop(self, why: str, key: str, topic: str, *, sent: bool = False) -> None:
        with self._lock:
            if not sent:
                self._refused += 1
            since, dropped = self._drops.count(), self._drops.dropped
        if since:
            log.warning(
                "%s: dropped %d message(s) up to key=%s on %s, %d dropped in total", why, since, key, topic, dropped
            )


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
    "DEFAULT_LINGER_MS",
    "EventPublishError",
    "EventPublisher",
    "PublishStats",
    "SyncPublisher",
    "librdkafka_options",
    "publish_event",
    "report_close",
    "sync_publisher",
]
