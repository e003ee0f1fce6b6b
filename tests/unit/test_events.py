"""Event envelopes against their JSON Schemas, and the publisher's buffering with a fake Kafka producer."""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest

from ml import events
from ml.events import EventPublisher, EventValidationError, make_envelope, validate_envelope
from ml.topics import ALL_TOPICS, MODEL_PROMOTED, PIPELINE_EVENTS, TRAINING_METRICS

pytestmark = pytest.mark.unit

METRICS = {
    "run_name": "tune-1",
    "trial_id": "t0001",
    "epoch": 3,
    "metrics": {"val_loss": 0.25, "val_accuracy": 0.9},
    "params": {"lr": 0.001, "hidden_size": 64},
}
PIPELINE = {"dag_id": "mlops_training", "task_id": "tune_models", "event": "task_succeeded", "details": {"s": 12.5}}
PROMOTED = {
    "model_name": "iris-classification",
    "version": "3",
    "alias": "champion",
    "previous_version": "2",
    "metric": "accuracy",
    "value": 0.97,
    "previous_value": 0.95,
    "reason": "better by 0.02",
}


# ---------------------------------------------------------------------------------------------------------------------
# Schemas and envelopes


def test_every_topic_has_a_valid_json_schema() -> None:
    import jsonschema

    for topic in ALL_TOPICS:
        schema = events.load_schema(topic.schema)
        jsonschema.validators.validator_for(schema).check_schema(schema)
        assert schema["properties"]["schema"]["const"] == topic.schema


@pytest.mark.parametrize(
    ("topic", "payload"), [(TRAINING_METRICS, METRICS), (PIPELINE_EVENTS, PIPELINE), (MODEL_PROMOTED, PROMOTED)]
)
def test_make_envelope_is_valid_and_complete(topic: Any, payload: dict[str, Any]) -> None:
    envelope = make_envelope(topic, payload, dag_run_id="manual__2026-01-01")
    assert envelope["schema"] == topic.schema
    assert uuid.UUID(envelope["event_id"]).version == 4
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", envelope["event_time"])
    assert envelope["dag_run_id"] == "manual__2026-01-01"
    assert envelope["producer"]
    assert envelope["payload"] == payload
    validate_envelope(json.loads(json.dumps(envelope)), topic)  # survives the JSON round trip


def test_event_ids_are_unique() -> None:
    assert len({make_envelope(PIPELINE_EVENTS, PIPELINE)["event_id"] for _ in range(50)}) == 50


@pytest.mark.parametrize(
    ("topic", "payload", "complaint"),
    [
        (TRAINING_METRICS, {**METRICS, "epoch": "3"}, "$.payload.epoch"),
        (TRAINING_METRICS, {**METRICS, "epoch": -1}, "$.payload.epoch"),
        (TRAINING_METRICS, {k: v for k, v in METRICS.items() if k != "trial_id"}, "trial_id"),
        (TRAINING_METRICS, {**METRICS, "metrics": {"loss": "low"}}, "$.payload.metrics.loss"),
        (TRAINING_METRICS, {**METRICS, "metrics": {}}, "$.payload.metrics"),
        (TRAINING_METRICS, {**METRICS, "extra": 1}, "extra"),
        (PIPELINE_EVENTS, {**PIPELINE, "event": "task_exploded"}, "$.payload.event"),
        (PIPELINE_EVENTS, {k: v for k, v in PIPELINE.items() if k != "task_id"}, "task_id"),
        (MODEL_PROMOTED, {**PROMOTED, "version": 3}, "$.payload.version"),
        (MODEL_PROMOTED, {**PROMOTED, "previous_version": "two"}, "$.payload.previous_version"),
        (MODEL_PROMOTED, {k: v for k, v in PROMOTED.items() if k != "reason"}, "reason"),
    ],
)
def test_bad_payloads_are_rejected_naming_the_field(topic: Any, payload: dict[str, Any], complaint: str) -> None:
    with pytest.raises(EventValidationError, match=re.escape(complaint)):
        make_envelope(topic, payload)


def test_bad_envelopes_are_rejected() -> None:
    good = make_envelope(PIPELINE_EVENTS, PIPELINE)
    for field, value in [
        ("event_id", "not-a-uuid"),
        ("event_time", "2026-01-01 10:00"),
        ("event_time", "2026-01-01T10:00:00+02:00"),
        ("producer", ""),
        ("dag_run_id", 5),
    ]:
        with pytest.raises(EventValidationError, match=field):
            validate_envelope({**good, field: value})
    with pytest.raises(EventValidationError, match="unknown event schema"):
        validate_envelope({**good, "schema": "nope.v9"})
    with pytest.raises(EventValidationError, match=r"carries training_metrics\.v1"):
        validate_envelope(good, TRAINING_METRICS)
    with pytest.raises(EventValidationError, match=r"'payload' is a required property"):
        validate_envelope({k: v for k, v in good.items() if k != "payload"})


def test_non_finite_and_numpy_values_become_json() -> None:
    payload = {
        **METRICS,
        "epoch": np.int64(2),
        "metrics": {"loss": float("nan"), "acc": np.float32(0.5), "big": math.inf},
    }
    envelope = make_envelope(TRAINING_METRICS, payload)
    assert envelope["payload"]["epoch"] == 2
    assert envelope["payload"]["metrics"] == {"loss": None, "acc": 0.5, "big": None}
    json.dumps(envelope, allow_nan=False)


def test_the_fast_check_never_accepts_what_the_schema_refuses() -> None:
    """make_envelope skips jsonschema for training metrics it can vouch for: that shortcut must be no laxer."""
    validator = events._validator(TRAINING_METRICS.schema)
    base = make_envelope(TRAINING_METRICS, METRICS)
    variants: list[Any] = [METRICS, {}, [], None]
    for key in METRICS:
        for value in (
            None,
            "",
            "x",
            -1,
            0,
            1.5,
            True,
            [],
            {},
            {"a": 1},
            {"": 1.0},
            {"a": "b"},
            {"a": None},
            {"a": True},
            {"a": 1.0},
        ):
            variants.append({**METRICS, key: value})
        variants.append({k: v for k, v in METRICS.items() if k != key})
    variants.append({**METRICS, "extra": 1})
    for dag_run_id in (None, "r", 5):
        for payload in variants:
            envelope = {**base, "dag_run_id": dag_run_id, "payload": payload}
            if events._fast_valid(TRAINING_METRICS, envelope):
                assert validator.is_valid(envelope), envelope
    assert events._fast_valid(TRAINING_METRICS, base)


def test_format_message_is_one_readable_line() -> None:
    envelope = make_envelope(TRAINING_METRICS, METRICS)
    line = events.format_message(b"tune-1:t0001:3", json.dumps(envelope).encode())
    assert envelope["event_time"] in line and "training_metrics.v1" in line and "tune-1:t0001:3" in line
    assert '"val_accuracy":0.9' in line and "INVALID" not in line and "\n" not in line
    assert "INVALID" in events.format_message(b"k", json.dumps({**envelope, "event_id": "x"}).encode())
    assert "NOT-JSON" in events.format_message(None, b"\xff\x00")


def test_cli_lists_schemas() -> None:
    from ml.__main__ import build_parser

    args = build_parser().parse_args(["events", "schemas"])
    listed = args.handler(args)
    assert {topic.schema for topic in ALL_TOPICS} == set(listed)
    assert listed["model_promoted.v1"]["topic"] == MODEL_PROMOTED.name


# ---------------------------------------------------------------------------------------------------------------------
# The publisher with a fake producer


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

    def connect(self) -> FakeProducer:
        self.connect_attempts += 1
        if not self.up.is_set():
            raise TimeoutError("KafkaTimeoutError: bootstrap timed out (fake)")
        self.connects += 1
        return FakeProducer(self)


def publisher(broker: FakeBroker, **kwargs: Any) -> EventPublisher:
    class Fake(EventPublisher):
        reconnect_backoff_s = (0.01, 0.05)

        def _new_producer(self) -> Any:
            return broker.connect()

    return Fake("fake:9092", **kwargs)


def wait_for(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def metrics_payload(epoch: int) -> dict[str, Any]:
    return {**METRICS, "epoch": epoch}


def test_publisher_delivers_in_order_and_counts() -> None:
    broker = FakeBroker()
    pub = publisher(broker, dag_run_id="run-1")
    for epoch in range(20):
        pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"tune-1:t0001:{epoch}")
    stats = pub.close(timeout_s=5)
    assert stats == events.PublishStats(sent=20, delivered=20, failed=0, dropped=0, pending=0)
    assert [key for _, key, _ in broker.received] == [f"tune-1:t0001:{e}" for e in range(20)]
    topic, _, envelope = broker.received[0]
    assert topic == TRAINING_METRICS.name and envelope["dag_run_id"] == "run-1"
    validate_envelope(envelope, TRAINING_METRICS)
    assert broker.closed == 1


def test_publish_never_blocks_while_the_broker_is_down_and_the_buffer_is_bounded(caplog: Any) -> None:
    broker = FakeBroker()
    broker.up.clear()
    pub = publisher(broker, buffer_size=10)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="ml.events"):
        for epoch in range(25):
            pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
    assert time.monotonic() - started < 1.0
    assert wait_for(lambda: broker.connect_attempts >= 2)  # it keeps trying
    stats = pub.stats()
    assert (stats.sent, stats.delivered, stats.dropped, stats.pending) == (0, 0, 15, 10)
    assert "dropped" in caplog.text and "r:t:0" in caplog.text  # drops are logged with their keys

    # The broker comes back: the 10 newest messages (the oldest were dropped) are delivered, in order.
    broker.up.set()
    assert wait_for(lambda: pub.stats().delivered == 10)
    stats = pub.close(timeout_s=5)
    assert stats == events.PublishStats(sent=10, delivered=10, failed=0, dropped=15, pending=0)
    assert [key for _, key, _ in broker.received] == [f"r:t:{e}" for e in range(15, 25)]


def test_close_returns_within_its_timeout_when_the_broker_stays_down() -> None:
    broker = FakeBroker()
    broker.up.clear()
    pub = publisher(broker)
    for epoch in range(3):
        pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
    started = time.monotonic()
    stats = pub.close(timeout_s=0.3)
    assert time.monotonic() - started < 2.0
    assert stats.pending == 3 and stats.delivered == 0
    with pytest.raises(RuntimeError, match="after close"):
        pub.publish(TRAINING_METRICS, metrics_payload(9), key="late")


def test_timed_out_deliveries_go_back_to_the_buffer_and_are_redelivered() -> None:
    broker = FakeBroker()
    broker.fail_next = 3  # the first three deliveries time out (retriable)
    pub = publisher(broker)
    for epoch in range(5):
        pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
    stats = pub.close(timeout_s=5)
    assert (stats.delivered, stats.failed, stats.dropped, stats.pending) == (5, 0, 0, 0)
    assert stats.sent == 8  # three were sent twice
    assert sorted(key for _, key, _ in broker.received) == [f"r:t:{e}" for e in range(5)]
    # A re-delivered message keeps its event id: consumers recognise duplicates.
    assert len({envelope["event_id"] for _, _, envelope in broker.received}) == 5


def test_non_retriable_failures_are_counted_not_retried(caplog: Any) -> None:
    broker = FakeBroker()
    broker.fail_next = 2
    broker.failure = ValueError("MessageSizeTooLarge")
    pub = publisher(broker)
    with caplog.at_level("ERROR", logger="ml.events"):
        for epoch in range(4):
            pub.publish(TRAINING_METRICS, metrics_payload(epoch), key=f"r:t:{epoch}")
        stats = pub.close(timeout_s=5)
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
    stats = pub.close(timeout_s=5)
    assert (stats.delivered, stats.pending) == (4, 0)
    assert [key for _, key, _ in broker.received] == [f"r:t:{e}" for e in range(4)]


def test_an_invalid_payload_fails_at_the_call_site_and_is_not_buffered() -> None:
    broker = FakeBroker()
    pub = publisher(broker)
    with pytest.raises(EventValidationError):
        pub.publish(TRAINING_METRICS, {"run_name": "r"}, key="r")
    assert pub.close(timeout_s=2) == events.PublishStats(0, 0, 0, 0, 0)


def test_unacknowledged_messages_are_flushed_at_close() -> None:
    broker = FakeBroker()
    broker.auto_ack = False  # acknowledged only by flush()
    pub = publisher(broker)
    for epoch in range(3):
        pub.publish(PIPELINE_EVENTS, {**PIPELINE, "details": {"n": epoch}}, key=f"k{epoch}")
    assert wait_for(lambda: pub.stats().sent == 3)
    assert pub.stats().pending == 3
    assert pub.close(timeout_s=5) == events.PublishStats(3, 3, 0, 0, 0)


def test_buffer_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        EventPublisher("fake:9092", buffer_size=0)
