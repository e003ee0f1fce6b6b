"""ml.events.cli: `python -m ml events schemas` lists the schemas; `events tail` accepts a topic or a schema name and
passes the Kafka settings it is given (the real broker: tests/integration/ml/events/test_consumer.py)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from ml.events.cli import register_cli
from ml.settings import KafkaSettings, Settings
from ml.topics import ALL_TOPICS, MODEL_PROMOTED, TRAINING_METRICS

SETTINGS = Settings(kafka=KafkaSettings("kafka.example:9092"))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="stage", required=True))
    return parser.parse_args(["events", *argv])


def test_schemas_lists_every_topic() -> None:
    args = parse(["schemas"])
    listed = args.handler(args, SETTINGS)
    assert {topic.schema for topic in ALL_TOPICS} == set(listed)
    promoted = listed["model_promoted.v1"]
    assert promoted == {
        "topic": MODEL_PROMOTED.name,
        "file": "ml/schemas/model_promoted.v1.json",
        "title": "Model alias moved",
        "partitions": 1,
        "retention_days": 365,
    }


@pytest.fixture
def tails(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr("ml.events.cli.tail", lambda kafka, topic, **options: calls.append((kafka, topic, options)))
    return calls


@pytest.mark.parametrize("name", [TRAINING_METRICS.name, TRAINING_METRICS.schema])
def test_tail_takes_a_topic_or_a_schema_name(tails: list[tuple[Any, ...]], name: str) -> None:
    args = parse(["tail", name, "--from-beginning", "--max-messages", "3", "--timeout-s", "2.5"])
    assert args.writes_stdout and args.handler(args, SETTINGS) == 0
    assert tails == [
        (SETTINGS.kafka, TRAINING_METRICS.name, {"from_beginning": True, "max_messages": 3, "timeout_s": 2.5})
    ]


def test_tail_of_another_topic(tails: list[tuple[Any, ...]]) -> None:
    args = parse(["tail", "some.other.topic"])
    args.handler(args, SETTINGS)
    assert tails == [
        (SETTINGS.kafka, "some.other.topic", {"from_beginning": False, "max_messages": None, "timeout_s": None})
    ]
