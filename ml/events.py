"""Versioned JSON events on Kafka: envelopes validated against ml/schemas/, a non-blocking publisher, a CLI tail.

Every message is one envelope (see the JSON Schemas in ml/schemas/, one per topic of ml/topics.py):
  {"schema": "training_metrics.v1", "event_id": uuid4, "event_time": ISO-8601 UTC, "dag_run_id": str | null,
   "producer": "host:pid/program", "payload": {...}}
Keys make re-deliveries recognisable: training metrics f"{run_name}:{trial_id}:{epoch}", pipeline events
f"{dag_id}:{dag_run_id}:{task_id}:{event}", promotions the registered model name.

`EventPublisher` never blocks its caller (training loops, Airflow tasks): `publish()` validates and appends to a bounded
buffer; one background thread owns the KafkaProducer, reconnects while the broker is down and delivers what waited.
`publish_event()` is the synchronous one-off form that fails loudly.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from ml.settings import Settings
from ml.topics import ALL_TOPICS, Topic

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
PIPELINE_EVENT_KINDS = (
    "task_started",
    "task_succeeded",
    "task_failed",
    "run_succeeded",
    "run_failed",
    "model_registered",
    "model_promoted",
    "model_rejected",
    "run_summary",
)


class EventValidationError(ValueError):
    """An envelope or payload does not match its JSON Schema; the message names the field and the rule."""


class EventPublishError(RuntimeError):
    """Kafka could not take an event; the message names the bootstrap servers."""


# ---------------------------------------------------------------------------------------------------------------------
# Schemas and envelopes


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema `ml/schemas/NAME.json` (NAME is a Topic.schema such as "training_metrics.v1")."""
    path = SCHEMA_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCHEMA_DIR.glob("*.json")))
        raise EventValidationError(f"unknown event schema {name!r} (known: {known})")
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


@cache
def _validator(name: str) -> Any:
    import jsonschema

    schema = load_schema(name)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def validate_envelope(envelope: Mapping[str, Any], topic: Topic | None = None) -> None:
    """Raise EventValidationError unless `envelope` is valid for its schema (and, if given, is `topic`'s schema)."""
    if not isinstance(envelope, Mapping):
        raise EventValidationError(f"an event envelope is a JSON object, got {type(envelope).__name__}")
    name = envelope.get("schema")
    if not isinstance(name, str):
        raise EventValidationError("envelope has no 'schema' name")
    if topic is not None and name != topic.schema:
        raise EventValidationError(f"topic {topic.name} carries {topic.schema} events, not {name}")
    validator = _validator(name)
    # is_valid is the fast path; the full error walk only runs for a bad event.
    if validator.is_valid(envelope):
        return
    errors = sorted(validator.iter_errors(envelope), key=lambda e: list(e.absolute_path))
    described = "; ".join(f"{_json_path(e.absolute_path)}: {e.message}" for e in errors[:5])
    raise EventValidationError(f"invalid {name} event: {described}")


def _json_path(path: Any) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in path]
    return "$" + "".join(parts)


def json_safe(value: Any) -> Any:
    """A copy of `value` that JSON can carry: non-finite floats -> None (JSON has no NaN), numpy/torch scalars ->
    Python numbers, tuples -> lists, other objects -> str."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item):
        try:
            return json_safe(item())
        except (TypeError, ValueError):
            pass
    return str(value)


@lru_cache(maxsize=1)
def producer_id() -> str:
    """Who sent an event: host:pid/program."""
    return f"{socket.gethostname()}:{os.getpid()}/{Path(sys.argv[0] or 'python').name}"


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_envelope(topic: Topic, payload: Mapping[str, Any], dag_run_id: str | None = None) -> dict[str, Any]:
    """Wrap `payload` in the versioned envelope of `topic` and validate it against the topic's JSON Schema."""
    envelope = {
        "schema": topic.schema,
        "event_id": str(uuid.uuid4()),
        "event_time": utc_now_iso(),
        "dag_run_id": dag_run_id,
        "producer": producer_id(),
        "payload": json_safe(payload),
    }
    # The hot topic (per-epoch metrics) has a hand-written check that only ever accepts what the schema accepts
    # (jsonschema costs ~50-100 us a message); anything it does not vouch for goes through the full validation.
    if not _fast_valid(topic, envelope):
        validate_envelope(envelope, topic)
    return envelope


def _fast_valid(topic: Topic, envelope: Mapping[str, Any]) -> bool:
    """True only if the envelope is certainly valid (make_envelope built its generated fields); False means
    "ask jsonschema"."""
    if topic.schema != "training_metrics.v1":
        return False
    dag_run_id = envelope["dag_run_id"]
    payload = envelope["payload"]
    if not (dag_run_id is None or type(dag_run_id) is str) or type(payload) is not dict or len(payload) != 5:
        return False
    run_name, trial_id, epoch = payload.get("run_name"), payload.get("trial_id"), payload.get("epoch")
    metrics, params = payload.get("metrics"), payload.get("params")
    if not (type(run_name) is str and run_name and type(trial_id) is str and trial_id):
        return False
    if not (type(epoch) is int and epoch >= 0 and type(params) is dict and type(metrics) is dict and metrics):
        return False
    return all(type(k) is str and k and (v is None or type(v) is float or type(v) is int) for k, v in metrics.items())


def training_metrics_key(run_name: str, trial_id: str, epoch: int) -> str:
    return f"{run_name}:{trial_id}:{epoch}"


def pipeline_event_key(dag_id: str, dag_run_id: str | None, task_id: str | None, event: str) -> str:
    return f"{dag_id}:{dag_run_id or '-'}:{task_id or '-'}:{event}"


def topic_by_name(name: str) -> Topic | None:
    """The pipeline topic with this name or schema name, or None."""
    return next((t for t in ALL_TOPICS if name in (t.name, t.schema)), None)


# ---------------------------------------------------------------------------------------------------------------------
# The non-blocking publisher


@dataclass(frozen=True)
class PublishStats:
    """Counts of one publisher: every message published ends in exactly one of delivered/failed/dropped/pending."""

    sent: int  # handed to the Kafka client (a message re-sent after a delivery timeout counts again)
    delivered: int  # acknowledged by the broker (acks=all)
    failed: int  # rejected by Kafka with a non-retriable error (logged with its key)
    dropped: int  # pushed out of the full buffer (logged with its key)
    pending: int  # still in the buffer or in flight


@dataclass
class _Message:
    topic: str
    key: bytes
    envelope: dict[str, Any]


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

    def __init__(
        self, bootstrap_servers: str | None = None, *, buffer_size: int = 10000, dag_run_id: str | None = None
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        self.bootstrap_servers = bootstrap_servers or Settings.from_env().kafka_bootstrap_servers
        self.buffer_size = buffer_size
        self.dag_run_id = dag_run_id
        self._buffer: deque[_Message] = deque()
        self._cond = threading.Condition()
        self._sent = self._delivered = self._failed = self._dropped = self._in_flight = 0
        self._closing = False
        self._abandon = False
        self._deadline = math.inf
        self._last_drop_log = 0.0
        self._drops_since_log = 0
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
                dropped=self._dropped,
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
        stats = self.stats()
        if stats.dropped or stats.failed or stats.pending:
            log.warning(
                "event publisher to %s closed with %d delivered, %d dropped, %d failed, %d undelivered%s",
                self.bootstrap_servers,
                stats.delivered,
                stats.dropped,
                stats.failed,
                stats.pending,
                f" (last error: {self._last_error})" if self._last_error else "",
            )
        return stats

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the background thread

    def _new_producer(self) -> Any:
        """A connected KafkaProducer; raises (KafkaTimeoutError after bootstrap_timeout_ms) if no broker answers."""
        from kafka import KafkaProducer
        from kafka.serializer import JsonSerializer

        return KafkaProducer(
            bootstrap_servers=self.bootstrap_servers.split(","),
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
        backoff = self.reconnect_backoff_s[0]
        try:
            while True:
                with self._cond:
                    while not self._buffer and not self._abandon and not self._done_closing():
                        self._cond.wait(max(self._deadline - time.monotonic(), 0.0) if self._closing else None)
                    if self._abandon or (not self._buffer and self._done_closing()):
                        break
                if producer is None:
                    try:
                        producer = self._new_producer()
                    except Exception as error:  # kafka-python 3 raises KafkaTimeoutError; keep trying
                        self._note_error(f"cannot connect to Kafka at {self.bootstrap_servers}: {error}")
                        self._sleep(backoff)
                        backoff = min(backoff * 2, self.reconnect_backoff_s[1])
                        continue
                    log.info("event publisher connected to %s", self.bootstrap_servers)
                    backoff = self.reconnect_backoff_s[0]
                if not self._send_batch(producer):
                    # The broker went away mid-send: start over with a fresh connection after a pause.
                    _close_quietly(producer)
                    producer = None
                    self._sleep(backoff)
                    backoff = min(backoff * 2, self.reconnect_backoff_s[1])
            if producer is not None and not self._abandon:
                producer.flush(timeout=max(self._deadline - time.monotonic(), 0.1))
        except Exception:
            log.exception("event publisher thread failed; %d messages pending", self.stats().pending)
        finally:
            if producer is not None:
                _close_quietly(producer, timeout=max(min(self._deadline - time.monotonic(), 5.0), 0.0))

    def _done_closing(self) -> bool:
        """Caller holds the lock. Closing ends when nothing is in flight or the close deadline passed. Not earlier:
        a message in flight while the broker is away times out and comes back to the buffer (see _on_failed), and it
        must be sent again if the broker returns before the deadline, not left behind by a flush that returned."""
        return self._closing and (self._in_flight == 0 or time.monotonic() >= self._deadline)

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
        self._dropped += 1
        self._drops_since_log += 1
        now = time.monotonic()
        if self._dropped <= self.drop_log_each or now - self._last_drop_log >= self.drop_log_interval_s:
            log.warning(
                "event buffer full (%d): dropped %d message(s) up to key=%s on %s, %d dropped in total",
                self.buffer_size,
                self._drops_since_log,
                message.key.decode(),
                message.topic,
                self._dropped,
            )
            self._drops_since_log = 0
            self._last_drop_log = now
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


def _close_quietly(producer: Any, timeout: float = 0.0) -> None:
    try:
        producer.close(timeout=timeout)
    except Exception as error:
        log.debug("closing the Kafka producer: %s", error)


# ---------------------------------------------------------------------------------------------------------------------
# One-off synchronous publishing


def publish_event(
    topic: Topic,
    payload: Mapping[str, Any],
    key: str,
    dag_run_id: str | None = None,
    timeout_s: float = 10,
    *,
    bootstrap_servers: str | None = None,
) -> dict[str, Any]:
    """Send one event and wait for the broker's acknowledgement; returns the envelope sent.
    Raises EventPublishError naming the bootstrap servers when Kafka is unreachable or rejects it."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from kafka.serializer import JsonSerializer

    envelope = make_envelope(topic, payload, dag_run_id)
    servers = bootstrap_servers or Settings.from_env().kafka_bootstrap_servers
    timeout_ms = max(int(timeout_s * 1000), 1000)
    try:
        producer = KafkaProducer(
            bootstrap_servers=servers.split(","),
            client_id="mlops-events-sync",
            acks="all",
            bootstrap_timeout_ms=timeout_ms,
            max_block_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            delivery_timeout_ms=timeout_ms,
            value_serializer=JsonSerializer(),
        )
    except KafkaError as error:
        raise EventPublishError(
            f"Kafka is unreachable at {servers} (no answer within {timeout_s:g} s; set KAFKA_BOOTSTRAP_SERVERS): "
            f"{error}"
        ) from error
    try:
        producer.send(topic.name, key=key.encode(), value=envelope).get(timeout=timeout_s)
    except KafkaError as error:
        raise EventPublishError(
            f"Kafka at {servers} did not take the {topic.schema} event on {topic.name}: {error}"
        ) from error
    finally:
        _close_quietly(producer, timeout=min(timeout_s, 5.0))
    return envelope


# ---------------------------------------------------------------------------------------------------------------------
# Reading: `python -m ml events tail TOPIC`


def format_message(key: bytes | None, value: bytes, *, max_payload_chars: int = 400) -> str:
    """One readable line for a Kafka message: event time, schema, key, compact payload (or why it is invalid)."""
    key_text = key.decode(errors="replace") if key is not None else "-"
    try:
        envelope = json.loads(value)
    except ValueError:
        return f"{'-':24}  {'NOT-JSON':22}  {key_text}  {value[:max_payload_chars]!r}"
    try:
        validate_envelope(envelope)
        status = ""
    except EventValidationError as error:
        status = f"  INVALID: {error}"
    if not isinstance(envelope, dict):
        return f"{'-':24}  {'NOT-AN-ENVELOPE':22}  {key_text}  {json.dumps(envelope)[:max_payload_chars]}"
    payload = json.dumps(envelope.get("payload"), separators=(",", ":"), sort_keys=True)
    if len(payload) > max_payload_chars:
        payload = payload[: max_payload_chars - 3] + "..."
    return f"{envelope.get('event_time', '-')!s:24}  {envelope.get('schema', '-')!s:22}  {key_text}  {payload}{status}"


def tail(
    topic_name: str,
    *,
    from_beginning: bool = False,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    bootstrap_servers: str | None = None,
    write: Callable[[str], None] | None = None,
) -> int:
    """Follow a topic (no consumer group: nothing is committed) and write one line per message.
    Stops after `max_messages`, or after `timeout_s` seconds without a message; returns how many were read."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    write = write or (lambda line: print(line, flush=True))
    servers = bootstrap_servers or Settings.from_env().kafka_bootstrap_servers
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=servers.split(","), client_id="mlops-events-tail", bootstrap_timeout_ms=10000
        )
    except KafkaError as error:
        raise EventPublishError(f"Kafka is unreachable at {servers}: {error}") from error
    try:
        partitions = consumer.partitions_for_topic(topic_name)
        if not partitions:
            raise LookupError(f"topic {topic_name!r} does not exist on {servers}")
        assigned = [TopicPartition(topic_name, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*assigned)
        count = 0
        idle_since = time.monotonic()
        while max_messages is None or count < max_messages:
            records = consumer.poll(timeout_ms=500)
            batch = sorted(
                (r for rs in records.values() for r in rs), key=lambda r: (r.timestamp, r.partition, r.offset)
            )
            for record in batch:
                write(format_message(record.key, record.value))
                count += 1
                if max_messages is not None and count >= max_messages:
                    break
            if batch:
                idle_since = time.monotonic()
            elif timeout_s is not None and time.monotonic() - idle_since >= timeout_s:
                break
        return count
    finally:
        consumer.close()


def _cli_tail(args: argparse.Namespace) -> int:
    topic = topic_by_name(args.topic)
    tail(
        topic.name if topic else args.topic,
        from_beginning=args.from_beginning,
        max_messages=args.max_messages,
        timeout_s=args.timeout_s,
    )
    return 0


def _cli_schemas(args: argparse.Namespace) -> dict[str, Any]:
    return {
        topic.schema: {
            "topic": topic.name,
            "file": str((SCHEMA_DIR / f"{topic.schema}.json").relative_to(SCHEMA_DIR.parent.parent)),
            "title": load_schema(topic.schema).get("title"),
            "partitions": topic.partitions,
            "retention_days": topic.retention_ms / 86_400_000,
        }
        for topic in ALL_TOPICS
    }


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("events", help="Kafka events: follow a topic, list the event schemas")
    commands = parser.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    tail_parser = commands.add_parser("tail", help="print a topic's events as readable lines")
    tail_parser.add_argument("topic", help="topic or schema name, e.g. mlops.training.metrics.v1")
    tail_parser.add_argument("--from-beginning", action="store_true", help="start at the oldest retained message")
    tail_parser.add_argument("--max-messages", type=int, default=None, help="stop after N messages")
    tail_parser.add_argument("--timeout-s", type=float, default=None, help="stop after S seconds without a message")
    tail_parser.set_defaults(handler=_cli_tail, writes_stdout=True)
    schemas_parser = commands.add_parser("schemas", help="list the event schemas and their topics")
    schemas_parser.set_defaults(handler=_cli_schemas)
