"""S3 access shared by every stage: URI parsing, clients for the configured endpoint, the lake's key layout.

Lake layout (one place, so that a re-run writes the same keys and two runs never overwrite each other's work):
  s3://LAKE/datasets/DATASET/snapshots/SNAPSHOT/manifest.json        written last: the snapshot is complete
  s3://LAKE/datasets/DATASET/snapshots/SNAPSHOT/data/...              the immutable copy of the raw objects
  s3://LAKE/datasets/DATASET/features/SNAPSHOT/{train,validation,test}/part-*.parquet
  s3://LAKE/datasets/DATASET/features/SNAPSHOT/feature_spec.json     written last: the features are complete
  s3://LAKE/tune/DATASET/SNAPSHOT/RUN                                 Ray Tune storage (trials, checkpoints)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ml.settings import Settings


class DataError(ValueError):
    """Input data is unusable; the message names the object, the column and the reason."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme not in ("s3", "s3a") or not rest or rest.startswith("/"):
            raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
        bucket, _, key = rest.partition("/")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def s3a(self) -> str:
        return f"s3a://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)


def s3_client(settings: Settings | None = None) -> Any:
    """A boto3 S3 client for the configured endpoint (credentials from the environment / AWS config)."""
    import os

    settings = settings or Settings.from_env()
    # Keyed by the access key too: an Airflow task may switch connections within one process.
    return _cached_client(settings.s3_endpoint_url, settings.aws_region, os.environ.get("AWS_ACCESS_KEY_ID"))


@lru_cache(maxsize=4)
def _cached_client(endpoint_url: str | None, region: str, access_key: str | None) -> Any:
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's default session resolves credentials once per process and keeps them, so a client
    # made for new keys in the environment (another connection) would still sign with the first ones.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
    )


def arrow_filesystem(settings: Settings | None = None, *, embed_keys: bool = True) -> Any:
    """A pyarrow S3 filesystem on the configured endpoint, for reading Parquet without a copy. With
    `embed_keys=False` it takes credentials from the standard AWS chain when used: for a filesystem that gets pickled
    into stored state (Ray Tune's), so that no secret lands in S3."""
    import os

    from pyarrow import fs

    settings = settings or Settings.from_env()
    kwargs: dict[str, Any] = {"region": settings.aws_region}
    if settings.s3_endpoint_url:
        scheme, _, host = settings.s3_endpoint_url.partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme)
    if embed_keys and os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    return fs.S3FileSystem(**kwargs)


def list_keys(uri: S3Uri, client: Any | None = None) -> list[dict[str, Any]]:
    """Every object under a prefix (paginated), as boto3's listing dicts."""
    client = client or s3_client()
    objects: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.key):
        objects.extend(page.get("Contents", []))
    return objects


def exists(uri: S3Uri, client: Any | None = None) -> bool:
    from botocore.exceptions import ClientError

    client = client or s3_client()
    try:
        client.head_object(Bucket=uri.bucket, Key=uri.key)
        return True
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def read_json(uri: S3Uri, client: Any | None = None) -> Any:
    client = client or s3_client()
    return json.loads(client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())


def write_json(uri: S3Uri, value: Any, client: Any | None = None) -> None:
    client = client or s3_client()
    body = json.dumps(value, indent=2, sort_keys=True).encode()
    client.put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ContentType="application/json")


def delete_prefix(uri: S3Uri, client: Any | None = None) -> int:
    """Delete every object under a prefix; returns how many. Used to remove partial output after a failure."""
    client = client or s3_client()
    keys = [{"Key": obj["Key"]} for obj in list_keys(uri, client)]
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=uri.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True})
    return len(keys)


def lake(settings: Settings | None = None) -> S3Uri:
    return S3Uri((settings or Settings.from_env()).lake_bucket, "")


def snapshot_uri(dataset: str, snapshot_id: str, settings: Settings | None = None) -> S3Uri:
    return lake(settings).join("datasets", dataset, "snapshots", snapshot_id)


def features_uri(dataset: str, snapshot_id: str, settings: Settings | None = None) -> S3Uri:
    return lake(settings).join("datasets", dataset, "features", snapshot_id)


def tune_uri(dataset: str, snapshot_id: str, run_name: str, settings: Settings | None = None) -> S3Uri:
    return lake(settings).join("tune", dataset, snapshot_id, run_name)


def latest_snapshot_uri(dataset: str, settings: Settings | None = None) -> S3Uri:
    """Pointer to the dataset's newest snapshot (its columns are the reference for schema drift)."""
    return lake(settings).join("datasets", dataset, "latest.json")
