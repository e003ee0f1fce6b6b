"""plugins/mlops_airflow/triggers.py: the watcher's trigger reads S3 notifications off Kafka into asset events; it
runs in ack mode (the Kafka provider's shared-stream producer commits only after the events are stored)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.ml.events.test_s3_notifications import _message, _record


def trigger() -> Any:
    from mlops_airflow.triggers import S3NotificationTrigger

    return S3NotificationTrigger(
        topics=["mlops.s3.events.v1"], buckets=["raw"], kafka_config_id="kafka_s3_events", url_encoded_keys=False
    )


def test_it_serializes_to_an_importable_class_with_every_argument() -> None:
    from airflow.providers.apache.kafka.triggers.shared_stream import KafkaSharedStreamProducer
    from airflow.providers.common.compat.module_loading import import_string

    classpath, kwargs = trigger().serialize()
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["buckets"] == ["raw"] and kwargs["url_encoded_keys"] is False
    assert kwargs["kafka_config_id"] == "kafka_s3_events" and kwargs["topics"] == ["mlops.s3.events.v1"]
    producer = type(rebuilt).create_shared_stream_producer(kwargs)
    assert isinstance(producer, KafkaSharedStreamProducer), "ack mode: offsets committed after the event is stored"


def test_the_watched_topic_and_bucket_are_the_pipelines() -> None:
    from ml.topics import S3_EVENTS
    from mlops_airflow.assets import RAW_BUCKET, RAW_UPLOADS, S3_EVENTS_TOPIC

    assert S3_EVENTS_TOPIC == S3_EVENTS.name and RAW_UPLOADS.uri == f"s3://{RAW_BUCKET}/"
    [watcher] = RAW_UPLOADS.watchers
    assert watcher.trigger.topics == [S3_EVENTS.name] and watcher.trigger.buckets == [RAW_BUCKET]


async def _stream(*values: Any) -> AsyncIterator[Any]:
    for value in values:
        yield value


def _filtered(*values: Any) -> list[Any]:
    async def collect() -> list[Any]:
        return [event.payload async for event in trigger().filter_shared_stream(_stream(*values))]

    return asyncio.run(collect())


def test_one_event_per_notification_of_watched_created_objects(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mlops_airflow.triggers")  # an unwatched bucket's object: at debug
    values = [
        _message(_record(key="cars/a b+c.csv"), _record(key="cars/b.csv")),  # one upload notified with two records
        b"not json",
        json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put"}]}).encode(),  # not a notification
        json.dumps({"Event": "s3:TestEvent", "Bucket": "raw"}).encode(),  # the server's start-up test message
        _message(_record(event="s3:ObjectRemoved:Delete")),
        _message(_record(bucket="lake", key="datasets/x.parquet")),
        None,  # a tombstone
        _message(_record(key="penguins/p.csv")),
    ]
    events = _filtered(*values)
    assert [[o["key"] for o in event["objects"]] for event in events] == [
        ["cars/a b+c.csv", "cars/b.csv"],
        ["penguins/p.csv"],
    ]
    assert events[0]["objects"][0] == {
        "bucket": "raw",
        "key": "cars/a b+c.csv",  # as the gateway sent it: not URL-decoded
        "size": 1234,
        "etag": "0f343b0931126a20f133d67c2b018a3b",
        "event": "s3:ObjectCreated:Put",
        "event_time": "2026-12-02T21:00:00Z",
        "sequencer": "1",
    }
    logged = caplog.text
    assert logged.count("skipped a malformed message") == 3  # not JSON, not a notification, the tombstone
    assert "s3://lake/datasets/x.parquet: bucket 'lake' is not watched" in logged


def drift_trigger() -> Any:
    from mlops_airflow.triggers import DriftEventTrigger

    return DriftEventTrigger(topics=["mlops.drift.v1"], kafka_config_id="kafka_drift_events")


def test_the_drift_trigger_serializes_and_runs_in_ack_mode() -> None:
    from airflow.providers.apache.kafka.triggers.shared_stream import KafkaSharedStreamProducer
    from airflow.providers.common.compat.module_loading import import_string

    classpath, kwargs = drift_trigger().serialize()
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs) and classpath.endswith("DriftEventTrigger")
    assert isinstance(type(rebuilt).create_shared_stream_producer(kwargs), KafkaSharedStreamProducer)


def test_one_event_per_drifted_window(caplog: pytest.LogCaptureFixture) -> None:
    from ml.events.envelope import make_envelope
    from ml.topics import DRIFT
    from tests.unit.ml.events.samples import DRIFT as DRIFT_SAMPLE

    drifted = make_envelope(DRIFT, DRIFT_SAMPLE)
    quiet = make_envelope(DRIFT, {**DRIFT_SAMPLE, "drifted": False, "drifted_features": []})
    values = [json.dumps(quiet).encode(), b"not json", json.dumps({"schema": "drift.v1"}).encode(), None]
    values.append(json.dumps(drifted).encode())

    async def collect() -> list[Any]:
        return [event.payload async for event in drift_trigger().filter_shared_stream(_stream(*values))]

    [payload] = asyncio.run(collect())
    assert payload["event_id"] == drifted["event_id"] and payload["dataset"] == "penguins"
    assert payload["drifted_features"] == ["bill_length_mm"]
    assert caplog.text.count("skipped a malformed message") == 3  # not JSON, not valid, the tombstone


class FakeMessage:
    def __init__(self, offset: int, value: bytes | None, error: str | None = None) -> None:
        self._offset, self._value, self._error = offset, value, error

    def error(self) -> str | None:
        return self._error

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return b"k"

    def topic(self) -> str:
        return "mlops.s3.events.v1"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class FakeConsumer:
    def __init__(self, batches: list[list[FakeMessage]]) -> None:
        import threading

        self.batches: list[list[FakeMessage]] = batches
        self.calls: list[tuple[int, float]] = []
        self.threads: list[str] = []
        self.shared_thread = ""
        self._threading = threading

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        self.calls.append((num_messages, timeout))
        self.threads.append(self._threading.current_thread().name)
        return self.batches.pop(0) if self.batches else []


def _serve(consumer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every producer's consumer is `consumer`, and the connection's auto-commit check passes."""
    from mlops_airflow.triggers import BatchingStreamProducer

    class Hook:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def get_consumer(self) -> Any:
            return consumer

    async def manual_commit(self: Any, hook: Any) -> None:
        return None

    monkeypatch.setattr("mlops_airflow.triggers.KafkaConsumerHook", Hook)
    monkeypatch.setattr(BatchingStreamProducer, "_ensure_manual_commit", manual_commit)


def _read(producer: Any, consumer: FakeConsumer, count: int, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    _serve(consumer, monkeypatch)

    async def collect() -> list[Any]:
        import threading

        from asgiref.sync import sync_to_async

        # asgiref's one shared thread, where thread-sensitive calls (the provider's polls, the commits) run
        consumer.shared_thread = await sync_to_async(lambda: threading.current_thread().name)()
        stream, read = producer.open_stream(), []
        while len(read) < count:
            read.append(await anext(stream))
        await stream.aclose()
        return read

    return asyncio.run(collect())


def test_the_stream_reads_batches_off_the_event_loop_and_keeps_each_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from mlops_airflow.triggers import CONSUME_BATCH

    _, kwargs = trigger().serialize()
    producer = type(trigger()).create_shared_stream_producer({**kwargs, "poll_timeout": 0.5})
    consumer = FakeConsumer([[FakeMessage(7, b"a"), FakeMessage(8, b"b")], [], [FakeMessage(9, None)]])
    read = _read(producer, consumer, 3, monkeypatch)
    assert [(value, payload.offset) for value, payload in read] == [(b"a", 7), (b"b", 8), (None, 9)]
    assert {(payload.topic, payload.partition, payload.value) for _, payload in read} == {
        ("mlops.s3.events.v1", 0, None)  # the value is kept only for a dead-letter topic
    }
    assert consumer.calls == [(CONSUME_BATCH, 0.5)] * 3, "up to CONSUME_BATCH messages a read, not one"
    # Not on the loop's thread nor on asgiref's one shared thread, where another stream's idle poll would hold it.
    assert threading.main_thread().name not in consumer.threads and consumer.shared_thread not in consumer.threads


def test_a_consumer_error_ends_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    _, kwargs = trigger().serialize()
    producer = type(trigger()).create_shared_stream_producer(kwargs)
    with pytest.raises(RuntimeError, match="Kafka consumer error: broker down"):
        _read(producer, FakeConsumer([[FakeMessage(1, None, error="broker down")]]), 1, monkeypatch)


def test_the_in_flight_limit_keeps_a_subscribers_queue_half_empty() -> None:
    from mlops_airflow.triggers import CONSUME_BATCH, in_flight_limit

    assert in_flight_limit(1024) == CONSUME_BATCH  # Airflow's default queue: one read's worth
    assert [in_flight_limit(size) for size in (64, 5, 3, 1)] == [32, 2, 2, 2]


class BacklogConsumer:
    """A partition holding `backlog` notifications: it serves reads from its position, commits and seeks back as the
    provider's producer asks (what confluent-kafka's consumer does for one partition)."""

    def __init__(self, backlog: list[bytes]) -> None:
        self.backlog, self.position, self.committed = backlog, 0, 0

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        start, self.position = self.position, min(len(self.backlog), self.position + num_messages)
        return [FakeMessage(offset, self.backlog[offset]) for offset in range(start, self.position)]

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.committed = max(self.committed, offsets[0].offset)

    def seek(self, partition: Any) -> None:
        self.position = partition.offset

    def close(self) -> None:
        pass


def test_a_backlog_larger_than_the_subscribers_queue_drains_without_overflowing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Airflow's shared stream fails a subscriber whose queue fills (the triggerer then restarts the watcher from the
    last committed offset). A backlog of 25 queues' worth of notifications, the upload among them, goes through
    Airflow's own manager in ack mode: one asset event for the upload, every offset committed, no overflow."""
    from airflow.configuration import conf
    from airflow.triggers.shared_stream import SharedStreamManager

    queue = 16
    lake = [_message(_record(bucket="lake", key=f"checkpoints/{n}")) for n in range(200)]
    consumer = BacklogConsumer([*lake, _message(_record(key="penguins/p.csv")), *lake])

    _serve(consumer, monkeypatch)
    real_getint = conf.getint
    monkeypatch.setattr(
        conf,
        "getint",
        lambda section, key, **kw: (
            queue
            if (section, key) == ("triggerer", "shared_stream_subscriber_queue_size")
            else real_getint(section, key, **kw)
        ),
    )

    async def run() -> list[Any]:
        watcher = trigger()
        key = watcher.shared_stream_key()
        manager = SharedStreamManager(max_subscriber_queue=queue)
        events = []

        async def subscriber() -> None:  # the triggerer's side: each event stored, then confirmed
            async for event in watcher.filter_shared_stream(manager.subscribe(trigger_id=1, trigger=watcher, key=key)):
                events.append(event.payload)
                manager.confirm_persisted([manager.bind_pending_event(trigger_id=1, key=key)])

        task = asyncio.create_task(subscriber())
        try:
            async with asyncio.timeout(60):
                while consumer.committed < len(consumer.backlog) and not task.done():
                    await asyncio.sleep(0.01)
        finally:
            await manager.stop_all()
        if task.done():
            task.result()  # an overflow fails the subscription: raise it here
        task.cancel()
        return events

    events = asyncio.run(run())
    assert [[o["key"] for o in event["objects"]] for event in events] == [["penguins/p.csv"]]
    assert consumer.committed == len(consumer.backlog)  # the next offset to read: all of them consumed
