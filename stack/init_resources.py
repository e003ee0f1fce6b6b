"""Create the buckets and Kafka topics the pipeline expects, and on a broker that takes logins the Kafka users and
their ACLs (stack.kafka_auth); all idempotent. Used by `make stack-up` and compose (`python -m stack.init_resources`,
which runs as the broker's admin: MLOPS_KAFKA_USERNAME/MLOPS_KAFKA_PASSWORD, with the client users' passwords in
MLOPS_KAFKA_{PIPELINE,SERVING,MONITOR}_PASSWORD; and as the S3 server's root, which with the S3 users' keys in
MLOPS_S3_{PIPELINE,TUNE,MLFLOW,MONITOR}_{ACCESS,SECRET}_KEY also makes those users and the buckets' policies:
stack.s3_users)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from ml.clients import kafka_admin, s3_client
from ml.settings import KafkaSettings, LakeSettings, S3Settings, Settings
from ml.topics import BROKER_TOPICS
from stack.config import KAFKA_CLIENT_USERS, MLFLOW_BUCKET, S3_USERS
from stack.kafka_auth import ensure_users_and_acls
from stack.s3_users import S3User, ensure_users_and_policies

# Where `main` finds each client user's password (compose's .env; `python -m stack up` reads the stack's secrets).
USER_PASSWORD_VARIABLES = {user: f"MLOPS_KAFKA_{user.upper()}_PASSWORD" for user in KAFKA_CLIENT_USERS}
# ... and each S3 user's access and secret key (stack.s3_users).
S3_KEY_VARIABLES = {
    user: (f"MLOPS_S3_{user.upper()}_ACCESS_KEY", f"MLOPS_S3_{user.upper()}_SECRET_KEY") for user in S3_USERS
}


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
    """Create the versioned topics with explicit partitions and retention unless they exist (on a broker with ACLs,
    `kafka` is a user allowed to: the admin)."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = kafka_admin(kafka, request_timeout_ms=15000)
    try:
        existing = set(admin.list_topics())
        created = []
        for topic in BROKER_TOPICS:
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
        _wait_for_leaders(admin, [topic.name for topic in BROKER_TOPICS])
        return created
    finally:
        admin.close()


_pause = time.sleep  # the tests' fake broker needs no real pause


def _wait_for_leaders(admin: Any, names: list[str], timeout_s: float = 60.0) -> None:
    """Return once every partition of `names` has a leader: a new topic is committed before the broker serves it, and
    the S3 server, started right after, refuses to start when its first notification finds no partition."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = admin.describe_topics(names)
        waiting = [
            topic["name"]
            for topic in described
            if topic["error_code"]
            or not topic["partitions"]
            or any(p["error_code"] or p["leader_id"] < 0 for p in topic["partitions"])
        ]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kafka topics without a leader after {timeout_s:.0f} s: {', '.join(waiting)}")
        _pause(0.2)  # polling the broker for a state change, bounded by the deadline


def prepare_kafka(kafka: KafkaSettings, passwords: Mapping[str, str]) -> dict[str, Any]:
    """As `kafka`'s user (the broker's admin, when it takes logins): the client users (`passwords`: user -> password)
    and their ACLs, then the topics. A broker without logins (PLAINTEXT) gets the topics only."""
    done: dict[str, Any] = {}
    if kafka.uses_sasl:
        done.update(ensure_users_and_acls(kafka, passwords))
    done["topics_created"] = create_topics(kafka)
    return done


def client_passwords_from(env: Mapping[str, str]) -> dict[str, str]:
    """The client users' passwords from the environment; every one is required."""
    missing = [name for name in USER_PASSWORD_VARIABLES.values() if not env.get(name)]
    if missing:
        raise SystemExit(f"stack.init_resources: {', '.join(missing)} not set (the Kafka users' passwords)")
    return {user: env[name] for user, name in USER_PASSWORD_VARIABLES.items()}


def s3_users_from(env: Mapping[str, str]) -> dict[str, S3User]:
    """The S3 users' keys from the environment (compose's .env): none (an S3 server whose users are not the stack's
    to make), or every one of them."""
    names = {user: tuple(S3_KEY_VARIABLES[user]) for user in S3_USERS}
    given = [name for pair in names.values() for name in pair if env.get(name)]
    if not given:
        return {}
    missing = [name for pair in names.values() for name in pair if not env.get(name)]
    if missing:
        raise SystemExit(f"stack.init_resources: {', '.join(missing)} not set (the S3 users' keys)")
    return {user: S3User(user, env[access], env[secret]) for user, (access, secret) in names.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.init_resources", description=__doc__)
    parser.add_argument(
        "--kafka-only",
        action="store_true",
        help="the Kafka users, ACLs and topics only (compose's kafka-init: before the S3 server, whose notifications "
        "need their topic)",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ)
    passwords = client_passwords_from(os.environ) if settings.kafka.uses_sasl else {}
    result: dict[str, Any] = {}
    if not args.kafka_only:
        mlflow_bucket = os.environ.get("MLOPS_MLFLOW_BUCKET", MLFLOW_BUCKET)
        s3_users = s3_users_from(os.environ)
        result["buckets_created"] = create_buckets(settings.s3, settings.lake, mlflow_bucket)
        if s3_users:  # as the S3 server's root (AWS_ACCESS_KEY_ID): its users and the buckets' policies
            result.update(ensure_users_and_policies(settings.s3, settings.lake, s3_users, mlflow_bucket))
    result.update(prepare_kafka(settings.kafka, passwords))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
