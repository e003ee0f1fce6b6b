"""ml.registry.lock.AliasLock against the real S3 server: its conditional writes make the lock exclusive, an expired
lock is taken over, a late release leaves the new holder's lock, a renewal extends the lease conditionally, and the
fence (`ensure_held`) of a holder whose lock was taken over raises. Expiry comes from an injected clock: no test waits
for a TTL to pass (so the locks here have no renewal thread: it would sleep on that clock; renewals are called)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ml.registry.lock import AliasLock, LockLost, LockTimeout
from ml.storage import S3Uri, exists, read_json
from tests.support.fake_clock import FakeClock


@pytest.fixture
def uri(s3_client: Any, settings: Any, unique_prefix: str) -> Iterator[S3Uri]:
    uri = S3Uri(settings.lake.lake_bucket, f"{unique_prefix}/model.lock")
    yield uri
    s3_client.delete_object(Bucket=uri.bucket, Key=uri.key)


def alias_lock(uri: S3Uri, s3_client: Any, clock: FakeClock, **kwargs: float) -> AliasLock:
    return AliasLock(uri, s3_client, clock=clock, keep_renewed=False, **kwargs)


def test_the_lock_is_exclusive_and_an_expired_one_is_taken_over(uri: S3Uri, s3_client: Any) -> None:
    clock = FakeClock()
    holder = alias_lock(uri, s3_client, clock, ttl_s=30)
    holder.acquire()
    assert read_json(uri, s3_client) == {"owner": holder.owner, "expires_at": clock.time() + 30}
    with pytest.raises(LockTimeout, match=f"held by {holder.owner}"):
        alias_lock(uri, s3_client, clock, wait_s=1).acquire()  # the server refuses the second create

    clock.advance(31)  # the holder "crashed": its lock expires (on the injected clock) and the next waiter takes it
    taker = alias_lock(uri, s3_client, clock, ttl_s=30, wait_s=5)
    taker.acquire()
    assert read_json(uri, s3_client)["owner"] == taker.owner
    holder.release()  # too late: the server's conditional delete must not remove the taker's lock
    assert read_json(uri, s3_client)["owner"] == taker.owner
    with pytest.raises(LockTimeout):
        alias_lock(uri, s3_client, clock, wait_s=1).acquire()
    taker.release()
    assert not exists(uri, s3_client)
    with alias_lock(uri, s3_client, clock, wait_s=1) as again:
        assert json.loads(s3_client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())["owner"] == again.owner
    assert not exists(uri, s3_client)


def test_only_one_of_two_waiters_takes_over_an_expired_lock(uri: S3Uri, s3_client: Any) -> None:
    """The takeover is conditional on the expired lock's ETag: a second overwrite with the same ETag is refused."""
    from botocore.exceptions import ClientError

    clock = FakeClock()
    alias_lock(uri, s3_client, clock, ttl_s=1).acquire()
    clock.advance(2)
    stale = s3_client.get_object(Bucket=uri.bucket, Key=uri.key)["ETag"]
    first = alias_lock(uri, s3_client, clock, ttl_s=60, wait_s=0)
    first.acquire()
    with pytest.raises(ClientError) as refused:
        s3_client.put_object(Bucket=uri.bucket, Key=uri.key, Body=b"{}", IfMatch=stale)
    assert refused.value.response["Error"]["Code"] in ("PreconditionFailed", "412")
    assert read_json(uri, s3_client)["owner"] == first.owner
    first.release()


def test_a_renewal_extends_the_lease_with_a_conditional_put(uri: S3Uri, s3_client: Any) -> None:
    clock = FakeClock()
    holder = alias_lock(uri, s3_client, clock, ttl_s=30)
    holder.acquire()
    clock.advance(20)
    assert holder.renew()
    assert read_json(uri, s3_client) == {"owner": holder.owner, "expires_at": clock.time() + 30}
    holder.ensure_held()  # the server's ETag (a HEAD) is the one its conditional put returned
    clock.advance(20)  # 40 s after the acquisition: expired without the renewal, not with it
    with pytest.raises(LockTimeout, match=f"held by {holder.owner}"):
        alias_lock(uri, s3_client, clock, wait_s=0).acquire()
    holder.release()
    assert not exists(uri, s3_client)  # the conditional delete matched the renewed ETag


@pytest.mark.parametrize("holders_clock", ["moves", "lags"])
def test_the_fence_of_a_holder_whose_lock_was_taken_over_raises(uri: S3Uri, s3_client: Any, holders_clock: str) -> None:
    """`moves`: the holder stalled past its TTL, so its fence tries a renewal, which the server refuses (If-Match).
    `lags`: the taker's clock runs ahead, so the holder's lease looks fine to it and its fence looks (a HEAD)."""
    clock = FakeClock()
    first = alias_lock(uri, s3_client, clock, ttl_s=30)
    first.acquire()
    first.ensure_held()
    takers_clock = clock if holders_clock == "moves" else FakeClock(wall=clock.time())
    takers_clock.advance(31)  # the first's lock expires (on the taker's clock) ...
    second = alias_lock(uri, s3_client, takers_clock, ttl_s=30, wait_s=0)
    second.acquire()  # ... and the second takes it over with a real conditional overwrite
    with pytest.raises(LockLost, match=f"{uri} is no longer ours: .* held by {second.owner} now"):
        first.ensure_held()
    assert not first.held and not first.renew()
    first.release()  # too late: the server's conditional delete leaves the second's lock
    second.ensure_held()
    assert read_json(uri, s3_client)["owner"] == second.owner
    second.release()
    assert not exists(uri, s3_client)
