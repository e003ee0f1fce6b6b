"""Create the buckets and Kafka topics the pipeline expects (idempotent). Used by `make stack-up` and compose."""

from __future__ import annotations

import json
import os
import sys

import boto3
from botocore.exceptions import ClientError
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from ml.topics import ALL_TOPICS
from stack.config import LAKE_BUCKET, MLFLOW_BUCKET, RAW_BUCKET


def create_buckets(endpoint_url: str | None = None) -> list[str]:
    """Create the raw, lake and MLflow buckets unless they exist; return the ones created."""
    s3 = boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    created = []
    for bucket in (
        os.environ.get("MLOPS_RAW_BUCKET", RAW_BUCKET),
        os.environ.get("MLOPS_LAKE_BUCKET", LAKE_BUCKET),
        os.environ.get("MLOPS_MLFLOW_BUCKET", MLFLOW_BUCKET),
    ):
        if bucket in existing:
            continue
        try:
            s3.create_bucket(Bucket=bucket)
            created.append(bucket)
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
    return created


def create_topics(bootstrap_servers: str | None = None) -> list[str]:
    """Create the versioned topics with explicit partitions and retention unless they exist."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        request_timeout_ms=15000,
    )
    try:
        existing = set(admin.list_topics())
        created = []
        for topic in ALL_TOPICS:
            if topic.name in existing:
                continue
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            topic.name,
                            num_partitions=topic.partitions,
                            replication_factor=1,
                            topic_configs={"retention.ms": str(topic.retention_ms)},
                        )
                    ]
                )
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def main() -> int:
    result = {"buckets_created": create_buckets(), "topics_created": create_topics()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
