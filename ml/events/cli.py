"""`python -m ml events tail TOPIC`, `python -m ml events schemas` and `python -m ml events replay-uploads PREFIX`."""

from __future__ import annotations

import argparse
from typing import Any

from ml.events import replay
from ml.events.consumer import tail
from ml.events.envelope import SCHEMA_DIR, load_schema, topic_by_name
from ml.settings import Settings
from ml.topics import ALL_TOPICS


def _cli_tail(args: argparse.Namespace, settings: Settings) -> int:
    topic = topic_by_name(args.topic)
    tail(
        settings.kafka,
        topic.name if topic else args.topic,
        from_beginning=args.from_beginning,
        max_messages=args.max_messages,
        timeout_s=args.timeout_s,
    )
    return 0


def _cli_schemas(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
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
    parser = subparsers.add_parser(
        "events", help="Kafka events: follow a topic, list the event schemas, replay upload notifications"
    )
    commands = parser.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    tail_parser = commands.add_parser("tail", help="print a topic's events as readable lines")
    tail_parser.add_argument("topic", help="topic or schema name, e.g. mlops.training.metrics.v1")
    tail_parser.add_argument("--from-beginning", action="store_true", help="start at the oldest retained message")
    tail_parser.add_argument("--max-messages", type=int, default=None, help="stop after N messages")
    tail_parser.add_argument("--timeout-s", type=float, default=None, help="stop after S seconds without a message")
    tail_parser.set_defaults(handler=_cli_tail, writes_stdout=True)
    schemas_parser = commands.add_parser("schemas", help="list the event schemas and their topics")
    schemas_parser.set_defaults(handler=_cli_schemas)
    replay.register(commands)
