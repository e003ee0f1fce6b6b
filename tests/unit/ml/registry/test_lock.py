"""ml.registry.lock.AliasLock on an in-memory S3 with conditional writes and a fake clock: exclusive, waits with
jittered back-off on the monotonic clock, expires on the wall clock, an expired lock is taken over conditionally, and a
late release never removes someone else's lock; its lease is renewed (conditionally) while held, by a thread the test
steps through a SteppedClock, and its fence (`ensure_held`) refuses once the lock is no longer ours. No test waits
for real time to pass."""

from __future__ import annotations

import json
import logging
import random

import pytest

from ml.registry.lock import AliasLock, LockLost, LockTimeout
from ml.storage import S3Uri
from tests.support.fake_clock import FakeClock
from tests.unit.ml.registry.fakes import FakeS3, SteppedClock, client_error

URI = S3Uri("lake", "locks/registry/m.lock")


def lock(s3: FakeS3, clock: FakeClock, keep_renewed: bool = False, **kwargs: float) -> AliasLock:
    """A lock on the fakes; its renewal thread only when asked (it needs a SteppedClock: see fakes.SteppedClock)."""
    jitter = random.Random(7)
    return AliasLock(URI, s3, clock=clock, jitter=jitter, keep_renewed=keep_renewed, **kwargs)


def held_by(s3: FakeS3) -> dict[str, object]:
    return dict(json.loads(s3.body(URI.bucket, URI.key)))


def test_acquire_writes_an_owned_expiring_lock_and_release_removes_it() -> None:
    s3, clock = FakeS3(), FakeClock()
    alias_lock = lock(s3, clock, ttl_s=120)
    with alias_lock as entered:
        assert entered is alias_lock and alias_lock.held
        assert held_by(s3) == {"owner": alias_lock.owner, "expires_at": clock.time() + 120}
        put = next(kwargs for name, kwargs in s3.calls if name == "put_object")
        assert put["IfNoneMatch"] == "*"  # created only if absent: exactly one writer holds it
    assert not alias_lock.held and s3.objects == {}
    assert clock.sleeps == []  # a free lock is taken without waiting


def test_a_held_lock_makes_others_wait_then_time_out_naming_the_holder() -> None:
    s3, clock = FakeS3(), FakeClock()
    holder = lock(s3, clock, ttl_s=600)
    holder.acquire()
    waiter = lock(s3, clock, wait_s=5)
    started = clock.monotonic()
    with pytest.raises(LockTimeout, match=f"within 5 s: held by {holder.owner}"):
        waiter.acquire()
    assert not waiter.held and held_by(s3)["owner"] == holder.owner
    # It waited on the (fake) monotonic clock, no longer than allowed plus one pause.
    assert clock.monotonic() - started >= 5 and clock.monotonic() - started < 5 + 1.5
    # Capped exponential back-off with jitter: each pause is 0.5x..1.5x of 0.05, 0.1, 0.2 ... 1.0.
    nominal = [min(0.05 * 2**i, 1.0) for i in range(len(clock.sleeps))]
    assert all(0.5 * n <= pause <= 1.5 * n for pause, n in zip(clock.sleeps, nominal, strict=True))
    assert len(set(clock.sleeps)) == len(clock.sleeps)  # jittered: waiters do not retry in lock-step


def test_a_lock_released_meanwhile_is_taken_on_the_next_try() -> None:
    s3, clock = FakeS3(), FakeClock()
    holder = lock(s3, clock)
    holder.acquire()
    waiter = lock(s3, clock, wait_s=5)
    s3.before["get_object"] = [holder.release]  # released between the waiter's failed put and its look at the lock
    waiter.acquire()
    assert waiter.held and held_by(s3)["owner"] == waiter.owner
    assert len(clock.sleeps) == 1


def test_an_expired_lock_is_taken_over_and_the_late_release_leaves_it(caplog: pytest.LogCaptureFixture) -> None:
    s3, clock = FakeS3(), FakeClock()
    crashed = lock(s3, clock, ttl_s=30)
    crashed.acquire()
    clock.advance(30.001)  # the holder "crashed": its lock expires (nobody sleeps: the clock is told to move)
    taker = lock(s3, clock, wait_s=0)
    with caplog.at_level(logging.WARNING, logger="ml.registry.lock"):
        taker.acquire()
    assert taker.held and held_by(s3)["owner"] == taker.owner and clock.sleeps == []
    assert f"took over the expired registry lock {URI} from {crashed.owner}" in caplog.text
    takeover = [kwargs for name, kwargs in s3.calls if name == "put_object"][-1]
    assert takeover["IfMatch"] is not None  # conditional on the expired lock's ETag

    with caplog.at_level(logging.WARNING, logger="ml.registry.lock"):
        crashed.release()  # too late: must not remove the taker's lock
    assert not crashed.held and held_by(s3)["owner"] == taker.owner
    assert "no longer ours at release (PreconditionFailed)" in caplog.text
    with pytest.raises(LockTimeout):
        lock(s3, clock, wait_s=0.5).acquire()
    taker.release()
    assert s3.objects == {}


def test_a_lock_is_not_taken_over_before_it_expires() -> None:
    s3, clock = FakeS3(), FakeClock()
    holder = lock(s3, clock, ttl_s=30)
    holder.acquire()
    clock.advance(27)
    with pytest.raises(LockTimeout):
        lock(s3, clock, wait_s=1).acquire()  # waits until 28 (+ one pause at most): still 2 s before the expiry
    assert held_by(s3)["owner"] == holder.owner


def test_an_expiry_reached_while_waiting_lets_the_waiter_in() -> None:
    s3, clock = FakeS3(), FakeClock()
    lock(s3, clock, ttl_s=2).acquire()  # never released
    waiter = lock(s3, clock, wait_s=10)
    waiter.acquire()
    assert waiter.held and 2 <= sum(clock.sleeps) < 2 + 1.5


def test_two_waiters_taking_over_the_same_expired_lock_cannot_both_win() -> None:
    s3, clock = FakeS3(), FakeClock()
    lock(s3, clock, ttl_s=1).acquire()
    clock.advance(2)
    first, second = lock(s3, clock, ttl_s=60), lock(s3, clock, ttl_s=60, wait_s=0.5)
    # `first` takes it over between `second` reading the expired lock and writing its own.
    s3.before["get_object"] = [lambda: None]
    s3.before["put_object"] = [lambda: None, first.acquire]
    with pytest.raises(LockTimeout, match=f"held by {first.owner}"):
        second.acquire()
    assert first.held and not second.held and held_by(s3)["owner"] == first.owner


def test_an_unreadable_lock_counts_as_expired() -> None:
    s3, clock = FakeS3(), FakeClock()
    s3.put_object(Bucket=URI.bucket, Key=URI.key, Body=b"not json")
    taker = lock(s3, clock, wait_s=0)
    taker.acquire()
    assert taker.held and held_by(s3)["owner"] == taker.owner


@pytest.mark.parametrize("operation", ["put_object", "get_object"])
def test_s3_errors_other_than_a_conflict_are_raised_not_waited_on(operation: str) -> None:
    from botocore.exceptions import ClientError

    s3, clock = FakeS3(), FakeClock()
    if operation == "get_object":
        lock(s3, clock).acquire()
    s3.fail_with[operation] = client_error("AccessDenied", status=403)
    with pytest.raises(ClientError, match="AccessDenied"):
        lock(s3, clock, wait_s=60).acquire()
    assert clock.sleeps == []


def test_the_lock_is_released_when_the_block_fails_and_release_twice_is_harmless() -> None:
    s3, clock = FakeS3(), FakeClock()
    alias_lock = lock(s3, clock)
    with pytest.raises(RuntimeError, match="inside"), alias_lock:
        raise RuntimeError("inside")
    assert s3.objects == {} and not alias_lock.held
    alias_lock.release()
    assert [name for name, _ in s3.calls].count("delete_object") == 1


def test_owners_are_unique_per_lock_object() -> None:
    s3, clock = FakeS3(), FakeClock()
    assert lock(s3, clock).owner != lock(s3, clock).owner


# --- the lease: renewed while held ------------------------------------------------------------------------------------


def puts(s3: FakeS3) -> list[dict[str, object]]:
    return [kwargs for name, kwargs in s3.calls if name == "put_object"]


def test_renew_extends_the_expiry_with_a_put_conditional_on_our_etag() -> None:
    s3, clock = FakeS3(), FakeClock()
    holder = lock(s3, clock, ttl_s=30)
    holder.acquire()
    first_etag = s3.objects[(URI.bucket, URI.key)][1]
    clock.advance(25)
    assert holder.renew()
    assert held_by(s3) == {"owner": holder.owner, "expires_at": clock.time() + 30}
    assert puts(s3)[-1]["IfMatch"] == first_etag  # conditional on what we wrote: nobody else's lock is extended
    clock.advance(25)  # 50 s after the acquisition: without the renewal it would have expired 20 s ago
    with pytest.raises(LockTimeout, match=f"held by {holder.owner}"):
        lock(s3, clock, wait_s=0).acquire()
    holder.ensure_held()  # the new ETag is remembered: still ours
    holder.release()
    assert s3.objects == {}  # the release's conditional delete matched the renewed ETag


def test_the_renewal_thread_renews_every_third_of_the_ttl_and_stops_at_release() -> None:
    s3, clock = FakeS3(), SteppedClock()
    holder = lock(s3, clock, keep_renewed=True, ttl_s=30)
    acquired_at = clock.time()
    holder.acquire()
    assert holder.renewer is not None and holder.renewer.daemon and holder.renewer.is_alive()
    for rounds in (1, 2, 3):
        clock.step()  # one pause of the renewal thread passes; it renews and sleeps again
        assert held_by(s3)["expires_at"] == acquired_at + 10 * rounds + 30
    assert clock.sleeps == [10.0, 10.0, 10.0] and len(puts(s3)) == 4  # the create, then three renewals
    holder.release()
    clock.step(then_asleep=False)  # it wakes up after the release: it renews nothing and ends
    holder.renewer.join(timeout=30)
    assert not holder.renewer.is_alive()
    assert len(puts(s3)) == 4 and s3.objects == {}


def test_a_refused_renewal_means_the_lock_was_lost(caplog: pytest.LogCaptureFixture) -> None:
    s3, clock = FakeS3(), SteppedClock()
    slow = lock(s3, clock, keep_renewed=True, ttl_s=30)
    slow.acquire()
    clock.advance(31)  # the holder stalled (its renewal thread did not run) past its expiry ...
    taker = lock(s3, clock, wait_s=0)
    taker.acquire()  # ... and another writer took the lock over
    with caplog.at_level(logging.ERROR, logger="ml.registry.lock"):
        clock.step(then_asleep=False)  # the renewal, late: refused (the ETag changed), recorded, and no more renewals
        assert slow.renewer is not None
        slow.renewer.join(timeout=30)
    assert not slow.renewer.is_alive() and not slow.held and held_by(s3)["owner"] == taker.owner
    assert slow.lost == f"renewing it was refused (PreconditionFailed); held by {taker.owner} now"
    assert f"lost the registry lock {URI}" in caplog.text
    assert not slow.renew()  # a lost lock is not renewed again
    with pytest.raises(LockLost, match=f"{URI} is no longer ours: .* held by {taker.owner} now"):
        slow.ensure_held()
    slow.release()
    assert held_by(s3)["owner"] == taker.owner  # the late release leaves the taker's lock


def test_a_renewal_error_other_than_a_conflict_is_raised_and_the_thread_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from botocore.exceptions import ClientError

    s3, clock = FakeS3(), SteppedClock()
    holder = lock(s3, clock, keep_renewed=True, ttl_s=30)
    holder.acquire()
    s3.fail_with["put_object"] = client_error("SlowDown", status=503)
    with pytest.raises(ClientError, match="SlowDown"):
        holder.renew()
    with caplog.at_level(logging.WARNING, logger="ml.registry.lock"):
        clock.step()  # the thread's renewal fails the same way: logged, and it sleeps again
    assert "could not renew the registry lock" in caplog.text and holder.held
    del s3.fail_with["put_object"]
    clock.step()
    assert held_by(s3)["expires_at"] == clock.time() + 30
    holder.release()
    clock.step(then_asleep=False)
    assert holder.renewer is not None
    holder.renewer.join(timeout=30)


# --- the fence: ensure_held ------------------------------------------------------------------------------------------


def test_ensure_held_looks_at_the_lock_objects_etag() -> None:
    s3, clock = FakeS3(), FakeClock()
    holder = lock(s3, clock, ttl_s=120)
    holder.acquire()
    holder.ensure_held()
    assert [name for name, _ in s3.calls][-1] == "head_object" and len(puts(s3)) == 1  # a look, no write
    # Someone else's lock replaced ours (e.g. a waiter whose clock runs ahead took it over).
    s3.objects[(URI.bucket, URI.key)] = (json.dumps({"owner": "other-gate", "expires_at": 0}).encode(), '"theirs"')
    with pytest.raises(LockLost, match=f"{URI} is no longer ours: its ETag changed; held by other-gate now"):
        holder.ensure_held()
    assert not holder.held and len(puts(s3)) == 1  # nothing written to find out


def test_ensure_held_refuses_a_removed_or_released_lock_and_one_never_taken() -> None:
    s3, clock = FakeS3(), FakeClock()
    holder = lock(s3, clock)
    with pytest.raises(LockLost, match="not held"):
        holder.ensure_held()
    holder.acquire()
    s3.objects.clear()  # removed by hand
    with pytest.raises(LockLost, match="it was removed; held by nobody now"):
        holder.ensure_held()
    holder.release()
    with pytest.raises(LockLost, match="not held"):
        holder.ensure_held()


def test_ensure_held_renews_a_lease_that_runs_short() -> None:
    """A holder whose renewal fell behind: with less than half the TTL left the fence renews (a put conditional on
    our ETag checks and extends at once); once the lock was taken over that put is refused."""
    s3, clock = FakeS3(), FakeClock()
    holder = lock(s3, clock, ttl_s=30)
    holder.acquire()
    clock.advance(16)
    holder.ensure_held()
    assert puts(s3)[-1]["IfMatch"] is not None and held_by(s3)["expires_at"] == clock.time() + 30
    clock.advance(31)
    taker = lock(s3, clock, wait_s=0)
    taker.acquire()
    with pytest.raises(LockLost, match=f"renewing it was refused .*held by {taker.owner} now"):
        holder.ensure_held()
    assert held_by(s3)["owner"] == taker.owner


def test_a_fence_that_cannot_reach_s3_raises_rather_than_lets_the_write_through() -> None:
    from botocore.exceptions import ClientError

    s3, clock = FakeS3(), FakeClock()
    holder = lock(s3, clock)
    holder.acquire()
    s3.fail_with["head_object"] = client_error("AccessDenied", status=403)
    with pytest.raises(ClientError, match="AccessDenied"):
        holder.ensure_held()
