"""The stack's Kafka security against a real broker (stack/kafka_broker.py, stack/kafka_auth.py): anonymous clients
and wrong passwords are refused, the pipeline's user publishes promotion events, the serving user follows them with
assign() and may write only its metrics, the drift monitor's reads the serving metrics in its own consumer groups and
writes drift events only, and preparing the broker again (a second `make stack-up`, a restart) changes
nothing.

The broker is a private one (tests/support/private_services.py: the stack's own properties and storage preparation,
on free ports of 127.0.0.1, with passwords of its own), prepared as `python -m stack up` prepares the stack's; the
shared stack's broker is never touched. It needs the Kafka jars of `make tools`, no running stack.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka.errors import GroupAuthorizationFailedError, KafkaTimeoutError, TopicAuthorizationFailedError

from ml.clients import close_quietly, kafka_admin, kafka_consumer, kafka_producer
from ml.events.consumer import open_topic
from ml.events.publisher import EventPublishError, publish_event
from ml.settings import KafkaSettings
from ml.topics import BROKER_TOPICS, DRIFT, MODEL_PROMOTED, PIPELINE_EVENTS, SERVING_METRICS, TRAINING_METRICS
from stack.kafka_broker import kafka_properties
from tests.integration.ml.events.support import read_all
from tests.support.private_services import PrivateKafka, running_private_kafka
from tests.unit.ml.events.samples import DRIFT as DRIFT_PAYLOAD

FAST = {"bootstrap_timeout_ms": 4000, "request_timeout_ms": 4000}  # a refused login shows as a bootstrap timeout
PROMOTED = {
    "model_name": "m",
    "version": "2",
    "alias": "champion",
    "previous_version": "1",
    "metric": "accuracy",
    "value": 0.9,
    "previous_value": 0.8,
    "reason": "better",
}
SERVED = {
    "request_id": uuid.uuid4().hex,
    "model_name": "m",
    "model_version": "2",
    "task": "classification",
    "status": 200,
    "latency_ms": 1.5,
    "rows": 1,
    "prediction_summary": {"count": 1, "class_counts": {"yes": 1}},
    "rows_logged": 0,
    "inputs": None,
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    with running_private_kafka(tmp_path_factory.mktemp("kafka-sasl")) as server:
        yield server


def check_group_access(user: KafkaSettings, topic: str, group: str, *, allowed: bool) -> None:
    """`user` subscribing to `topic` in consumer group `group` gets a partition (allowed) or a group refusal."""
    consumer = kafka_consumer(user, group_id=group, auto_offset_reset="earliest", **FAST)
    try:
        consumer.subscribe([topic])
        if allowed:
            deadline = time.monotonic() + 30
            while not consumer.assignment() and time.monotonic() < deadline:
                consumer.poll(timeout_ms=500)
            assert consumer.assignment(), f"group {group} got no partition"
        else:
            with pytest.raises(GroupAuthorizationFailedError):
                for _ in range(20):
                    consumer.poll(timeout_ms=500)
    finally:
        close_quietly(consumer)


def test_the_broker_runs_the_stacks_own_configuration(broker: PrivateKafka) -> None:
    assert broker.broker_secrets is not None
    kafka_dir = broker.paths.data / "kafka"
    ports = (broker.service.port, *broker.service.extra_ports)
    expected = kafka_properties(kafka_dir / "logs", broker.broker_secrets, *ports)
    assert (kafka_dir / "server.properties").read_text() == expected


def test_an_anonymous_client_is_refused(broker: PrivateKafka) -> None:
    with pytest.raises(KafkaTimeoutError, match="requires authentication: a client without credentials"):
        kafka_admin(KafkaSettings(broker.bootstrap), **FAST)
    controller = f"127.0.0.1:{broker.service.extra_ports[0]}"
    with pytest.raises(KafkaTimeoutError):  # the KRaft controller's listener takes no client either
        kafka_admin(KafkaSettings(controller, username="admin", password=broker.passwords["admin"]), **FAST)


def test_a_wrong_password_is_refused_and_the_error_says_to_check_the_credentials(broker: PrivateKafka) -> None:
    wrong = broker.settings("pipeline", password="not-" + broker.passwords["pipeline"])
    with pytest.raises(
        KafkaTimeoutError, match=r"check the credentials: a wrong password or unknown user \('pipeline'"
    ):
        kafka_producer(wrong, **FAST)
    with pytest.raises(EventPublishError, match="check the credentials"):
        publish_event(wrong, MODEL_PROMOTED, PROMOTED, key="m", timeout_s=4)
    with pytest.raises(KafkaTimeoutError, match="check the credentials"):
        kafka_admin(broker.settings("nobody", password=uuid.uuid4().hex), **FAST)


def test_the_pipeline_publishes_a_promotion_and_serving_follows_it_without_a_group(broker: PrivateKafka) -> None:
    """The prediction service's path (ml.serve.reload): open_topic assigns every partition, no consumer group."""
    serving = broker.settings("serving")
    follower = open_topic(serving, MODEL_PROMOTED.name, client_id="mlops-serve-test")
    try:
        model = f"model-{uuid.uuid4().hex[:8]}"
        sent = publish_event(broker.settings("pipeline"), MODEL_PROMOTED, {**PROMOTED, "model_name": model}, key=model)
        received: list[Any] = []
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            received += [r for batch in follower.poll(timeout_ms=500).values() for r in batch]
        assert [record.key.decode() for record in received] == [model]
    finally:
        close_quietly(follower)
    [again] = [r for r in read_all(serving, MODEL_PROMOTED.name, 1) if r.key.decode() == model]
    assert sent["event_id"] in again.value.decode()


def test_serving_writes_its_metrics_and_may_not_write_the_promotion_topic(broker: PrivateKafka) -> None:
    """Its produce request is refused for the promotion topic, idempotent or not (serving's WRITE on its metrics topic
    gives an idempotent producer its producer id, KIP-679: the refusal is then the topic's)."""
    serving = broker.settings("serving")
    producer = kafka_producer(serving, acks="all", enable_idempotence=False, **FAST)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(MODEL_PROMOTED.name, key=b"m", value=b"{}").get(timeout=10)
    finally:
        close_quietly(producer)
    with pytest.raises(EventPublishError, match="TopicAuthorizationFailedError"):
        publish_event(serving, MODEL_PROMOTED, PROMOTED, key="m", timeout_s=10)
    publish_event(serving, SERVING_METRICS, SERVED, key="m:" + SERVED["request_id"], timeout_s=10)


def test_serving_sees_no_other_topic(broker: PrivateKafka) -> None:
    with pytest.raises(LookupError, match="does not exist or user 'serving' may not describe it"):
        open_topic(broker.settings("serving"), PIPELINE_EVENTS.name, **FAST)


def test_the_monitor_reads_the_serving_metrics_in_its_groups_and_writes_drift_only(broker: PrivateKafka) -> None:
    """The drift monitor's user: it reads mlops.serving.metrics.v1 in consumer groups named like Spark's Kafka source
    names them (GROUP_ID_PREFIX), writes mlops.drift.v1, and may neither write the serving metrics nor see the
    pipeline's topics."""
    from ml.drift.stream import GROUP_ID_PREFIX

    monitor = broker.settings("monitor")
    publish_event(monitor, DRIFT, DRIFT_PAYLOAD, key="m:4:w", timeout_s=10)
    with pytest.raises(EventPublishError, match="TopicAuthorizationFailedError"):
        publish_event(monitor, SERVING_METRICS, SERVED, key="m:" + SERVED["request_id"], timeout_s=10)
    with pytest.raises(LookupError, match="does not exist or user 'monitor' may not describe it"):
        open_topic(monitor, PIPELINE_EVENTS.name, **FAST)
    check_group_access(monitor, SERVING_METRICS.name, f"{GROUP_ID_PREFIX}-{uuid.uuid4().hex[:6]}", allowed=True)
    check_group_access(monitor, SERVING_METRICS.name, f"mlops-{uuid.uuid4().hex[:6]}", allowed=False)


def test_the_pipeline_writes_its_topics_and_administers_nothing(broker: PrivateKafka) -> None:
    from kafka.admin import NewTopic

    pipeline = broker.settings("pipeline")
    payloads = {
        TRAINING_METRICS: {"run_name": "r", "trial_id": "t", "epoch": 1, "metrics": {"val_loss": 0.5}, "params": {}},
        PIPELINE_EVENTS: {"dag_id": "d", "task_id": None, "event": "run_succeeded", "details": {}},
    }
    for topic, payload in payloads.items():
        publish_event(pipeline, topic, payload, key="k")
    admin = kafka_admin(pipeline, **FAST)
    try:
        assert set(admin.list_topics()) == {topic.name for topic in BROKER_TOPICS}, "it sees its own topics only"
        with pytest.raises(TopicAuthorizationFailedError):
            admin.create_topics([NewTopic(f"test.{uuid.uuid4().hex[:8]}", num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def test_the_pipeline_reads_in_consumer_groups_named_mlops_only(broker: PrivateKafka) -> None:
    pipeline = broker.settings("pipeline")
    check_group_access(pipeline, MODEL_PROMOTED.name, f"mlops-test-{uuid.uuid4().hex[:6]}", allowed=True)
    check_group_access(pipeline, MODEL_PROMOTED.name, f"other-{uuid.uuid4().hex[:6]}", allowed=False)


def test_preparing_again_and_restarting_changes_nothing(
    broker: PrivateKafka, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second `make stack-up`: users and ACLs are set again (the same), no topic is created, and a restart keeps
    the storage (no new format), its users and its ACLs."""
    again = broker.prepare()
    assert again["topics_created"] == [] and again["users"] == ["monitor", "pipeline", "serving"]
    fingerprint = (broker.paths.data / "kafka" / "sasl-storage").read_text()
    meta = (broker.paths.data / "kafka" / "logs" / "meta.properties").read_text()
    broker.stop()
    broker.start()
    assert "formatting it again" not in capsys.readouterr().out
    assert (broker.paths.data / "kafka" / "logs" / "meta.properties").read_text() == meta
    assert (broker.paths.data / "kafka" / "sasl-storage").read_text() == fingerprint
    model = f"model-{uuid.uuid4().hex[:8]}"
    publish_event(broker.settings("pipeline"), MODEL_PROMOTED, {**PROMOTED, "model_name": model}, key=model)
    assert [r for r in read_all(broker.settings("serving"), MODEL_PROMOTED.name, 3) if r.key.decode() == model]
    with pytest.raises(EventPublishError, match="TopicAuthorizationFailedError"):
        publish_event(broker.settings("serving"), MODEL_PROMOTED, PROMOTED, key="m", timeout_s=10)
