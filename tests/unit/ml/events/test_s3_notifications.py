"""ml.events.s3_notifications: bucket notifications as Versity S3 Gateway and AWS write them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ml.events.s3_notifications import CreatedObject, NotificationError, created_objects


def _record(event: str = "s3:ObjectCreated:Put", bucket: str = "raw", key: str = "cars/part-1.csv") -> dict[str, Any]:
    """One record as the gateway sends it (s3event/event.go: EventRecord)."""
    return {
        "eventVersion": "2.2",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-12-02T21:00:00Z",
        "eventName": event,
        "userIdentity": {"PrincipalId": "pipeline"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "", "x-amz-id-2": ""},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "webhook-global",
            "bucket": {"name": bucket, "ownerIdentity": {"PrincipalId": "root"}, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key, "size": 1234, "eTag": '"0f343b0931126a20f133d67c2b018a3b"', "sequencer": "1"},
        },
        "glacierEventData": {"restoreEventData": {}},
    }


def _message(*records: dict[str, Any]) -> bytes:
    return json.dumps({"Records": list(records)}).encode()


def test_a_created_object_is_read_with_its_etag_unquoted() -> None:
    [created] = created_objects(_message(_record()))
    assert created == CreatedObject(
        bucket="raw",
        key="cars/part-1.csv",
        size=1234,
        etag="0f343b0931126a20f133d67c2b018a3b",
        event="s3:ObjectCreated:Put",
        event_time="2026-12-02T21:00:00Z",
        sequencer="1",
    )
    assert created.uri == "s3://raw/cars/part-1.csv"
    assert CreatedObject.from_dict(json.loads(json.dumps(created.as_dict()))) == created


def test_a_fingerprint_is_the_same_for_one_notification_and_differs_between_uploads_of_one_key() -> None:
    [first] = created_objects(_message(_record()))
    [again] = created_objects(_message(_record()))  # delivered twice
    later = {**_record(), "eventTime": "2026-12-02T21:05:00Z"}
    [rewritten] = created_objects(_message(later))  # the same key and content, uploaded again
    assert first.fingerprint == again.fingerprint != rewritten.fingerprint


def test_keys_are_decoded_as_aws_encodes_them() -> None:
    # AWS form-encodes keys (a space is "+"); the gateway passes on the request path, which clients percent-encode.
    [aws, gateway] = created_objects(
        _message(_record(key="cars/my+file%281%29.csv"), _record(key="cars/a%20b%2Bc.csv"))
    )
    assert (aws.key, gateway.key) == ("cars/my file(1).csv", "cars/a b+c.csv")


def test_every_way_of_creating_counts_and_nothing_else_does() -> None:
    events = [
        "s3:ObjectCreated:Put",
        "s3:ObjectCreated:CompleteMultipartUpload",
        "s3:ObjectCreated:Copy",
        "s3:ObjectRemoved:Delete",
        "s3:ObjectTagging:Put",
    ]
    found = created_objects(_message(*(_record(event, key=f"k{i}") for i, event in enumerate(events))))
    assert [(c.event, c.key) for c in found] == [(events[0], "k0"), (events[1], "k1"), (events[2], "k2")]


def test_the_servers_start_up_test_message_gives_no_object() -> None:
    test_event = {"Service": "S3", "Event": "s3:TestEvent", "Time": "2026-12-02T21:00:00Z", "Bucket": "Test-Bucket"}
    assert created_objects(json.dumps(test_event)) == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[]", "not an S3 bucket notification"),
        (b'{"Records": []}', "not an S3 bucket notification"),
        (json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put"}]}).encode(), "not an S3 bucket notification"),
        (_message({**_record(), "s3": {"bucket": {"name": "raw"}, "object": {"key": ""}}}), "notification"),
        (_message({**_record(), "eventName": "ObjectCreated"}), "not an S3 bucket notification"),
    ],
)
def test_anything_else_is_a_notification_error_saying_what_is_wrong(value: bytes, why: str) -> None:
    with pytest.raises(NotificationError, match=why):
        created_objects(value)
