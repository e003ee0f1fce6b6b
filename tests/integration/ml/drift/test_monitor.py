"""The streaming drift monitor against the stack: `python -m ml monitor` (Spark Structured Streaming, Spark's Kafka
source logged in as the pipeline, its checkpoint in S3) reads serving events of a registered stand-in model, finds the
version's training distributions through the registry, and publishes one mlops.drift.v1 event per closed window.

Event times are chosen by the test (the serving events are written as the prediction service writes them), so the
windows and the watermark move with the data, not with the clock: a last request later than the watermark closes the
windows before it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ml.clients import close_quietly, kafka_producer
from ml.events.consumer import open_topic
from ml.events.envelope import validate_envelope
from ml.storage import S3Uri, delete_prefix, training_distributions_uri, write_json
from ml.topics import DRIFT
from tests.support.probes import wait_until
from tests.support.serving_events import serving_event
from tests.support.stand_in_model import make_spec, raw_rows, training_distributions

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z: the first window's start (a whole minute)
WINDOW_S = 60
MONITOR_ARGS = ["--window", "1 minute", "--watermark", "10 seconds", "--min-rows", "50"]
REQUEST_ROWS = 20


@pytest.fixture
def model(registered: Callable[[str, str], dict[str, Any]], mlflow_client: Any, s3_client: Any) -> dict[str, Any]:
    """A registered stand-in version whose features folder holds the training distributions of raw_rows(seed=1)."""
    promoted = registered("good", f"drift-{uuid.uuid4().hex[:6]}")
    tags = mlflow_client.get_model_version(promoted["model_name"], promoted["version"]).tags
    distributions = training_distributions(make_spec(), raw_rows(2000, seed=1))
    write_json(training_distributions_uri(tags["features_uri"]), json.loads(distributions.to_json()), s3_client)
    return {"name": promoted["model_name"], "version": str(promoted["version"])}


@pytest.fixture
def checkpoint(settings: Any, s3_client: Any, unique_prefix: str) -> Iterator[str]:
    uri = S3Uri(settings.lake.lake_bucket, f"{unique_prefix}/drift-checkpoint")
    yield str(uri)
    delete_prefix(uri, s3_client)


def send(settings: Any, topic: str, events: list[dict[str, Any]]) -> None:
    producer = kafka_producer(settings.kafka, acks="all")
    try:
        for event in events:
            producer.send(topic, value=json.dumps(event).encode()).get(timeout=30)
    finally:
        close_quietly(producer)


def requests(model: dict[str, Any], rows: list[dict[str, Any]], start: float) -> list[dict[str, Any]]:
    """Sampled requests of REQUEST_ROWS rows each, one second apart from `start`."""
    events = []
    for index in range(0, len(rows), REQUEST_ROWS):
        chunk = rows[index : index + REQUEST_ROWS]
        inputs = {column: [row[column] for row in chunk] for column in ("x1", "x2", "color")}
        events.append(serving_event(model["name"], model["version"], inputs, at=start + index // REQUEST_ROWS))
    return events


def shifted(rows: list[dict[str, Any]], column: str, by: float) -> list[dict[str, Any]]:
    return [{**row, column: None if row[column] is None else row[column] + by} for row in rows]


def closing_request(model: dict[str, Any], after: float) -> dict[str, Any]:
    """A one-row request late enough to move the watermark past every window before `after`."""
    return serving_event(model["name"], model["version"], {"x1": [0.0], "x2": [0.5], "color": ["red"]}, at=after + 30)


def monitor(stack_env: dict[str, str], topic: str, checkpoint: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ml",
        "monitor",
        "--topic",
        topic,
        "--checkpoint-uri",
        checkpoint,
        *MONITOR_ARGS,
        *extra,
    ]


def run_once(stack_env: dict[str, str], topic: str, checkpoint: str, *extra: str) -> None:
    done = subprocess.run(
        monitor(stack_env, topic, checkpoint, "--once", *extra),
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def drift_events(settings: Any, follower: Any, model: dict[str, Any], expected: int) -> list[dict[str, Any]]:
    """The model's drift events on the topic, read until `expected` came and then until the topic has no more."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        polled = follower.poll(timeout_ms=1000)
        for batch in polled.values():
            for record in batch:
                envelope = json.loads(record.value)
                if envelope["payload"]["model_name"] == model["name"]:
                    validate_envelope(envelope, DRIFT)
                    payload = envelope["payload"]
                    assert record.key.decode() == f"{model['name']}:{model['version']}:{payload['window_start']}"
                    received.append(envelope)
        if len(received) >= expected and not polled:
            break
    return received


def test_training_like_traffic_is_quiet_and_a_shifted_feature_drifts(
    model: dict[str, Any], settings: Any, stack_env: dict[str, str], kafka_topic: str, checkpoint: str
) -> None:
    follower = open_topic(settings.kafka, DRIFT.name)  # at the topic's end
    try:
        like_training = raw_rows(200, seed=11)
        send(
            settings,
            kafka_topic,
            [
                *requests(model, like_training, T0),
                *requests(model, shifted(raw_rows(200, seed=12), "x1", 3.0), T0 + WINDOW_S),
                # refused or unsampled requests carry no inputs and count for nothing
                serving_event(model["name"], model["version"], None, at=T0 + 5, status=422),
                serving_event(model["name"], model["version"], None, at=T0 + 6),
                closing_request(model, T0 + 2 * WINDOW_S),
            ],
        )
        run_once(stack_env, kafka_topic, checkpoint)
        events = drift_events(settings, follower, model, expected=2)
    finally:
        close_quietly(follower)

    payloads = [event["payload"] for event in events]
    assert [p["window_start"] for p in payloads] == ["2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z"], payloads
    quiet, drifted = payloads
    assert quiet["rows"] == 200 and not quiet["drifted"], quiet  # the false-positive check
    assert {f["name"] for f in quiet["features"]} == {"x1", "x2", "color"}
    assert drifted["rows"] == 200 and drifted["drifted_features"] == ["x1"], drifted
    assert drifted["dataset"] == make_spec().dataset and drifted["model_version"] == model["version"]
    assert len({event["event_id"] for event in events}) == 2


def committed_offset(s3_client: Any, checkpoint: str) -> int:
    """The Kafka offset (partition 0) up to which the monitor's last committed micro-batch read: Spark writes
    offsets/N before batch N and commits/N after it."""
    from ml.storage import list_keys

    root = S3Uri.parse(checkpoint)
    commits = [
        int(obj["Key"].rsplit("/", 1)[-1])
        for obj in list_keys(root.join("commits"), s3_client)
        if obj["Key"].rsplit("/", 1)[-1].isdigit()
    ]
    if not commits:
        return -1
    body = s3_client.get_object(Bucket=root.bucket, Key=root.join("offsets", str(max(commits))).key)["Body"].read()
    offsets = json.loads(body.decode().splitlines()[-1])
    return max(int(offset) for partitions in offsets.values() for offset in partitions.values())


def test_a_monitor_killed_mid_window_counts_every_window_once(
    model: dict[str, Any],
    settings: Any,
    stack_env: dict[str, str],
    kafka_topic: str,
    checkpoint: str,
    s3_client: Any,
) -> None:
    first_half = requests(model, raw_rows(100, seed=21), T0)
    second_half = requests(model, raw_rows(100, seed=22), T0 + 20)
    next_window = requests(model, raw_rows(60, seed=23), T0 + WINDOW_S)
    follower = open_topic(settings.kafka, DRIFT.name)
    running = subprocess.Popen(
        monitor(stack_env, kafka_topic, checkpoint, "--trigger", "1 second"),
        env=stack_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        send(settings, kafka_topic, first_half)

        def first_requests_committed() -> bool:
            assert running.poll() is None, "the monitor stopped by itself"
            return committed_offset(s3_client, checkpoint) >= len(first_half)

        wait_until(first_requests_committed, "a committed micro-batch with the first requests", timeout_s=300, poll_s=1)
        os.killpg(running.pid, signal.SIGKILL)  # mid-window: the first window's counts are only in the checkpoint
        running.wait(timeout=30)
        send(settings, kafka_topic, [*second_half, *next_window, closing_request(model, T0 + 2 * WINDOW_S)])
        # "latest" applies to a first start only: a monitor that lost its checkpoint would miss every request so far
        run_once(stack_env, kafka_topic, checkpoint, "--starting-offsets", "latest")
        events = drift_events(settings, follower, model, expected=2)
    finally:
        if running.poll() is None:
            os.killpg(running.pid, signal.SIGKILL)
            running.wait(timeout=30)
        close_quietly(follower)

    windows = [(event["payload"]["window_start"], event["payload"]["rows"]) for event in events]
    # every request once: the first window's 200 rows across the kill (its first half only in the checkpoint's state,
    # its offsets past them), then the next window's 60
    assert windows == [("2027-01-15T08:00:00Z", 200), ("2027-01-15T08:01:00Z", 60)], windows
