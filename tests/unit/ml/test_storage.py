"""ml.storage: S3 URIs, the lake's key layout, and the small object helpers against an in-memory S3 (moto)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ml.settings import LakeSettings, S3Settings
from ml.storage import (
    FEATURE_SPEC_FILE,
    MANIFEST_FILE,
    S3Uri,
    create_json,
    delete_prefix,
    error_code,
    evaluation_uri,
    exists,
    feature_spec_uri,
    features_uri,
    lake_root,
    latest_snapshot_uri,
    list_keys,
    read_json,
    registry_lock_uri,
    snapshot_uri,
    tune_uri,
    write_json,
)

LAKE = LakeSettings(raw_bucket="raw", lake_bucket="my-lake")


# S3Uri


@pytest.mark.parametrize(
    ("text", "bucket", "key"),
    [
        ("s3://raw/toy/data.csv", "raw", "toy/data.csv"),
        ("s3://raw/toy/", "raw", "toy/"),
        ("s3://raw", "raw", ""),
        ("s3://raw/", "raw", ""),
        ("s3a://lake/a/b", "lake", "a/b"),
        ("s3://raw/with space/ü.csv", "raw", "with space/ü.csv"),
    ],
)
def test_parse(text: str, bucket: str, key: str) -> None:
    assert S3Uri.parse(text) == S3Uri(bucket, key)


@pytest.mark.parametrize("text", ["raw/toy", "/raw/toy", "http://raw/toy", "s3:/raw", "s3://", "s3:///key", "gs://b/k"])
def test_parse_refuses_what_is_not_an_s3_uri(text: str) -> None:
    with pytest.raises(ValueError, match="not an S3 URI"):
        S3Uri.parse(text)


def test_text_forms() -> None:
    uri = S3Uri("lake", "datasets/d")
    assert str(uri) == "s3://lake/datasets/d" and uri.s3a == "s3a://lake/datasets/d"
    assert S3Uri.parse(str(uri)) == uri and S3Uri.parse(uri.s3a) == uri
    assert str(S3Uri("lake", "")) == "s3://lake/"


def test_join() -> None:
    root = S3Uri("lake", "")
    assert root.join("a", "b") == S3Uri("lake", "a/b")
    assert S3Uri("lake", "a/").join("/b/", "c/") == S3Uri("lake", "a/b/c")
    assert S3Uri("lake", "a").join("", "/") == S3Uri("lake", "a")
    assert root.join() == root
    assert S3Uri("lake", "a").join("b/c.json").key == "a/b/c.json"


def test_uris_are_values() -> None:
    assert {S3Uri("a", "b"), S3Uri("a", "b")} == {S3Uri("a", "b")}
    with pytest.raises(AttributeError):
        S3Uri("a", "b").key = "c"  # type: ignore[misc]


# The lake's layout


def test_layout() -> None:
    assert lake_root(LAKE) == S3Uri("my-lake", "")
    assert str(snapshot_uri(LAKE, "cars", "abc")) == "s3://my-lake/datasets/cars/snapshots/abc"
    assert str(snapshot_uri(LAKE, "cars", "abc").join(MANIFEST_FILE)) == (
        "s3://my-lake/datasets/cars/snapshots/abc/manifest.json"
    )
    assert str(features_uri(LAKE, "cars", "abc")) == "s3://my-lake/datasets/cars/features/abc"
    assert str(tune_uri(LAKE, "cars", "abc", "run-1")) == "s3://my-lake/tune/cars/abc/run-1"
    # Beside the tune folder, not in it: only the tune task writes lake/tune/ (stack.s3_users).
    for experiment in (tune_uri(LAKE, "cars", "abc", "run-1"), "s3://my-lake/tune/cars/abc/run-1"):
        assert str(evaluation_uri(experiment)) == "s3://my-lake/evaluations/cars/abc/run-1/evaluation.json"
    assert str(latest_snapshot_uri(LAKE, "cars")) == "s3://my-lake/datasets/cars/latest.json"
    assert str(registry_lock_uri(LAKE, "cars-model")) == "s3://my-lake/locks/registry/cars-model.lock"


def test_feature_spec_beside_the_splits() -> None:
    features = features_uri(LAKE, "cars", "abc")
    expected = S3Uri("my-lake", f"datasets/cars/features/abc/{FEATURE_SPEC_FILE}")
    assert feature_spec_uri(features) == expected
    assert feature_spec_uri(str(features)) == expected
    assert feature_spec_uri(features.s3a) == expected


def test_two_datasets_or_snapshots_never_share_a_key() -> None:
    uris = {
        str(f(LAKE, dataset, snap))
        for f in (snapshot_uri, features_uri)
        for dataset in ("a", "b")
        for snap in ("s1", "s2")
    }
    assert len(uris) == 8
    assert not any(other != uri and other.startswith(uri + "/") for uri in uris for other in uris)


# Object helpers, in an in-memory S3


@pytest.fixture
def client() -> Iterator[Any]:
    from moto import mock_aws

    from ml.clients import s3_client

    with mock_aws():
        settings = S3Settings(
            endpoint_url="https://s3.us-east-1.amazonaws.com",
            access_key_id=uuid.uuid4().hex,
            secret_access_key=uuid.uuid4().hex,
        )
        created = s3_client(settings)
        created.create_bucket(Bucket="lake")
        yield created


def test_json_round_trip(client: Any) -> None:
    uri = S3Uri("lake", "a/b.json")
    value = {"b": [1, 2.5, None], "a": "ü"}
    write_json(uri, value, client)
    assert read_json(uri, client) == value
    head = client.head_object(Bucket="lake", Key="a/b.json")
    assert head["ContentType"] == "application/json"
    body = client.get_object(Bucket="lake", Key="a/b.json")["Body"].read().decode()
    assert body.index('"a"') < body.index('"b"')  # sorted keys: the same value is the same bytes


def test_exists(client: Any) -> None:
    uri = S3Uri("lake", "x/y.json")
    assert not exists(uri, client)
    write_json(uri, {}, client)
    assert exists(uri, client)
    assert not exists(S3Uri("lake", "x"), client)  # a prefix is not an object


def test_exists_raises_what_is_not_a_missing_object() -> None:
    class Denied:
        def head_object(self, **kwargs: Any) -> None:
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")

    # a refused request is an error, never "the object is not there" (a re-run would redo finished work)
    with pytest.raises(ClientError, match="403"):
        exists(S3Uri("lake", "k"), Denied())


def test_read_json_of_a_missing_object(client: Any) -> None:
    with pytest.raises(ClientError) as failure:
        read_json(S3Uri("lake", "missing.json"), client)
    assert error_code(failure.value) == "NoSuchKey"


def test_list_and_delete_a_prefix_across_pages(client: Any) -> None:
    for i in range(1005):  # more than one listing page and one delete batch (1000 each)
        client.put_object(Bucket="lake", Key=f"run/part-{i:04d}", Body=b"")
    client.put_object(Bucket="lake", Key="run2/keep", Body=b"")
    client.put_object(Bucket="lake", Key="other/keep", Body=b"")
    listed = list_keys(S3Uri("lake", "run/"), client)
    assert len(listed) == 1005 and {"Key", "Size", "ETag"} <= set(listed[0])
    assert len(list_keys(S3Uri("lake", "run"), client)) == 1006  # a prefix, not a folder
    assert delete_prefix(S3Uri("lake", "run/"), client) == 1005
    assert [obj["Key"] for obj in list_keys(S3Uri("lake", ""), client)] == ["other/keep", "run2/keep"]
    assert delete_prefix(S3Uri("lake", "nothing/"), client) == 0


def test_create_json_writes_only_once(client: Any) -> None:
    uri = S3Uri("lake", "snap/manifest.json")
    assert create_json(uri, {"run": 1}, client) is True
    assert create_json(uri, {"run": 2}, client) is False  # the first one stays, unchanged
    assert read_json(uri, client) == {"run": 1}


def test_create_json_raises_what_is_not_a_conflict() -> None:
    class Denied:
        def put_object(self, **kwargs: Any) -> None:
            assert kwargs["IfNoneMatch"] == "*"
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")

    with pytest.raises(ClientError, match="AccessDenied"):
        create_json(S3Uri("lake", "k"), {}, Denied())


def test_delete_a_prefix_but_keep_some(client: Any) -> None:
    for name in ("a", "b", "c"):
        client.put_object(Bucket="lake", Key=f"run/{name}", Body=b"")
    assert delete_prefix(S3Uri("lake", "run/"), client, keep={"s3://lake/run/b"}) == 2
    assert [obj["Key"] for obj in list_keys(S3Uri("lake", ""), client)] == ["run/b"]


def test_error_code() -> None:
    error = ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject")
    assert error_code(error) == "NoSuchKey"
    assert error_code(ClientError({}, "GetObject")) == ""
    assert error_code(ValueError("no response")) == ""
