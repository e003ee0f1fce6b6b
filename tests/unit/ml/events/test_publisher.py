"""ml.events.publisher with a fake Kafka producer: EventPublisher buffers without blocking its caller, delivers in
order, re-sends what timed out, drops the oldest when full, and gives up at close()'s deadline; publish_event sends
one event and fails loudly. Assertions are on counts, order and state, never on how long something took; waits are
bounded polls for an observable state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ml.events.envelope import EventValidationError, validate_envelope
from ml.events.publisher import EventPublisher, EventPublishError, PublishStats, publish_event
from ml.settings import KafkaSettings
from ml.topics import PIPELINE_EVENTS, TRAINING_METRICS
from tests.unit.ml.events.samples import METRICS, PIPELINE

KAFKA = KafkaSettings("fake:9092")


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """A bounded poll for an observable condition."""
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return True
        pause.wait(0.01)
    return predicate()


class FakeFuture:
    """Like kafka-python's Future: a callback added after the outcome runs at once."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.errbacks: list[Any] = []
        self.outcome: tuple[str, Any] | None = None

    def add_callback(self, fn: Any, *args: Any) -> FakeFuture:
        self.callbacks.append(lambda value: fn(*args, value))
        self._run()
        return self

    def add_errback(self, fn: Any, *args: Any) -> FakeFuture:
        self.errbacks.append(lambda error: fn(*args, error))
        self._run()
        return self

    def succeed(self) -> None:
        self.outcome = ("ok", "metadata")
        self._run()

    def fail(self, error: BaseException) -> None:
        self.outcome = ("error", error)
        self._run()

    def _run(self) -> None:
        if self.outcome is None:
            return
        kind, value = self.outcome
        handlers, self.callbacks, self.errbacks = (self.callbacks if kind == "ok" else self.errbacks), [], []
        for handler in handlers:
            handler(value)


class RetriableTimeout(Exception):
    retriable = True


class FakeProducer:
    """Acknowledges on flush (or at once with auto_ack); `fail_next` makes the next deliveries fail with an error."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.unacked: list[tuple[FakeFuture, str, bytes, dict[str, Any]]] = []

    def send(self, topic: str, key: bytes, value: dict[str, Any]) -> FakeFuture:
        if self.broker.send_error is not None:
            raise self.broker.send_error
        future = FakeFuture()
        self.unacked.append((future, topic, key, value))
        if self.broker.auto_ack:
            self._settle()
        return future

    def _settle(self) -> None:
        pending, self.unacked = self.unacked, []
        for future, topic, key, value in pending:
            if self.broker.fail_next:
                self.broker.fail_next -= 1
                future.fail(self.broker.failure)
            else:
                self.broker.received.append((topic, key.decode(), value))
                future.succeed()

    def flush(self, timeout: float | None = None) -> None:
        self._settle()

    def close(self, timeout: float | None = None) -> None:
        self.broker.closed += 1


class FakeBroker:
    def __init__(self) -> None:
        self.up = threading.Event()
        self.up.set()
        self.connects = 0
        self.connect_attempts = 0
        self.closed = 0
        self.auto_ack = True
        self.fail_next = 0
        self.failure: BaseException = RetriableTimeout("delivery timed out")
        self.send_error: BaseException | None = None
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        self.hold_connect: threading.Event | None = None  # set: connect() waits for it
        self.connecting = threading.Event()
        self.producers: list[FakeProducer] = []

    def connect(self) -> FakeProducer:
        self.connect_attempts += 1
        self.connecting.set()
        if self.hold_connect is not None:
            assert self.hold_connect.wait(30)
        if not self.up.is_set():
            raise TimeoutError("KafkaTimeoutError: bootstrap timed out (fake)")
        self.connects += 1
        self.producers.append(FakeProducer(self))
        return self.producers[-1]


def publisher(broker: FakeBroker, **kwargs: Any) -> EventPublisher:
    class Fake(EventPublisher):
        reconnect_backoff_s = (0.01, 0.05)
        drop_log_each = 3
        drop_log_interval_s = 3600.0  # the summary never comes due within a test

        def _new_producer(self) -> Any:
            return broker.connect()

    return Fake(KAFKA, **kwargs)


def metrics_payload(epoch: int) -> dict[str, Any]:
    return {**METRICS, "epoch": epoch}


def test_publisher_delivers_in_order_and_counts() -> None:
    broker = FakeBroker()
    pub = publisher(broker, dag_run_id="run-1")
    for epoch in range(20):
        pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"tune-1:t0001:{epoch}")
    stats = pub.close(timeout_s=10)
    assert stats == PublishStats(sent=20, delivered=20, failed=0, dropped=0, pending=0)
    assert [key for _, key, _ in broker.received] == [f"tune-1:t0001:{e}" for e in range(20)]
    topic, _, envelope = broker.received[0]
    assert topic == TRAINING_METRICS.name and envelope["dag_run_id"] == "run-1"
    validate_envelope(envelope, TRAINING_METRICS)
    assert broker.closed == 1 and pub.bootstrap_servers == "fake:9092"


def test_publish_returns_while_the_connection_is_still_being_made() -> None:
    """The caller never waits for Kafka: 25 publishes complete while the only thread that can connect is stuck."""
    broker = FakeBroker()
    broker.hold_connect = threading.Event()
    pub = publisher(broker, buffer_size=100)
    pub.publish(TRAINING_METRICS, metrics_payload(0), key="r:t:0")
    assert broker.connecting.wait(10)  # the background thread is inside connect(), and stays there
    caller = threading.Thread(
        target=lambda: [pub.publish(TRAINING_METRICS, metrics_payload(e), key=f"r:t:{e}") for e in range(1, 25)]
    )
    caller.start()
    caller.join(10)
    assert not caller.is_alive(), "publish() waited for the connection"
    assert pub.stats() == PublishStats(sent=0, delivered=0, failed=0, dropped=0, pending=25)
    broker.hold_connect.set()
    assert pub.close(timeout_s=10) == PublishStats(sent=25, delivered=25, failed=0, dropped=0, pending=0)


def test_while_the_broker_is_down_the_buffer_is_bounded_and_drops_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker()
    broker.up.clear()
    pub = publisher(broker, buffer_size=10)
    with caplog.at_level(logging.WARNING, logger="ml.events"):
        for epoch in range(25):
            pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
        assert wait_for(lambda: broker.connect_attempts >= 2)  # it keeps trying
        stats = pub.stats()
        assert (stats.sent, stats.delivered, stats.dropped, stats.pending) == (0, 0, 15, 10)
    drops = [r.getMessage() for r in caplog.records if "event buffer full" in r.getMessage()]
    assert len(drops) == 3  # the first ones one by one (drop_log_each), then no more than a summary per interval
    assert "up to key=r:t:0 on mlops.training.metrics.v1, 1 dropped in total" in drops[0]
    assert "key=r:t:2" in drops[2]

    # The broker comes back: the 10 newest messages (the oldest were dropped) are delivered, in order.
    broker.up.set()
    assert wait_for(lambda: pub.stats().delivered == 10)
    with caplog.at_level(logging.WARNING, logger="ml.events"):
        stats = pub.close(timeout_s=10)
    assert stats == PublishStats(sent=10, delivered=10, failed=0, dropped=15, pending=0)
    assert [key for _, key, _ in broker.received] == [f"r:t:{e}" for e in range(15, 25)]
    assert "closed with 10 delivered, 15 dropped, 0 failed, 0 undelivered" in caplog.text


def test_close_gives_up_at_its_deadline_when_the_broker_stays_down(caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker()
    broker.up.clear()
    pub = publisher(broker)
    for epoch in range(3):
        pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
    assert wait_for(lambda: broker.connect_attempts >= 1)
    before = broker.connect_attempts
    with caplog.at_level(logging.WARNING, logger="ml.events"):
        stats = pub.close(timeout_s=0.3)
    assert (stats.pending, stats.delivered, stats.sent) == (3, 0, 0)
    assert "3 undelivered (last error: cannot connect to Kafka at fake:9092" in caplog.text
    # It kept its back-off until the deadline and then stopped: no burst of attempts, no thread left behind.
    assert broker.connect_attempts - before < 100
    assert wait_for(lambda: not pub._thread.is_alive())
    with pytest.raises(RuntimeError, match="after close"):
        pub.publish(TRAINING_METRICS, metrics_payload(9), key="late")


def test_timed_out_deliveries_go_back_to_the_buffer_and_are_redelivered() -> None:
    broker = FakeBroker()
    broker.fail_next = 3  # the first three deliveries time out (retriable)
    pub = publisher(broker)
    for epoch in range(5):
        pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
    stats = pub.close(timeout_s=10)
    assert (stats.delivered, stats.failed, stats.dropped, stats.pending) == (5, 0, 0, 0)
    assert stats.sent == 8  # three were sent twice
    assert sorted(key for _, key, _ in broker.received) == [f"r:t:{e}" for e in range(5)]
    # A re-delivered message keeps its event id: consumers recognise duplicates.
    assert len({envelope["event_id"] for _, _, envelope in broker.received}) == 5


def test_a_timed_out_delivery_is_dropped_when_the_buffer_filled_up_meanwhile() -> None:
    broker = FakeBroker()
    broker.auto_ack = False
    pub = publisher(broker, buffer_size=2)
    pub.publish(TRAINING_METRICS, metrics_payload(0), key="r:t:0")
    assert wait_for(lambda: pub.stats().sent == 1)  # r:t:0 is in flight, not acknowledged
    broker.send_error = TimeoutError("metadata timeout")
    broker.hold_connect = threading.Event()
    pub.publish(TRAINING_METRICS, metrics_payload(1), key="r:t:1")  # its send fails: the thread reconnects ...
    assert wait_for(lambda: broker.connect_attempts == 2)  # ... and stays inside connect()
    pub.publish(TRAINING_METRICS, metrics_payload(2), key="r:t:2")  # the buffer is full now
    [(future, _, key, _)] = broker.producers[0].unacked
    assert key == b"r:t:0"
    future.fail(RetriableTimeout("delivery timed out"))  # it would go back to the front: it is the oldest, dropped
    assert pub.stats() == PublishStats(sent=1, delivered=0, failed=0, dropped=1, pending=2)
    broker.send_error = None
    broker.hold_connect.set()
    broker.auto_ack = True
    assert pub.close(timeout_s=10) == PublishStats(sent=3, delivered=2, failed=0, dropped=1, pending=0)
    assert [key for _, key, _ in broker.received] == ["r:t:1", "r:t:2"]


def test_non_retriable_failures_are_counted_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker()
    broker.fail_next = 2
    broker.failure = ValueError("MessageSizeTooLarge")
    pub = publisher(broker)
    with caplog.at_level(logging.ERROR, logger="ml.events"):
        for epoch in range(4):
            pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
        stats = pub.close(timeout_s=10)
    assert (stats.sent, stats.delivered, stats.failed, stats.pending) == (4, 2, 2, 0)
    assert "MessageSizeTooLarge" in caplog.text and "r:t:0" in caplog.text


def test_a_send_error_reconnects_and_keeps_the_order() -> None:
    broker = FakeBroker()
    broker.send_error = TimeoutError("metadata timeout")
    pub = publisher(broker)
    for epoch in range(4):
        pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
    assert wait_for(lambda: broker.connects >= 2)
    assert pub.stats().pending == 4
    broker.send_error = None
    stats = pub.close(timeout_s=10)
    assert (stats.delivered, stats.pending) == (4, 0)
    assert [key for _, key, _ in broker.received] == [f"r:t:{e}" for e in range(4)]


def test_an_invalid_payload_fails_at_the_call_site_and_is_not_buffered() -> None:
    broker = FakeBroker()
    pub = publisher(broker)
    with pytest.raises(EventValidationError):
        pub.publish(TRAINING_METRICS, {"run_name": "r"}, key="r")
    assert pub.close(timeout_s=2) == PublishStats(0, 0, 0, 0, 0)


def test_unacknowledged_messages_are_flushed_at_close() -> None:
    broker = FakeBroker()
    broker.auto_ack = False  # acknowledged only by flush()
    pub = publisher(broker)
    for epoch in range(3):
        pub.publish(PIPELINE_EVENTS, {**PIPELINE, "details": {"n": epoch}}, key=f"k{epoch}")
    assert wait_for(lambda: pub.stats().sent == 3)
    assert pub.stats().pending == 3
    # close() leaves in-flight deliveries to the producer until its deadline (a timed-out one may come back to be sent
    # again), then flushes: this producer acknowledges only then.
    assert pub.close(timeout_s=0.2) == PublishStats(3, 3, 0, 0, 0)


def test_every_message_ends_in_exactly_one_count() -> None:
    broker = FakeBroker()
    broker.fail_next = 4
    broker.failure = ValueError("rejected")
    with publisher(broker, buffer_size=5) as pub:
        for epoch in range(30):
            pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
    stats = pub.stats()
    assert stats.delivered + stats.failed + stats.dropped + stats.pending == 30 and stats.pending == 0


def test_buffer_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        EventPublisher(KAFKA, buffer_size=0)


# --- publish_event ---------------------------------------------------------------------------------------------------


class SyncProducer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []
        self.closed: list[float | None] = []

    def send(self, topic: str, key: bytes, value: dict[str, Any]) -> Any:
        self.sent.append((topic, key, value))
        producer = self

        class Result:
            def get(self, timeout: float) -> None:
                if producer.error is not None:
                    raise producer.error

        return Result()

    def close(self, timeout: float | None = None) -> None:
        self.closed.append(timeout)


def test_publish_event_sends_one_validated_event_and_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    producer, options = SyncProducer(), []
    monkeypatch.setattr("ml.events.sync.kafka_producer", lambda kafka, **kw: options.append((kafka, kw)) or producer)
    envelope = publish_event(KAFKA, PIPELINE_EVENTS, PIPELINE, "dag:r:-:run_succeeded", dag_run_id="r", timeout_s=3)
    assert producer.sent == [(PIPELINE_EVENTS.name, b"dag:r:-:run_succeeded", envelope)]
    assert envelope["dag_run_id"] == "r" and producer.closed == [3]
    [(kafka, kw)] = options
    assert kafka == KAFKA and kw["acks"] == "all" and kw["bootstrap_timeout_ms"] == 3000
    # the producer's own retries never write an event twice (and a setting that would disable that raises instead)
    assert kw["enable_idempotence"] is True
    validate_envelope(envelope, PIPELINE_EVENTS)


def test_publish_event_errors_name_the_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    def unreachable(kafka: KafkaSettings, **kw: Any) -> Any:
        raise KafkaConnectionError("no broker answered")

    monkeypatch.setattr("ml.events.sync.kafka_producer", unreachable)
    with pytest.raises(EventPublishError, match=r"Kafka is unreachable at fake:9092 \(no answer within 2 s\)"):
        publish_event(KAFKA, PIPELINE_EVENTS, PIPELINE, "k", timeout_s=2)

    refusing = SyncProducer(KafkaTimeoutError("no ack"))
    monkeypatch.setattr("ml.events.sync.kafka_producer", lambda kafka, **kw: refusing)
    with pytest.raises(EventPublishError, match=r"Kafka at fake:9092 did not take the pipeline_event\.v1 event on"):
        publish_event(KAFKA, PIPELINE_EVENTS, PIPELINE, "k")
    assert refusing.closed  # closed on the error path too


def test_a_sync_publisher_sends_each_event_over_one_producer_and_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.events.envelope import make_envelope
    from ml.events.publisher import sync_publisher

    producer, options = SyncProducer(), []
    monkeypatch.setattr("ml.events.sync.kafka_producer", lambda kafka, **kw: options.append(kw) or producer)
    envelopes = [
        make_envelope(PIPELINE_EVENTS, PIPELINE, event_id=f"00000000-0000-4000-8000-00000000000{n}") for n in (1, 2)
    ]
    with sync_publisher(KAFKA, timeout_s=4, client_id="monitor") as publisher:
        for n, envelope in enumerate(envelopes):
            publisher.send(PIPELINE_EVENTS, envelope, f"k{n}")
        assert not producer.closed
    assert [(key, value["event_id"]) for _, key, value in producer.sent] == [
        (b"k0", envelopes[0]["event_id"]),
        (b"k1", envelopes[1]["event_id"]),
    ]
    assert [kw["client_id"] for kw in options] == ["monitor"] and producer.closed == [4]


def test_publish_event_refuses_an_invalid_payload_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    connected: list[Any] = []
    monkeypatch.setattr("ml.events.sync.kafka_producer", lambda kafka, **kw: connected.append(kw))
    with pytest.raises(EventValidationError):
        publish_event(KAFKA, PIPELINE_EVENTS, {"dag_id": "d"}, "k")
    assert connected == []


def test_a_drop_log_reports_the_first_drops_then_one_line_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.events import publisher

    now = [100.0]
    monkeypatch.setattr(publisher.time, "monotonic", lambda: now[0])
    drops = publisher.DropLog(each=2, interval_s=5.0)
    reported = [drops.count() for _ in range(4)]  # two one by one, then nothing until the interval has passed
    now[0] += 5.0
    reported.append(drops.count())  # the three since the last line
    assert reported == [1, 1, 0, 0, 3] and drops.dropped == 5
