"""ml.events.consumer with a fake Kafka consumer: topics are read without a consumer group from their end or beginning,
messages become one readable line each, and `tail` stops after N messages or an idle time measured on its clock."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from ml.events import consumer as consumer_module
from ml.events.consumer import format_message, open_topic, tail
from ml.events.envelope import make_envelope
from ml.events.publisher import EventPublishError
from ml.settings import KafkaSettings
from ml.topics import PIPELINE_EVENTS, TRAINING_METRICS
from tests.support.fake_clock import FakeClock

KAFKA = KafkaSettings("kafka.invalid:9092")
METRICS = {"run_name": "tune-1", "trial_id": "t0001", "epoch": 3, "metrics": {"val_accuracy": 0.9}, "params": {}}


# --- format_message --------------------------------------------------------------------------------------------------


def test_format_message_is_one_readable_line() -> None:
    envelope = make_envelope(TRAINING_METRICS, METRICS)
    line = format_message(b"tune-1:t0001:3", json.dumps(envelope).encode())
    assert line.split()[:3] == [envelope["event_time"], "training_metrics.v1", "tune-1:t0001:3"]
    assert '"val_accuracy":0.9' in line and "INVALID" not in line and "\n" not in line


def test_format_message_says_what_is_wrong() -> None:
    envelope = make_envelope(TRAINING_METRICS, METRICS)
    invalid = format_message(b"k", json.dumps({**envelope, "event_id": "x"}).encode())
    assert "INVALID: invalid training_metrics.v1 event: $.event_id" in invalid
    assert "NOT-JSON" in format_message(None, b"\xff\x00")
    assert "NOT-AN-ENVELOPE" in format_message(b"k", b"[1, 2]")
    assert format_message(b"k", None).split() == ["-", "NO-VALUE", "k"]  # a tombstone


def test_long_payloads_are_cut() -> None:
    envelope = make_envelope(PIPELINE_EVENTS, {"dag_id": "d", "task_id": None, "event": "run_summary", "details": {}})
    envelope["payload"]["details"] = {"text": "x" * 1000}
    line = format_message(None, json.dumps(envelope).encode(), max_payload_chars=50)
    assert line.endswith("...") and len(line.split("  ")[-1]) == 50


# --- open_topic ------------------------------------------------------------------------------------------------------


class FakeConsumer:
    def __init__(self, partitions: set[int] | None, batches: list[list[Any]] | None = None, clock: Any = None) -> None:
        self.partitions = partitions
        self.batches = list(batches or [])
        self.clock = clock
        self.assigned: list[Any] = []
        self.seeks: list[tuple[str, tuple[Any, ...]]] = []
        self.positions: list[Any] = []
        self.closed = False
        self.polls = 0

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def seek_to_end(self, *partitions: Any) -> None:
        self.seeks.append(("end", partitions))

    def seek_to_beginning(self, *partitions: Any) -> None:
        self.seeks.append(("beginning", partitions))

    def position(self, partition: Any) -> int:
        self.positions.append(partition)
        return 0

    def poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        self.polls += 1
        batch = self.batches.pop(0) if self.batches else []
        if not batch and self.clock is not None:
            self.clock.advance(timeout_ms / 1000)  # an empty poll waits its timeout (on the fake clock)
        return {"tp": batch} if batch else {}

    def close(self, **options: Any) -> None:
        self.closed = True


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    """Every consumer open_topic builds, with its options; tests put the next consumer in `made[0]`'s place."""
    made: list[tuple[Any, dict[str, Any]]] = []

    def kafka_consumer(kafka: KafkaSettings, **options: Any) -> Any:
        made.append((kafka, options))
        return next_consumer.pop(0)

    next_consumer: list[Any] = []
    monkeypatch.setattr(consumer_module, "kafka_consumer", kafka_consumer)
    made.append(("queue", {"next": next_consumer}))
    return made


def queue_consumer(consumers: list[tuple[Any, dict[str, Any]]], fake: FakeConsumer) -> None:
    consumers[0][1]["next"].append(fake)


def test_open_topic_assigns_every_partition_at_the_end(consumers: list[tuple[Any, dict[str, Any]]]) -> None:
    fake = FakeConsumer({2, 0, 1})
    queue_consumer(consumers, fake)
    assert open_topic(KAFKA, "topic-a", client_id="c") is fake
    _, (kafka, options) = consumers
    assert kafka == KAFKA and options == {"group_id": None, "enable_auto_commit": False, "client_id": "c"}
    assert [(tp.topic, tp.partition) for tp in fake.assigned] == [("topic-a", 0), ("topic-a", 1), ("topic-a", 2)]
    assert fake.seeks == [("end", tuple(fake.assigned))]
    assert fake.positions == fake.assigned  # "the end" is resolved before returning: nothing later is missed
    assert not fake.closed


def test_open_topic_from_the_beginning(consumers: list[tuple[Any, dict[str, Any]]]) -> None:
    fake = FakeConsumer({0})
    queue_consumer(consumers, fake)
    open_topic(KAFKA, "topic-a", from_beginning=True)
    assert fake.seeks[0][0] == "beginning"


@pytest.mark.parametrize("partitions", [None, set()])
def test_a_missing_topic_is_a_lookup_error_and_the_consumer_is_closed(
    consumers: list[tuple[Any, dict[str, Any]]], partitions: set[int] | None
) -> None:
    fake = FakeConsumer(partitions)
    queue_consumer(consumers, fake)
    with pytest.raises(LookupError, match=r"topic 'nope' on kafka\.invalid:9092 does not exist or this client may not"):
        open_topic(KAFKA, "nope")
    assert fake.closed


def test_a_topic_the_user_may_not_describe_looks_missing_and_the_error_says_so(
    consumers: list[tuple[Any, dict[str, Any]]],
) -> None:
    """A broker with ACLs lists no partition of a topic its user may not describe: it may exist all the same."""
    fake = FakeConsumer(set())
    queue_consumer(consumers, fake)
    serving = KafkaSettings("kafka.invalid:9092", username="serving", password="s")
    with pytest.raises(LookupError, match=r"does not exist or user 'serving' may not describe it"):
        open_topic(serving, "mlops.pipeline.events.v1")
    assert fake.closed


# --- tail ------------------------------------------------------------------------------------------------------------


def record(epoch: int, timestamp: int, partition: int = 0, offset: int = 0) -> Any:
    envelope = make_envelope(TRAINING_METRICS, {**METRICS, "epoch": epoch})
    key = f"tune-1:t0001:{epoch}".encode()
    return SimpleNamespace(
        key=key, value=json.dumps(envelope).encode(), timestamp=timestamp, partition=partition, offset=offset
    )


def test_tail_writes_lines_in_time_order_and_stops_after_max_messages(
    consumers: list[tuple[Any, dict[str, Any]]],
) -> None:
    fake = FakeConsumer({0, 1}, [[record(2, 300, 1), record(0, 100, 0), record(1, 200, 0)], [record(3, 400)]])
    queue_consumer(consumers, fake)
    lines: list[str] = []
    assert tail(KAFKA, "topic-a", from_beginning=True, max_messages=2, write=lines.append) == 2
    assert [line.split()[2] for line in lines] == ["tune-1:t0001:0", "tune-1:t0001:1"]
    assert fake.closed and fake.polls == 1
    assert consumers[1][1]["client_id"] == "mlops-events-tail" and fake.seeks[0][0] == "beginning"


def test_tail_stops_after_its_idle_timeout_on_its_clock(consumers: list[tuple[Any, dict[str, Any]]]) -> None:
    clock = FakeClock()
    fake = FakeConsumer({0}, [[record(0, 1)], [], [record(1, 2)]], clock=clock)
    queue_consumer(consumers, fake)
    lines: list[str] = []
    started = clock.monotonic()
    assert tail(KAFKA, "topic-a", timeout_s=10, write=lines.append, clock=clock) == 2
    assert len(lines) == 2 and fake.closed
    # The idle time restarts with each message: 0.5 s of polling before the second one, then 10 s without any.
    assert clock.monotonic() - started == pytest.approx(10.5)


def test_tail_without_limits_follows_until_interrupted(consumers: list[tuple[Any, dict[str, Any]]]) -> None:
    fake = FakeConsumer({0}, [[record(0, 1)], [record(1, 2)]])
    queue_consumer(consumers, fake)
    lines: list[str] = []

    def write(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tail(KAFKA, "topic-a", write=write)
    assert fake.closed


def test_an_unreachable_kafka_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafka.errors import KafkaConnectionError

    def unreachable(kafka: KafkaSettings, topic: str, **options: Any) -> Any:
        raise KafkaConnectionError("no broker")

    monkeypatch.setattr(consumer_module, "open_topic", unreachable)
    with pytest.raises(EventPublishError, match=r"Kafka is unreachable at kafka\.invalid:9092"):
        tail(KAFKA, "topic-a", write=print)
