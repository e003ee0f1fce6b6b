"""stack/init_resources.py against the running stack: everything the pipeline needs exists, and creating it again
changes nothing (what `make stack-up` and compose's stack-init run on every start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml.settings import Settings
from stack.config import MLFLOW_BUCKET, StackPaths


def test_buckets_exist_and_creating_them_again_creates_none(s3_client: Any, settings: Settings) -> None:
    from stack.init_resources import create_buckets

    assert create_buckets(settings.s3, settings.lake, MLFLOW_BUCKET) == []
    names = {bucket["Name"] for bucket in s3_client.list_buckets()["Buckets"]}
    assert {settings.lake.raw_bucket, settings.lake.lake_bucket, MLFLOW_BUCKET} <= names


def test_topics_exist_with_their_partitions_and_retention(
    kafka_service: None, settings: Settings, stack_env: dict[str, str]
) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    from ml.clients import kafka_admin
    from ml.topics import ALL_TOPICS
    from stack.init_resources import create_topics
    from stack.kafka_auth import administrator

    # As the broker's admin: the pipeline's user may neither create topics nor read their configuration.
    admin_kafka = administrator(settings.kafka, StackPaths(Path(stack_env["MLOPS_STACK_DIR"])))
    assert create_topics(admin_kafka) == []
    admin = kafka_admin(admin_kafka)
    try:
        described = {topic["name"]: topic for topic in admin.describe_topics([t.name for t in ALL_TOPICS])}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t.name) for t in ALL_TOPICS])
    finally:
        admin.close()
    for topic in ALL_TOPICS:
        assert len(described[topic.name]["partitions"]) == topic.partitions, topic.name
    retention = {name: entries["retention.ms"]["value"] for name, entries in configs["topic"].items()}
    assert retention == {topic.name: str(topic.retention_ms) for topic in ALL_TOPICS}
