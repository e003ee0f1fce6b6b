"""Reading the recent messages of a topic: every partition from the first offset at or after a time up to its end
offset taken when the reading starts, bounded by a message cap and a deadline (the page must answer in seconds)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ml.clock import SYSTEM_CLOCK, Clock
from ml.events.envelope import EventValidationError, validate_envelope
from ml.settings import KafkaSettings
from ml.topics import Topic

POLL_MS = 500


@dataclass(frozen=True)
class Event:
    """A valid message: its envelope's event time (epoch seconds) and payload."""

    time: float
    payload: dict[str, Any]


@dataclass
class TopicRead:
    """What was read of a topic since `since` (epoch seconds), and how the reading was bounded."""

    topic: str
    since: float
    events: list[Event] = field(default_factory=list)
    malformed: int = 0  # messages that were not valid envelopes of the topic's schema: skipped
    skipped: int = 0  # the oldest messages since `since` left unread because of the cap
    timed_out: bool = False  # the deadline came before the end offsets
    error: str | None = None  # the topic could not be read at all (Kafka down, topic missing)


def parse_time(text: str) -> float:
    """Epoch seconds of an ISO-8601 UTC time as the envelopes write it (2026-12-03T10:00:00.123Z)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_message(value: bytes | None, topic: Topic) -> Event | None:
    """The event of one message, or None when it is not a valid envelope of `topic`'s schema."""
    if value is None:
        return None
    try:
        envelope = json.loads(value)
        validate_envelope(envelope, topic)
        return Event(parse_time(envelope["event_time"]), envelope["payload"])
    except (ValueError, EventValidationError, KeyError, TypeError):  # JSONDecodeError and UnicodeError are ValueErrors
        return None


def capped_starts(starts: dict[Any, int], ends: dict[Any, int], cap: int) -> tuple[dict[Any, int], int]:
    """Start offsets moved forward so that at most about `cap` messages remain, taken from each partition in
    proportion to its share: the newest are kept (what the page is for); returns the starts and how many are left
    out."""
    counts = {p: max(0, ends[p] - starts[p]) for p in starts}
    total = sum(counts.values())
    if total <= cap:
        return dict(starts), 0
    moved = {p: ends[p] - math.floor(cap * counts[p] / total) for p in starts}
    return moved, sum(moved[p] - starts[p] for p in starts)


def read_since(
    kafka: KafkaSettings,
    topic: Topic,
    since: float,
    *,
    max_messages: int,
    timeout_s: float = 10.0,
    clock: Clock = SYSTEM_CLOCK,
    open_consumer: Callable[..., Any] | None = None,
) -> TopicRead:
    """The valid messages of `topic` published since `since` (by Kafka's timestamps; the events carry their own
    event times), at most `max_messages` of them (the newest), read for at most `timeout_s` seconds. A topic that
    cannot be read gives a TopicRead with `error` set, not an exception: the page says so."""
    from kafka.errors import KafkaError

    from ml.clients import close_quietly
    from ml.events.consumer import open_topic

    result = TopicRead(topic.name, since)
    deadline = clock.monotonic() + timeout_s
    try:
        consumer = (open_consumer or open_topic)(
            kafka, topic.name, client_id="mlops-monitoring-page", bootstrap_timeout_ms=int(timeout_s * 1000)
        )
    except (KafkaError, LookupError, OSError) as error:
        result.error = f"{type(error).__name__}: {error}"
        return result
    try:
        partitions = sorted(consumer.assignment(), key=lambda p: p.partition)
        # kafka-python's lookups wait up to their own timeout: within the deadline instead.
        lookup_ms = max(1, int((deadline - clock.monotonic()) * 1000))
        ends = consumer.end_offsets(partitions, timeout_ms=lookup_ms)
        found = consumer.offsets_for_times({p: int(since * 1000) for p in partitions}, timeout_ms=lookup_ms)
        # No offset at or after the time: nothing recent in that partition.
        starts = {p: found[p].offset if found.get(p) is not None else ends[p] for p in partitions}
        starts, result.skipped = capped_starts(starts, ends, max_messages)
        pending = {p for p in partitions if starts[p] < ends[p]}
        for p in partitions:
            consumer.seek(p, starts[p])
        read = 0  # capped_starts leaves at most max_messages offsets: this bound is a safety
        while pending and read < max_messages:
            left_ms = (deadline - clock.monotonic()) * 1000
            if left_ms <= 0:
                result.timed_out = True
                break
            for partition, records in consumer.poll(timeout_ms=int(min(POLL_MS, left_ms))).items():
                for record in records:
                    if record.offset >= ends.get(partition, 0) or read >= max_messages:
                        continue  # published after the reading started
                    read += 1
                    event = parse_message(record.value, topic)
                    if event is None:
                        result.malformed += 1
                    else:
                        result.events.append(event)
            # By position, not by the last record: a transaction's marker takes an offset and is never a record.
            pending = {p for p in pending if consumer.position(p) < ends[p]}
    except KafkaError as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        close_quietly(consumer)
    result.events.sort(key=lambda e: e.time)
    return result
