"""ml.events.consumer against the real Kafka broker: a topic read from its end sees only what comes later, from its
beginning sees everything; `tail` and `python -m ml events tail` print readable lines."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from ml.events.consumer import open_topic, tail
from ml.events.publisher import EventPublisher, publish_event
from ml.settings import PROJECT_ROOT
from ml.topics import TRAINING_METRICS


def metrics_payload(run_name: str, epoch: int) -> dict[str, Any]:
    return {"run_name": run_name, "trial_id": "t0", "epoch": epoch, "metrics": {"val_loss": 0.5}, "params": {}}


def test_open_topic_from_the_end_sees_only_later_messages(kafka_topic: str, settings: Any) -> None:
    topic = replace(TRAINING_METRICS, name=kafka_topic)
    publish_event(settings.kafka, topic, metrics_payload("before", 0), key="before")
    consumer = open_topic(settings.kafka, kafka_topic)
    try:
        publish_event(settings.kafka, topic, metrics_payload("after", 1), key="after")
        keys: list[bytes] = []
        for _ in range(40):  # a bounded poll: at most 40 x 0.5 s
            for batch in consumer.poll(timeout_ms=500).values():
                keys.extend(record.key for record in batch)
            if keys:
                break
        assert keys == [b"after"]
    finally:
        consumer.close()
    with pytest.raises(LookupError, match="does not exist"):
        open_topic(settings.kafka, f"{kafka_topic}.missing")


def test_tail_prints_readable_lines(kafka_topic: str, settings: Any, stack_env: dict[str, str]) -> None:
    topic = replace(TRAINING_METRICS, name=kafka_topic)
    with EventPublisher(settings.kafka) as publisher:
        for epoch in range(3):
            publisher.publish(topic, metrics_payload("tail", epoch), key=f"tail:t0:{epoch}")

    lines: list[str] = []
    count = tail(settings.kafka, kafka_topic, from_beginning=True, max_messages=3, timeout_s=20, write=lines.append)
    assert count == 3
    assert all("training_metrics.v1" in line and "INVALID" not in line for line in lines)
    assert [line.split()[2] for line in lines] == [f"tail:t0:{e}" for e in range(3)]
    assert json.loads(lines[0].split("  ")[-1])["run_name"] == "tail"

    # The real command line, once.
    options = ["--from-beginning", "--max-messages", "3", "--timeout-s", "20"]
    result = subprocess.run(
        [sys.executable, "-m", "ml", "events", "tail", kafka_topic, *options],
        cwd=PROJECT_ROOT,
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("training_metrics.v1") == 3 and '"run_name":"tail"' in result.stdout
