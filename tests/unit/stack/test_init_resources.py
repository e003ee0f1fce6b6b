"""stack/init_resources.py: the buckets and topics the pipeline expects, created once (idempotent), with the S3 and
Kafka admin clients replaced by doubles. (Against the real services: tests/integration/stack/.)"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from ml.settings import KafkaSettings, LakeSettings, S3Settings
from ml.topics import BROKER_TOPICS


def _client_error(code: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}}, "CreateBucket")


class FakeS3:
    def __init__(self, existing: set[str], failures: dict[str, str] | None = None) -> None:
        self.buckets, self.failures = set(existing), failures or {}
        self.created: list[str] = []

    def list_buckets(self) -> dict[str, Any]:
        return {"Buckets": [{"Name": name} for name in sorted(self.buckets)]}

    def create_bucket(self, Bucket: str) -> None:
        if Bucket in self.failures:
            raise _client_error(self.failures[Bucket])
        self.buckets.add(Bucket)
        self.created.append(Bucket)


class FakeAdmin:
    def __init__(self, existing: set[str], racing: frozenset[str] = frozenset()) -> None:
        self.existing, self.racing = set(existing), set(racing)
        self.new: list[Any] = []
        self.closed = False
        self.described = 0
        self.leaderless_rounds = 0

    def list_topics(self) -> list[str]:
        return sorted(self.existing)

    def create_topics(self, topics: list[Any]) -> None:
        from kafka.errors import TopicAlreadyExistsError

        for topic in topics:
            if topic.name in self.racing:  # another stack-up created it after our listing
                raise TopicAlreadyExistsError(topic.name)
            self.new.append(topic)

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self.described += 1
        known = self.existing | self.racing | {topic.name for topic in self.new}
        leader = 1 if self.described > self.leaderless_rounds else -1  # a new topic gets its leader a moment later
        partitions = [{"error_code": 0, "partition_index": 0, "leader_id": leader}]  # kafka-python's answer
        return [{"name": name, "error_code": 0 if name in known else 3, "partitions": partitions} for name in names]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_s3(monkeypatch: pytest.MonkeyPatch) -> list[FakeS3]:
    import stack.init_resources

    installed: list[FakeS3] = []
    monkeypatch.setattr(stack.init_resources, "s3_client", lambda settings: installed[-1])
    return installed


@pytest.fixture
def fake_admin(monkeypatch: pytest.MonkeyPatch) -> list[tuple[KafkaSettings, FakeAdmin]]:
    import stack.init_resources

    installed: list[tuple[KafkaSettings, FakeAdmin]] = []

    def admin_for(settings: KafkaSettings, **options: Any) -> FakeAdmin:
        installed.append((settings, installed[-1][1]))
        return installed[-1][1]

    monkeypatch.setattr(stack.init_resources, "kafka_admin", admin_for)
    return installed


def test_missing_buckets_are_created(fake_s3: list[FakeS3]) -> None:
    from stack.init_resources import create_buckets

    fake_s3.append(FakeS3({"raw"}))
    created = create_buckets(S3Settings(), LakeSettings(raw_bucket="raw", lake_bucket="my-lake"), "tracking")
    assert created == fake_s3[0].created == ["my-lake", "tracking"]
    assert create_buckets(S3Settings(), LakeSettings(raw_bucket="raw", lake_bucket="my-lake"), "tracking") == []


def test_a_bucket_made_meanwhile_is_fine_and_other_errors_are_not(fake_s3: list[FakeS3]) -> None:
    from botocore.exceptions import ClientError

    from stack.init_resources import create_buckets

    fake_s3.append(FakeS3(set(), {"raw": "BucketAlreadyOwnedByYou", "lake": "BucketAlreadyExists"}))
    assert create_buckets(S3Settings(), LakeSettings()) == ["mlflow"]
    fake_s3.append(FakeS3(set(), {"raw": "AccessDenied"}))
    with pytest.raises(ClientError, match="AccessDenied"):
        create_buckets(S3Settings(), LakeSettings())


def test_topics_are_created_with_their_partitions_and_retention(fake_admin: list[Any]) -> None:
    from stack.init_resources import create_topics

    admin = FakeAdmin({"mlops.model.promoted.v1"}, racing={"mlops.pipeline.events.v1"})
    fake_admin.append((None, admin))
    created = create_topics(KafkaSettings("kafka.test:9092"))
    expected = [
        "mlops.training.metrics.v1",
        "mlops.training.metrics.v2",
        "mlops.serving.metrics.v1",
        "mlops.drift.v1",
        "mlops.s3.events.v1",
        "openlineage",
    ]
    assert created == expected, "existing and concurrently created topics are left alone"
    assert [new.name for new in admin.new] == expected
    for new in admin.new:
        wanted = next(topic for topic in BROKER_TOPICS if topic.name == new.name)
        assert (new.num_partitions, new.replication_factor) == (wanted.partitions, 1)
        assert new.topic_configs == {"retention.ms": str(wanted.retention_ms)}
    assert admin.closed
    assert fake_admin[-1][0] == KafkaSettings("kafka.test:9092")


def test_main_reads_the_environment_once_and_reports_what_it_created(
    fake_s3: list[FakeS3],
    fake_admin: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stack.init_resources import main

    monkeypatch.setenv("MLOPS_LAKE_BUCKET", "compose-lake")
    monkeypatch.setenv("MLOPS_MLFLOW_BUCKET", "compose-mlflow")
    fake_s3.append(FakeS3(set()))
    fake_admin.append((None, FakeAdmin({topic.name for topic in BROKER_TOPICS})))
    assert main([]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "buckets_created": ["raw", "compose-lake", "compose-mlflow"],
        "topics_created": [],
    }


def test_topics_are_served_before_create_topics_returns(fake_admin: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import stack.init_resources
    from stack.init_resources import create_topics

    pauses: list[float] = []
    monkeypatch.setattr(stack.init_resources, "_pause", pauses.append)
    admin = FakeAdmin(set())
    admin.leaderless_rounds = 3  # the broker serves the new topics on the fourth look
    fake_admin.append((None, admin))
    create_topics(KafkaSettings("kafka.test:9092"))
    assert admin.described == 4 and len(pauses) == 3


def test_kafka_only_touches_no_s3_server(
    fake_s3: list[FakeS3], fake_admin: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from stack.init_resources import main

    fake_admin.append((None, FakeAdmin(set())))
    assert main(["--kafka-only"]) == 0  # compose's kafka-init, which runs before the S3 server exists
    assert fake_s3 == []
    assert json.loads(capsys.readouterr().out) == {"topics_created": [t.name for t in BROKER_TOPICS]}


def test_on_a_broker_with_logins_the_users_and_acls_come_before_the_topics(
    fake_admin: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import stack.init_resources

    done: list[Any] = []
    monkeypatch.setattr(
        stack.init_resources,
        "ensure_users_and_acls",
        lambda kafka, passwords: done.append((kafka, passwords)) or {"users": sorted(passwords), "acls": 12},
    )
    fake_admin.append((None, FakeAdmin(set())))
    admin = KafkaSettings("kafka.test:9092", username="admin", password="a")
    result = stack.init_resources.prepare_kafka(admin, {"pipeline": "p", "serving": "s"})
    assert done == [(admin, {"pipeline": "p", "serving": "s"})]
    assert result == {"users": ["pipeline", "serving"], "acls": 12, "topics_created": [t.name for t in BROKER_TOPICS]}
    assert fake_admin[-1][0] == admin, "the topics are created as admin"
    # A broker without logins (one of your own): topics only.
    done.clear()
    fake_admin.append((None, FakeAdmin({t.name for t in BROKER_TOPICS})))
    assert stack.init_resources.prepare_kafka(KafkaSettings("kafka.test:9092"), {}) == {"topics_created": []}
    assert done == []


def test_compose_stack_init_logs_in_as_admin_and_needs_the_users_passwords(
    fake_s3: list[FakeS3], fake_admin: list[Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import stack.init_resources

    made: list[Any] = []
    monkeypatch.setattr(
        stack.init_resources, "ensure_users_and_acls", lambda kafka, passwords: made.append((kafka, passwords)) or {}
    )
    made_up = {user: uuid.uuid4().hex for user in ("admin", "pipeline", "serving", "monitor")}  # never real ones
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:29092",
        "MLOPS_KAFKA_USERNAME": "admin",
        "MLOPS_KAFKA_PASSWORD": made_up["admin"],
        "MLOPS_KAFKA_PIPELINE_PASSWORD": made_up["pipeline"],
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLOPS_KAFKA_SERVING_PASSWORD", raising=False)
    monkeypatch.delenv("MLOPS_KAFKA_MONITOR_PASSWORD", raising=False)
    with pytest.raises(SystemExit, match="MLOPS_KAFKA_SERVING_PASSWORD, MLOPS_KAFKA_MONITOR_PASSWORD not set"):
        stack.init_resources.main([])
    monkeypatch.setenv("MLOPS_KAFKA_SERVING_PASSWORD", made_up["serving"])
    monkeypatch.setenv("MLOPS_KAFKA_MONITOR_PASSWORD", made_up["monitor"])
    fake_s3.append(FakeS3({"raw", "lake", "mlflow"}))
    fake_admin.append((None, FakeAdmin({topic.name for topic in BROKER_TOPICS})))
    assert stack.init_resources.main([]) == 0
    [(admin, passwords)] = made
    assert (admin.bootstrap_servers, admin.username, admin.password) == ("kafka:29092", "admin", made_up["admin"])
    assert passwords == {user: made_up[user] for user in ("pipeline", "serving", "monitor")}
    assert not [value for value in made_up.values() if value in capsys.readouterr().out]


def test_with_the_s3_users_keys_main_makes_the_users_and_policies_as_root(
    fake_s3: list[FakeS3], fake_admin: list[Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Compose's stack-init: the S3 users' keys from .env (every one required once one is given), made as the S3
    server's root with the buckets' policies; the output names users, never a key."""
    import stack.init_resources
    from stack.s3_users import S3User

    made: list[Any] = []
    monkeypatch.setattr(
        stack.init_resources,
        "ensure_users_and_policies",
        lambda root, lake, users, bucket: made.append((root, users, bucket)) or {"s3_users_created": sorted(users)},
    )
    keys = {
        user: (f"mlops-{user}-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex)
        for user in ("pipeline", "tune", "mlflow", "monitor")
    }
    for user, (access, secret) in keys.items():
        monkeypatch.setenv(f"MLOPS_S3_{user.upper()}_ACCESS_KEY", access)
        if user != "mlflow":
            monkeypatch.setenv(f"MLOPS_S3_{user.upper()}_SECRET_KEY", secret)
    with pytest.raises(SystemExit, match="MLOPS_S3_MLFLOW_SECRET_KEY"):
        stack.init_resources.main([])
    monkeypatch.setenv("MLOPS_S3_MLFLOW_SECRET_KEY", keys["mlflow"][1])
    fake_s3.append(FakeS3({"raw", "lake", "mlflow"}))
    fake_admin.append((None, FakeAdmin({topic.name for topic in BROKER_TOPICS})))
    assert stack.init_resources.main([]) == 0
    [(_, users, bucket)] = made
    assert users == {user: S3User(user, *pair) for user, pair in keys.items()} and bucket == "mlflow"
    out = capsys.readouterr().out
    assert json.loads(out)["s3_users_created"] == ["mlflow", "monitor", "pipeline", "tune"]
    assert not [secret for _, secret in keys.values() if secret in out]
