"""ml.registry.lock.AliasLock against the real S3 server: its conditional writes make the lock exclusive, an expired
lock is taken over, and a late release leaves the new holder's lock. Expiry comes from an injected clock: no test waits
for a TTL to pass."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ml.registry.lock import AliasLock, LockTimeout
from ml.storage import S3Uri, exists, read_json
from tests.support.fake_clock import FakeClock


@pytest.fixture
def uri(s3_client: Any, settings: Any, unique_prefix: str) -> Iterator[S3Uri]:
    uri = S3Uri(settings.lake.lake_bucket, f"{unique_prefix}/model.lock")
    yield uri
    s3_client.delete_object(Bucket=uri.bucket, Key=uri.key)


def test_the_lock_is_exclusive_and_an_expired_one_is_taken_over(uri: S3Uri, s3_client: Any) -> None:
    clock = FakeClock()
    holder = AliasLock(uri, s3_client, ttl_s=30, clock=clock)
    holder.acquire()
    assert read_json(uri, s3_client) == {"owner": holder.owner, "expires_at": clock.time() + 30}
    with pytest.raises(LockTimeout, match=f"held by {holder.owner}"):
        AliasLock(uri, s3_client, wait_s=1, clock=clock).acquire()  # the server refuses the second create

    clock.advance(31)  # the holder "crashed": its lock expires (on the injected clock) and the next waiter takes it
    taker = AliasLock(uri, s3_client, ttl_s=30, wait_s=5, clock=clock)
    taker.acquire()
    assert read_json(uri, s3_client)["owner"] == taker.owner
    holder.release()  # too late: the server's conditional delete must not remove the taker's lock
    assert read_json(uri, s3_client)["owner"] == taker.owner
    with pytest.raises(LockTimeout):
        AliasLock(uri, s3_client, wait_s=1, clock=clock).acquire()
    taker.release()
    assert not exists(uri, s3_client)
    with AliasLock(uri, s3_client, wait_s=1, clock=clock) as again:
        assert json.loads(s3_client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())["owner"] == again.owner
    assert not exists(uri, s3_client)


def test_only_one_of_two_waiters_takes_over_an_expired_lock(uri: S3Uri, s3_client: Any) -> None:
    """The takeover is conditional on the expired lock's ETag: a second overwrite with the same ETag is refused."""
    from botocore.exceptions import ClientError

    clock = FakeClock()
    AliasLock(uri, s3_client, ttl_s=1, clock=clock).acquire()
    clock.advance(2)
    stale = s3_client.get_object(Bucket=uri.bucket, Key=uri.key)["ETag"]
    first = AliasLock(uri, s3_client, ttl_s=60, wait_s=0, clock=clock)
    first.acquire()
    with pytest.raises(ClientError) as refused:
        s3_client.put_object(Bucket=uri.bucket, Key=uri.key, Body=b"{}", IfMatch=stale)
    assert refused.value.response["Error"]["Code"] in ("PreconditionFailed", "412")
    assert read_json(uri, s3_client)["owner"] == first.owner
    first.release()
