"""stack/kafka_auth.py: what each Kafka user of the stack may do (the ACL design, as data), the SCRAM credential in
its salted form, and the admin calls that make users, ACLs and throwaway topics, against a fake KafkaAdminClient.
(Against a real broker that enforces them: tests/integration/stack/test_kafka_auth.py.)"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest

from ml.drift.monitor import kafka_source_options
from ml.drift.stream import GROUP_ID_PREFIX, MonitorConfig
from ml.settings import KafkaSettings
from ml.topics import BROKER_TOPICS, DRIFT, MODEL_PROMOTED, S3_EVENTS, SERVING_METRICS
from stack.config import StackPaths, stack_secrets
from stack.kafka_auth import (
    Grant,
    acls_for,
    add_acls,
    admin_settings,
    administrator,
    broker_secrets,
    client_passwords,
    ensure_users_and_acls,
    scram_credential_argument,
    stack_grants,
    throwaway_topic,
)


def _rules(grants: list[Grant] | tuple[Grant, ...]) -> set[tuple[str, str, str, str, bool]]:
    return {(g.user, g.resource, g.name, op, g.prefixed) for g in grants for op in g.operations}


def test_the_pipeline_writes_and_reads_its_topics_and_serving_reads_promotions_and_writes_its_metrics() -> None:
    rules = _rules(stack_grants())
    pipeline = {rule for rule in rules if rule[0] == "pipeline"}
    serving = {rule for rule in rules if rule[0] == "serving"}
    assert pipeline == {
        *{
            ("pipeline", "topic", topic.name, op, False)
            for topic in BROKER_TOPICS
            for op in ("WRITE", "READ", "DESCRIBE")
        },
        ("pipeline", "group", "mlops-", "READ", True),  # consumer groups named mlops-* (none else)
    }
    assert serving == {
        ("serving", "topic", MODEL_PROMOTED.name, "READ", False),
        ("serving", "topic", MODEL_PROMOTED.name, "DESCRIBE", False),
        ("serving", "topic", SERVING_METRICS.name, "WRITE", False),
        ("serving", "topic", SERVING_METRICS.name, "DESCRIBE", False),
    }, "serving reads promotions with assign(), without a group, writes its metrics, and reads nothing else"
    anonymous = {rule for rule in rules if rule[0] == "ANONYMOUS"}
    assert anonymous == {
        ("ANONYMOUS", "topic", S3_EVENTS.name, "WRITE", False),
        ("ANONYMOUS", "topic", S3_EVENTS.name, "DESCRIBE", False),
    }, "the S3 server's login-less listener writes its notifications and nothing else"
    assert {rule[0] for rule in rules} == {"pipeline", "serving", "monitor", "ANONYMOUS"}, (
        "admin and controller: super users"
    )
    assert not [rule for rule in rules if rule[3] in ("ALL", "ALTER", "CREATE", "DELETE", "ALTER_CONFIGS")]


def test_the_drift_monitor_reads_the_serving_metrics_and_writes_drift_verdicts_only() -> None:
    """The monitor's Spark Kafka source reads serving's metrics (its consumers' groups are named by the prefix the
    source is given, ml.drift.monitor.kafka_source_options), and its publisher writes mlops.drift.v1: nothing else."""
    rules = _rules(stack_grants())
    monitor = {rule for rule in rules if rule[0] == "monitor"}
    assert monitor == {
        ("monitor", "topic", SERVING_METRICS.name, "READ", False),
        ("monitor", "topic", SERVING_METRICS.name, "DESCRIBE", False),
        ("monitor", "group", GROUP_ID_PREFIX, "READ", True),
        ("monitor", "topic", DRIFT.name, "WRITE", False),
        ("monitor", "topic", DRIFT.name, "DESCRIBE", False),
    }
    assert GROUP_ID_PREFIX == "mlops-drift-monitor"
    assert kafka_source_options(KafkaSettings("127.0.0.1:9092"), MonitorConfig("s3://lake/c"))["groupIdPrefix"] == (
        GROUP_ID_PREFIX
    ), "the source names its groups with the prefix the ACL allows"
    # It may not write the serving topic (serving's), read any other topic, or touch the pipeline's groups.
    assert not [rule for rule in monitor if rule[2] == SERVING_METRICS.name and rule[3] == "WRITE"]
    assert {rule[2] for rule in monitor if rule[1] == "topic"} == {SERVING_METRICS.name, DRIFT.name}
    assert not [rule for rule in monitor if rule[1] == "group" and rule[2] == "mlops-"]


def test_grants_become_allow_acls_for_the_users_principal() -> None:
    from kafka.admin import ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourceType

    acls = acls_for(
        [Grant("serving", "topic", "t", ("READ", "DESCRIBE")), Grant("pipeline", "group", "g-", ("READ",), True)]
    )
    assert [(a.principal, a.host, a.operation, a.permission_type) for a in acls] == [
        ("User:serving", "*", ACLOperation.READ, ACLPermissionType.ALLOW),
        ("User:serving", "*", ACLOperation.DESCRIBE, ACLPermissionType.ALLOW),
        ("User:pipeline", "*", ACLOperation.READ, ACLPermissionType.ALLOW),
    ]
    patterns = [(a.resource_pattern.resource_type, a.resource_pattern.pattern_type) for a in acls]
    assert patterns == [
        (ResourceType.TOPIC, ACLResourcePatternType.LITERAL),
        (ResourceType.TOPIC, ACLResourcePatternType.LITERAL),
        (ResourceType.GROUP, ACLResourcePatternType.PREFIXED),
    ]


def test_the_scram_credential_is_salted_and_hashed_as_kafka_does() -> None:
    salt = b"0123456789abcdef01234567"
    value = scram_credential_argument("admin", "the-password", salt=salt)
    match = re.fullmatch(
        r'SCRAM-SHA-512=\[name=admin,iterations=8192,salt="(?P<salt>[^"]+)",saltedpassword="(?P<salted>[^"]+)"\]', value
    )
    assert match, value
    assert base64.b64decode(match["salt"]) == salt
    assert base64.b64decode(match["salted"]) == hashlib.pbkdf2_hmac("sha512", b"the-password", salt, 8192)
    assert "the-password" not in value
    assert scram_credential_argument("admin", "the-password") != scram_credential_argument("admin", "the-password")


class FakeAdmin:
    """A KafkaAdminClient double: records what it is asked; `refuse` makes the broker refuse ACLs or users."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.calls: list[tuple[str, Any]] = []
        self.closed = False

    def alter_user_scram_credentials(self, upserts: list[Any]) -> dict[str, str | None]:
        self.calls.append(("users", [(u.user, u.mechanism.name, u.iterations) for u in upserts]))
        return {u.user: ("refused" if self.refuse == "users" else None) for u in upserts}

    def create_acls(self, acls: list[Any]) -> dict[str, list[Any]]:
        self.calls.append(("acls", list(acls)))
        return {
            "succeeded": [] if self.refuse == "acls" else acls,
            "failed": ["SecurityDisabledError"] if self.refuse == "acls" else [],
        }

    def delete_acls(self, filters: list[Any]) -> list[Any]:
        self.calls.append(("delete_acls", [(f.principal, f.resource_pattern.resource_name) for f in filters]))
        return []

    def create_topics(self, topics: list[Any]) -> None:
        self.calls.append(("create_topics", [(t.name, t.num_partitions) for t in topics]))

    def delete_topics(self, names: list[str]) -> None:
        self.calls.append(("delete_topics", names))

    def close(self) -> None:
        self.closed = True


class AdminFactory:
    """ml.clients.kafka_admin, faked: each client made, with the settings it was made for."""

    def __init__(self) -> None:
        self.made: list[tuple[KafkaSettings, FakeAdmin]] = []
        self.refuse = ""

    def __call__(self, kafka: KafkaSettings, **options: Any) -> FakeAdmin:
        self.made.append((kafka, FakeAdmin(self.refuse)))
        return self.made[-1][1]


@pytest.fixture
def fake_admin(monkeypatch: pytest.MonkeyPatch) -> AdminFactory:
    import ml.clients

    factory = AdminFactory()
    monkeypatch.setattr(ml.clients, "kafka_admin", factory)
    return factory


def test_users_and_acls_are_made_as_admin(fake_admin: AdminFactory) -> None:
    admin = KafkaSettings("127.0.0.1:9092", username="admin", password="a")
    done = ensure_users_and_acls(admin, {"pipeline": "p", "serving": "s"})
    [(used, client)] = fake_admin.made
    assert used == admin and client.closed
    assert client.calls[0] == ("users", [("pipeline", "SCRAM_SHA_512", 8192), ("serving", "SCRAM_SHA_512", 8192)])
    assert client.calls[1][0] == "acls" and len(client.calls[1][1]) == done["acls"] == len(acls_for(stack_grants()))
    assert done["users"] == ["pipeline", "serving"]


@pytest.mark.parametrize("refuse", ["users", "acls"])
def test_a_refusal_is_an_error_naming_what_was_refused(fake_admin: AdminFactory, refuse: str) -> None:
    fake_admin.refuse = refuse
    with pytest.raises(RuntimeError, match="refused") as raised:
        ensure_users_and_acls(KafkaSettings("h:9092", username="admin", password="a"), {"pipeline": "p"})
    assert ("SCRAM credentials of ['pipeline']" in str(raised.value)) == (refuse == "users")
    assert fake_admin.made[-1][1].closed
    with pytest.raises(RuntimeError, match="Kafka refused 1 of 1 ACLs"):
        add_acls(FakeAdmin("acls"), [Grant("u", "topic", "t", ("READ",))])


def test_the_stack_users_passwords_are_generated_per_stack(tmp_path: Any) -> None:
    paths, other = StackPaths(tmp_path / "one"), StackPaths(tmp_path / "two")
    admin = admin_settings(paths)
    assert (admin.username, admin.security_protocol, admin.sasl_mechanism) == (
        "admin",
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
    )
    assert (
        admin.password == stack_secrets(paths)["kafka_admin_password"] != stack_secrets(other)["kafka_admin_password"]
    )
    assert broker_secrets(paths).admin_password == admin.password
    assert admin.password not in repr(broker_secrets(paths)) and admin.password not in repr(admin)
    passwords = client_passwords(paths)
    assert set(passwords) == {"pipeline", "serving", "monitor"} and len(set(passwords.values())) == 3


def test_tests_and_benchmarks_administer_the_stacks_broker_as_admin(tmp_path: Any) -> None:
    paths = StackPaths(tmp_path)
    pipeline = KafkaSettings("127.0.0.1:9092", username="pipeline", password="p")
    assert administrator(pipeline, paths) == admin_settings(paths)
    own = KafkaSettings("kafka.example:9092")  # a broker of your own without logins
    assert administrator(own, paths) == own
    elsewhere = KafkaSettings("kafka.example:9092", username="pipeline", password="p")
    assert administrator(elsewhere, paths) == elsewhere


def test_a_throwaway_topic_gets_and_loses_its_users_acls(fake_admin: AdminFactory, tmp_path: Any) -> None:
    paths = StackPaths(tmp_path)
    pipeline = KafkaSettings("127.0.0.1:9092", username="pipeline", password="p")
    with throwaway_topic(pipeline, paths, "test.abc", partitions=2) as name:
        assert name == "test.abc"
        [(creator, client)] = fake_admin.made
        assert creator == admin_settings(paths) and client.closed
        assert client.calls[0] == ("create_topics", [("test.abc", 2)])
        granted = {
            (acl.principal, acl.resource_pattern.resource_name, acl.operation.name) for acl in client.calls[1][1]
        }
        assert granted == {("User:pipeline", "test.abc", op) for op in ("WRITE", "READ", "DESCRIBE")}
    deleter = fake_admin.made[-1][1]
    assert deleter.calls[0] == ("delete_topics", ["test.abc"])
    assert deleter.calls[1][0] == "delete_acls" and {p for p, _ in deleter.calls[1][1]} == {"User:pipeline"}

    fake_admin.made.clear()
    own = KafkaSettings("kafka.example:9092")
    with throwaway_topic(own, paths, "test.def"):
        pass
    assert [call[0] for _, client in fake_admin.made for call in client.calls] == ["create_topics", "delete_topics"]
