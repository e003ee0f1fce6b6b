"""Who may use the local Kafka broker, and for what: its SASL configuration, its users and their ACLs (issue 14).

The broker (stack.kafka_broker.KAFKA, and the private brokers of the tests, from the same functions) refuses anonymous
clients: its client listener takes SASL/SCRAM-SHA-512 only (the stack's broker has one more listener on 127.0.0.1,
without login, for the S3 server's notifications: its ANONYMOUS principal may write ml.topics.S3_EVENTS and nothing
else), its authorizer (StandardAuthorizer) denies whatever no
ACL allows (`allow.everyone.if.no.acl.found=false`). Its users, each with a password generated per stack folder
(stack.config.stack_secrets):

  admin       super user. The broker's own login on its client listener (inter-broker, SCRAM: the credential is
              written into the metadata log when the storage is formatted) and the stack's administration: it creates
              the other users, their ACLs and the topics.
  controller  super user. The broker's login to its KRaft controller listener (PLAIN, a static user of the properties
              file, so that changing admin's SCRAM password never locks the broker out of its controller).
  pipeline    the pipeline (Airflow's tasks, `python -m ml`, Tune's metrics, the tests): WRITE, READ and DESCRIBE on
              the topics of ml.topics, READ on consumer groups whose id starts with `mlops-`.
  serving     the prediction service: READ and DESCRIBE on mlops.model.promoted.v1 (it follows the topic with
              assign(), without a consumer group), WRITE and DESCRIBE on mlops.serving.metrics.v1 (its per-request
              metrics); nothing else.
  monitor     the streaming drift monitor (ml.drift): READ and DESCRIBE on mlops.serving.metrics.v1, READ on the
              consumer groups of its Spark Kafka source (ids starting with ml.drift.stream.GROUP_ID_PREFIX), WRITE
              and DESCRIBE on mlops.drift.v1 (its verdicts); nothing else.
  ANONYMOUS   (no user: the S3 server on the notifications listener) WRITE and DESCRIBE on mlops.s3.events.v1 only.

`ensure_users_and_acls` (run by `python -m stack up` and `python -m stack.init_resources` as admin) creates or updates
the SCRAM credentials of pipeline, serving and monitor and adds their ACLs; both are idempotent, so a second `up`
changes nothing. kafka-python reports a refused login only as a bootstrap KafkaTimeoutError (ml.clients says so).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ml.drift.stream import GROUP_ID_PREFIX as MONITOR_GROUP_ID_PREFIX
from ml.settings import KafkaSettings
from ml.topics import BROKER_TOPICS, DRIFT, MODEL_PROMOTED, S3_EVENTS, SERVING_METRICS
from stack.config import (
    KAFKA_ADMIN_USER,
    KAFKA_BOOTSTRAP,
    KAFKA_CLIENT_USERS,
    KAFKA_CONTROLLER_USER,
    KAFKA_MONITOR_USER,
    KAFKA_PIPELINE_USER,
    KAFKA_SERVING_USER,
    StackPaths,
    kafka_user_settings,
    stack_secrets,
)

SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192  # Kafka's minimum for SCRAM-SHA-512 is 4096
KAFKA_NOTIFIER_PRINCIPAL = "ANONYMOUS"  # Kafka's principal for a connection that did not log in
CONSUMER_GROUP_PREFIX = "mlops-"  # the pipeline's consumer groups (Airflow's Kafka provider needs one even to assign)


@dataclass(frozen=True)
class Grant:
    """One ACL rule: `user` may do each of `operations` on a resource ("topic" or "group"), named exactly or, with
    `prefixed`, every resource whose name starts with `name`."""

    user: str
    resource: str
    name: str
    operations: tuple[str, ...]
    prefixed: bool = False


def stack_grants() -> tuple[Grant, ...]:
    """What the stack's client users may do (admin and controller are super users and need no ACL). The pipeline
    writes and reads every topic (it writes the S3 notifications topic too, to replay notifications the S3 server
    could not send); serving reads promotions and writes its own metrics; the drift monitor reads serving's metrics
    (with its Spark Kafka source's consumer groups) and writes drift verdicts; ANONYMOUS, the principal of the S3
    server's login-less listener (stack.kafka_broker), may only write that topic."""
    topics = tuple(topic.name for topic in BROKER_TOPICS)
    return (
        *(Grant(KAFKA_PIPELINE_USER, "topic", name, ("WRITE", "READ", "DESCRIBE")) for name in topics),
        Grant(KAFKA_PIPELINE_USER, "group", CONSUMER_GROUP_PREFIX, ("READ",), prefixed=True),
        Grant(KAFKA_SERVING_USER, "topic", MODEL_PROMOTED.name, ("READ", "DESCRIBE")),
        Grant(KAFKA_SERVING_USER, "topic", SERVING_METRICS.name, ("WRITE", "DESCRIBE")),
        Grant(KAFKA_MONITOR_USER, "topic", SERVING_METRICS.name, ("READ", "DESCRIBE")),
        Grant(KAFKA_MONITOR_USER, "group", MONITOR_GROUP_ID_PREFIX, ("READ",), prefixed=True),
        Grant(KAFKA_MONITOR_USER, "topic", DRIFT.name, ("WRITE", "DESCRIBE")),
        Grant(KAFKA_NOTIFIER_PRINCIPAL, "topic", S3_EVENTS.name, ("WRITE", "DESCRIBE")),
    )


# --- the broker's configuration -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerSecrets:
    """The passwords the broker itself needs: admin's (its inter-broker SCRAM login, and the SCRAM credential written
    at format time) and controller's (its PLAIN login to the controller listener)."""

    admin_password: str
    controller_password: str

    def __repr__(self) -> str:
        return "BrokerSecrets(...)"


def broker_secrets(paths: StackPaths) -> BrokerSecrets:
    """The local broker's passwords, from the stack folder's generated secrets."""
    stored = stack_secrets(paths)
    return BrokerSecrets(
        stored[f"kafka_{KAFKA_ADMIN_USER}_password"], stored[f"kafka_{KAFKA_CONTROLLER_USER}_password"]
    )


def broker_security_properties(broker_secrets: BrokerSecrets) -> str:
    """The properties lines that make a KRaft broker+controller authenticate every connection and authorize every
    request (appended to stack.kafka_broker.KAFKA_PROPERTIES, whose listeners are SASL_PLAINTEXT)."""
    scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required"
    plain_login = "org.apache.kafka.common.security.plain.PlainLoginModule required"
    admin, controller = broker_secrets.admin_password, broker_secrets.controller_password
    lines = [
        "# Clients and the broker itself: SASL/SCRAM-SHA-512 (users and their credentials live in the metadata log).",
        f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
        f"listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram_login} "
        f'username="{KAFKA_ADMIN_USER}" password="{admin}";',
        "# Broker -> controller: PLAIN, with the one static user this file defines.",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={plain_login} "
        f'username="{KAFKA_CONTROLLER_USER}" password="{controller}" user_{KAFKA_CONTROLLER_USER}="{controller}";',
        "# Every request is authorized: what no ACL allows is refused.",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{KAFKA_ADMIN_USER};User:{KAFKA_CONTROLLER_USER}",
        "allow.everyone.if.no.acl.found=false",
    ]
    return "\n".join(lines) + "\n"


def scram_credential_argument(user: str, password: str, *, salt: bytes | None = None) -> str:
    """The StorageTool's `--add-scram` value for a user in its salted form: the salt and the PBKDF2 of the password,
    never the password itself. The value still logs in by SCRAM: keep it off command lines (prepare_kafka_storage)."""
    salt = salt if salt is not None else secrets.token_bytes(24)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)
    encoded_salt, encoded_salted = base64.b64encode(salt).decode(), base64.b64encode(salted).decode()
    return (
        f'{SCRAM_MECHANISM}=[name={user},iterations={SCRAM_ITERATIONS},salt="{encoded_salt}",'
        f'saltedpassword="{encoded_salted}"]'
    )


def storage_fingerprint(broker_secrets: BrokerSecrets) -> str:
    """What the stack records next to a storage it formatted with admin's SCRAM credential: a hash of the password
    (never the password), so that a storage formatted without SASL, or for another password, is recognised."""
    return hashlib.sha256(f"mlops-kafka-storage:{broker_secrets.admin_password}".encode()).hexdigest()


# --- users and ACLs, as admin ----------------------------------------------------------------------------------------


def admin_settings(paths: StackPaths, bootstrap: str = KAFKA_BOOTSTRAP) -> KafkaSettings:
    """The local broker's admin login (creates users, ACLs and topics)."""
    return kafka_user_settings(paths, KAFKA_ADMIN_USER, bootstrap)


def acls_for(grants: Iterable[Grant]) -> list[Any]:
    """kafka-python ACL objects for the grants (ALLOW, from any host)."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    acls = []
    for grant in grants:
        pattern = ResourcePattern(
            ResourceType[grant.resource.upper()],
            grant.name,
            ACLResourcePatternType.PREFIXED if grant.prefixed else ACLResourcePatternType.LITERAL,
        )
        for operation in grant.operations:
            acls.append(ACL(f"User:{grant.user}", "*", ACLOperation[operation], ACLPermissionType.ALLOW, pattern))
    return acls


def add_acls(admin: Any, grants: Sequence[Grant]) -> int:
    """Add the grants' ACLs through a KafkaAdminClient (adding one that exists changes nothing); returns how many
    rules were sent. Raises RuntimeError naming the ones the broker refused."""
    acls = acls_for(grants)
    result = admin.create_acls(acls)
    if result["failed"]:
        raise RuntimeError(f"Kafka refused {len(result['failed'])} of {len(acls)} ACLs: {result['failed']}")
    return len(acls)


def remove_acls(admin: Any, grants: Sequence[Grant]) -> None:
    """Delete the grants' ACLs (a topic's ACLs outlive the topic: throwaway topics remove theirs)."""
    from kafka.admin import ACLFilter

    filters = [
        ACLFilter(acl.principal, acl.host, acl.operation, acl.permission_type, acl.resource_pattern)
        for acl in acls_for(grants)
    ]
    admin.delete_acls(filters)


def set_scram_passwords(admin: Any, passwords: Mapping[str, str]) -> None:
    """Create or update each user's SCRAM-SHA-512 credential (an upsert: running it again keeps them valid)."""
    from kafka.admin import UserScramCredentialUpsertion

    upserts = [
        UserScramCredentialUpsertion(user, SCRAM_MECHANISM, password, iterations=SCRAM_ITERATIONS)
        for user, password in passwords.items()
    ]
    errors = {user: error for user, error in admin.alter_user_scram_credentials(upserts).items() if error}
    if errors:
        raise RuntimeError(f"Kafka refused the SCRAM credentials of {sorted(errors)}: {errors}")


def ensure_users_and_acls(admin_kafka: KafkaSettings, passwords: Mapping[str, str]) -> dict[str, Any]:
    """As admin: the client users' credentials (`passwords`: user -> password) and the stack's ACLs. Idempotent."""
    from ml.clients import kafka_admin

    admin = kafka_admin(admin_kafka, client_id="mlops-stack-admin", request_timeout_ms=15000)
    try:
        set_scram_passwords(admin, passwords)
        rules = add_acls(admin, stack_grants())
    finally:
        admin.close()
    return {"users": sorted(passwords), "acls": rules}


def client_passwords(paths: StackPaths) -> dict[str, str]:
    """The stack's client users and their generated passwords."""
    stored = stack_secrets(paths)
    return {user: stored[f"kafka_{user}_password"] for user in KAFKA_CLIENT_USERS}


# --- throwaway topics (tests, benchmarks) ----------------------------------------------------------------------------


def administrator(kafka: KafkaSettings, paths: StackPaths) -> KafkaSettings:
    """The login that administers `kafka`'s broker: the stack's admin when `kafka` is one of the stack's users on the
    stack's broker; else `kafka` itself (a broker of your own, with or without logins)."""
    if kafka.bootstrap_servers == KAFKA_BOOTSTRAP and kafka.username in KAFKA_CLIENT_USERS:
        return admin_settings(paths)
    return kafka


def _topic_grants(kafka: KafkaSettings, name: str) -> list[Grant]:
    return [Grant(kafka.username, "topic", name, ("WRITE", "READ", "DESCRIBE"))] if kafka.username else []


def create_throwaway_topic(kafka: KafkaSettings, paths: StackPaths, name: str, partitions: int = 1) -> None:
    """Create topic `name` as the broker's administrator, and let `kafka`'s user write, read and describe it (on a
    broker with ACLs; a broker without logins needs none)."""
    from kafka.admin import NewTopic

    from ml.clients import kafka_admin

    owner = administrator(kafka, paths)
    admin = kafka_admin(owner, client_id="mlops-throwaway-topics")
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        if kafka.uses_sasl and owner != kafka:
            add_acls(admin, _topic_grants(kafka, name))
    finally:
        admin.close()


def delete_throwaway_topic(kafka: KafkaSettings, paths: StackPaths, name: str) -> None:
    """Delete a topic create_throwaway_topic made, and its ACLs (they would outlive it)."""
    from ml.clients import kafka_admin

    owner = administrator(kafka, paths)
    admin = kafka_admin(owner, client_id="mlops-throwaway-topics")
    try:
        admin.delete_topics([name])
        if kafka.uses_sasl and owner != kafka:
            remove_acls(admin, _topic_grants(kafka, name))
    finally:
        admin.close()


@contextmanager
def throwaway_topic(kafka: KafkaSettings, paths: StackPaths, name: str, partitions: int = 1) -> Iterator[str]:
    """A topic for one test or benchmark that `kafka`'s user may use, deleted (with its ACLs) afterwards."""
    create_throwaway_topic(kafka, paths, name, partitions)
    try:
        yield name
    finally:
        delete_throwaway_topic(kafka, paths, name)
