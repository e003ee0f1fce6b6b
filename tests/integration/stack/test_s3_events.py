"""The S3 server's bucket notifications into Kafka (issue 15), against a private broker and a private S3 server built
as the stack's (tests/support/private_services.py: stack.kafka_broker's properties with the notifications listener,
stack.services.s3_gateway_command with its notification flags), so that stopping the broker touches nothing shared.

What is proven: an upload is notified on ml.topics.S3_EVENTS in AWS's format, with the object's key and ETag; the
login-less listener lets its ANONYMOUS principal write that topic and nothing else; with the broker down, uploads still
succeed and their notifications are lost (the S3 server retries, then drops them: documented, with the recovery),
while uploads after the broker is back are notified again, and `python -m ml events replay-uploads` sends the lost
notification.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from ml.clients import close_quietly, kafka_consumer, kafka_producer
from ml.events.consumer import open_topic
from ml.events.replay import replay_uploads
from ml.events.s3_notifications import CreatedObject, created_objects
from ml.settings import KafkaSettings, S3Settings
from ml.storage import S3Uri
from ml.topics import S3_EVENTS, TRAINING_METRICS
from stack.process import wait_until
from tests.support.private_services import PrivateKafka, PrivateServer, S3Keys, private_s3, running_private_kafka

BUCKET = "raw"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    with running_private_kafka(tmp_path_factory.mktemp("kafka-s3-events"), notifier=True) as server:
        yield server


@pytest.fixture(scope="module")
def s3(broker: PrivateKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateServer, Any]]:
    """A private S3 server notifying the private broker (started after the broker has its topic, as `up` does)."""
    from ml.clients import s3_client

    server, keys = private_s3(tmp_path_factory.mktemp("s3-events"), notify_kafka=broker.notifier_bootstrap)
    server.start()
    try:
        client = s3_client(_s3_settings(server, keys))
        client.create_bucket(Bucket=BUCKET)
        yield server, client
    finally:
        server.stop()


def _s3_settings(server: PrivateServer, keys: S3Keys) -> S3Settings:
    return S3Settings(
        endpoint_url=f"http://127.0.0.1:{server.service.port}",
        access_key_id=keys.access_key,
        secret_access_key=keys.secret_key,
        region="us-east-1",
    )


def _notified(broker: PrivateKafka, consumer: Any, key: str, deadline_s: float = 30.0) -> list[CreatedObject]:
    """The notifications of `key` read from `consumer` within `deadline_s` (a bound on a broken setup, not a wait
    for time to pass: it returns as soon as one arrives)."""
    found: list[CreatedObject] = []
    deadline = time.monotonic() + deadline_s
    while not found and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                notified = created_objects(record.value, url_encoded_keys=False)  # the gateway's keys are plain
                found += [created for created in notified if created.key == key]
    return found


def test_an_upload_is_notified_in_aws_format(broker: PrivateKafka, s3: tuple[PrivateServer, Any]) -> None:
    _, client = s3
    key = f"cars/{uuid.uuid4().hex[:8]}/part 1+x%2B.csv"  # a space, a "+" and a "%": the key comes back as it is
    consumer = open_topic(broker.settings(), S3_EVENTS.name)
    try:
        put = client.put_object(Bucket=BUCKET, Key=key, Body=b"a,b\n1,2\n")
        [created] = _notified(broker, consumer, key)
    finally:
        close_quietly(consumer)
    assert (created.bucket, created.key, created.size) == (BUCKET, key, 8)
    assert created.etag == put["ETag"].strip('"')
    assert created.event == "s3:ObjectCreated:Put"
    assert created.uri == f"s3://{BUCKET}/{key}"


def test_the_notifications_listener_lets_anonymous_write_its_topic_and_nothing_else(broker: PrivateKafka) -> None:
    anonymous = KafkaSettings(broker.notifier_bootstrap)  # PLAINTEXT, no login: Kafka's ANONYMOUS principal
    producer = kafka_producer(anonymous, max_block_ms=5000, request_timeout_ms=5000, retries=0)
    try:
        producer.send(S3_EVENTS.name, b'{"Event": "s3:TestEvent"}').get(timeout=10)  # what the S3 server does
        with pytest.raises((TopicAuthorizationFailedError, KafkaError)):
            producer.send(TRAINING_METRICS.name, b"{}").get(timeout=10)
    finally:
        close_quietly(producer)
    consumer = kafka_consumer(anonymous, group_id=None, request_timeout_ms=5000, consumer_timeout_ms=2000)
    try:
        from kafka import TopicPartition

        consumer.assign([TopicPartition(S3_EVENTS.name, 0)])
        with pytest.raises(TopicAuthorizationFailedError):
            consumer.seek_to_beginning()
            consumer.poll(timeout_ms=5000)
            consumer.position(TopicPartition(S3_EVENTS.name, 0))
    finally:
        close_quietly(consumer)


def test_uploads_succeed_while_kafka_is_down_and_later_ones_are_notified_again(
    broker: PrivateKafka, s3: tuple[PrivateServer, Any]
) -> None:
    server, client = s3
    down_key, back_key = (f"cars/{uuid.uuid4().hex[:8]}/{name}.csv" for name in ("while-down", "after"))
    broker.stop()
    try:
        client.put_object(Bucket=BUCKET, Key=down_key, Body=b"a\n1\n")  # the upload itself never waits for Kafka
        assert client.head_object(Bucket=BUCKET, Key=down_key)["ContentLength"] == 4
        # The gateway retries its send, then gives up and only says so on stderr: the notification is lost.
        assert wait_until(lambda: "failed to send kafka event" in server.log_tail(200), 90.0, interval_s=0.5), (
            server.log_tail()
        )
    finally:
        broker.start()
    consumer = open_topic(broker.settings(), S3_EVENTS.name, from_beginning=True)
    try:
        client.put_object(Bucket=BUCKET, Key=back_key, Body=b"a\n2\n")
        assert len(_notified(broker, consumer, back_key, deadline_s=60.0)) == 1, "notified again once Kafka is back"
    finally:
        close_quietly(consumer)
    lost = open_topic(broker.settings(), S3_EVENTS.name, from_beginning=True, consumer_timeout_ms=2000)
    try:
        keys = {created.key for record in lost for created in created_objects(record.value, url_encoded_keys=False)}
    finally:
        close_quietly(lost)
    assert back_key in keys and down_key not in keys, "the upload made while Kafka was down is not on the topic"

    # The recovery: `python -m ml events replay-uploads` notifies the prefix's objects again, as the watcher reads them.
    consumer = open_topic(broker.settings(), S3_EVENTS.name)
    try:
        replayed = replay_uploads(S3Uri.parse(f"s3://{BUCKET}/{down_key}"), client, broker.settings())
        assert replayed["replayed"] == 1
        [created] = _notified(broker, consumer, down_key)
    finally:
        close_quietly(consumer)
    assert created.etag == client.head_object(Bucket=BUCKET, Key=down_key)["ETag"].strip('"')
