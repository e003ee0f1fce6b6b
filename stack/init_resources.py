"""Create the buckets and Kafka topics the pipeline expects (idempotent). Used by `make stack-up` and compose."""

from __future__ import annotations

import json
import os
import sys

from ml.clients import kafka_admin, s3_client
from ml.settings import KafkaSettings, LakeSettings, S3Settings, Settings
from ml.topics import ALL_TOPICS
from stack.config import MLFLOW_BUCKET


def create_buckets(s3: S3Settings, lake: LakeSettings, mlflow_bucket: str = MLFLOW_BUCKET) -> list[str]:
    """Create the raw, lake and MLflow buckets unless they exist; return the ones created."""
    from botocore.exceptions import ClientError

    client = s3_client(s3)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    created = []
    for bucket in (lake.raw_bucket, lake.lake_bucket, mlflow_bucket):
        if bucket in existing:
            continue
        try:
            client.create_bucket(Bucket=bucket)
            created.append(bucket)
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
    return created


def create_topics(kafka: KafkaSettings) -> list[str]:
    """Create the versioned topics with explicit partitions and retention unless they exist."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = kafka_admin(kafka, request_timeout_ms=15000)
    try:
        existing = set(admin.list_topics())
        created = []
        for topic in ALL_TOPICS:
            if topic.name in existing:
                continue
            new = NewTopic(
                topic.name,
                num_partitions=topic.partitions,
                replication_factor=1,
                topic_configs={"retention.ms": str(topic.retention_ms)},
            )
            try:
                admin.create_topics([new])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def main() -> int:
    settings = Settings.from_env(os.environ)
    mlflow_bucket = os.environ.get("MLOPS_MLFLOW_BUCKET", MLFLOW_BUCKET)
    result = {
        "buckets_created": create_buckets(settings.s3, settings.lake, mlflow_bucket),
        "topics_created": create_topics(settings.kafka),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
