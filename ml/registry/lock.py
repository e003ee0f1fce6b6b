"""The lock around alias moves: one S3 object per registered model, created with a conditional put, kept alive by a
lease renewal and checked (fenced) before every write that relies on it.

Taking it: a conditional put `If-None-Match: *` creates the lock only if absent, so exactly one writer holds it; the
object says who holds it and until when (`expires_at`), and a waiter takes over an expired lock with `If-Match: <its
ETag>` (a conditional overwrite, so two waiters cannot both take it). MLflow has no compare-and-set on aliases, so a
bare "set then re-check" cannot stop two gates from each comparing against the same old champion and the loser
overwriting a better winner; the lock makes read-champion -> decide -> move -> publish one step.

Keeping it (lease): while it is held, a daemon thread renews it every `renew_every_s` (ttl/3 by default): a put
conditional on the ETag we last wrote, with a later `expires_at`, whose new ETag we remember. A renewal refused
because the ETag no longer matches means the lock was lost (it expired and someone took it over, or it was removed):
that is recorded in `lost` and logged, and the renewal stops. Release stops the renewal (no renewal runs after it;
the thread ends when its current pause is over) and deletes the lock conditionally on our ETag, so a late release
never removes someone else's lock.

Fencing: a renewal cannot stop a holder that stalls for longer than the TTL (a paused process, a renewal thread
that got no S3 answer), so `ensure_held()` runs immediately before every registry write made under the lock (alias
moves, gate and rollback tags, creating and deleting versions): it compares the lock object's current ETag with ours
(a HEAD; a conditional renewal instead when less than half the TTL is left, which checks and extends in one step) and
raises `LockLost`, naming the lock and its holder now, otherwise. The check and the write that follows are two
requests, so the fence narrows the window to one round trip rather than closing it: a holder whose lock was taken
over before the check, or that knows it lost it, makes no further write.

Expiry is wall-clock time (it is compared across machines); waiting uses the monotonic clock, and the renewal thread
sleeps on the clock too. All come from an injectable `Clock`; a test whose fake clock returns from `sleep` at once
passes `keep_renewed=False` (or a clock whose `sleep` waits for the test), or the renewal thread would spin.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import uuid
from typing import Any

from ml.clock import SYSTEM_CLOCK, Clock
from ml.storage import CONFLICT_CODES, NOT_FOUND_CODES, S3Uri, error_code

log = logging.getLogger(__name__)


class LockTimeout(RuntimeError):
    """The lock stayed held by someone else for longer than the wait allowed."""


class LockLost(RuntimeError):
    """The lock is no longer ours (it expired and was taken over, or was removed): nothing more may be written."""


class AliasLock:
    """`with AliasLock(uri, s3_client) as lock: ...; lock.ensure_held(); <write>` holds the lock object at `uri`
    (ml.storage.registry_lock_uri), renewed in the background while held."""

    def __init__(
        self,
        uri: S3Uri,
        s3_client: Any,
        *,
        ttl_s: float = 120.0,
        wait_s: float = 300.0,
        renew_every_s: float | None = None,
        keep_renewed: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        jitter: random.Random | None = None,
    ) -> None:
        self.uri = uri
        self.client = s3_client
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.renew_every_s = ttl_s / 3 if renew_every_s is None else renew_every_s
        self.keep_renewed = keep_renewed
        self.clock = clock
        self.jitter = jitter or random.Random()  # noqa: S311 - retry jitter, not a secret
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
        self.lost: str | None = None  # why the lock stopped being ours while we held it
        self.renewer: threading.Thread | None = None  # the renewal thread of the latest acquisition
        self._etag: str | None = None  # of the lock object as we last wrote it; None when not held
        self._expires_at = 0.0  # what we last wrote as its expiry (wall clock)
        self._stop_renewing: threading.Event | None = None
        # Renewal (its thread), fencing and release read and replace the ETag: one at a time.
        self._state = threading.RLock()

    @property
    def held(self) -> bool:
        """Acquired, not released, and not known to be lost (`ensure_held` asks S3)."""
        return self._etag is not None and self.lost is None

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        deadline = self.clock.monotonic() + self.wait_s
        delay = 0.05
        while True:
            body, expires_at = self._lease()
            try:
                response = self.client.put_object(Bucket=self.uri.bucket, Key=self.uri.key, Body=body, IfNoneMatch="*")
                self._hold(response["ETag"], expires_at)
                return
            except ClientError as error:
                if error_code(error) not in CONFLICT_CODES:
                    raise
            holder = self._take_over_if_expired(body, expires_at)
            if holder is None:
                return
            if self.clock.monotonic() >= deadline:
                raise LockTimeout(f"could not lock {self.uri} within {self.wait_s:g} s: held by {holder}")
            self.clock.sleep(delay * (0.5 + self.jitter.random()))  # jitter: waiters do not retry in lock-step
            delay = min(delay * 2, 1.0)

    def _lease(self) -> tuple[bytes, float]:
        """The lock object's body for a lease starting now, and its expiry."""
        expires_at = self.clock.time() + self.ttl_s
        return json.dumps({"owner": self.owner, "expires_at": expires_at}).encode(), expires_at

    def _read(self) -> tuple[dict[str, Any], str] | None:
        """The lock object's content ({} if unreadable) and ETag; None when there is none."""
        from botocore.exceptions import ClientError

        try:
            current = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key)
        except ClientError as error:
            if error_code(error) in NOT_FOUND_CODES:
                return None
            raise
        try:
            content = json.loads(current["Body"].read())
        except ValueError:
            content = {}
        return (content if isinstance(content, dict) else {}), current["ETag"]

    def _take_over_if_expired(self, body: bytes, expires_at: float) -> str | None:
        """Replace the lock if it has expired (conditional on its ETag); None when we now hold it, else the holder."""
        from botocore.exceptions import ClientError

        current = self._read()
        if current is None:
            return "nobody (released meanwhile)"
        held, etag = current
        if float(held.get("expires_at", 0)) > self.clock.time():
            return str(held.get("owner", "?"))
        try:
            response = self.client.put_object(Bucket=self.uri.bucket, Key=self.uri.key, Body=body, IfMatch=etag)
        except ClientError as error:
            if error_code(error) in (*CONFLICT_CODES, "NoSuchKey"):
                return "another waiter (took it over first)"
            raise
        log.warning("took over the expired registry lock %s from %s", self.uri, held.get("owner"))
        self._hold(response["ETag"], expires_at)
        return None

    def _hold(self, etag: str, expires_at: float) -> None:
        """We hold the lock as written with `etag`; start its renewal thread."""
        with self._state:
            self._etag, self._expires_at, self.lost = etag, expires_at, None
            if not self.keep_renewed:
                return
            self._stop_renewing = threading.Event()
            self.renewer = threading.Thread(
                target=self._keep_renewed, args=(self._stop_renewing,), name=f"renew {self.uri}", daemon=True
            )
            self.renewer.start()

    def _keep_renewed(self, stop: threading.Event) -> None:
        """The renewal thread: every `renew_every_s` on the clock, renew, until released or lost."""
        while True:
            self.clock.sleep(self.renew_every_s)
            with self._state:
                if stop.is_set():
                    return
                try:
                    if not self.renew():
                        return
                except Exception as error:  # S3 unreachable for a moment: the next round tries again
                    log.warning("could not renew the registry lock %s (trying again): %s", self.uri, error)

    def renew(self) -> bool:
        """Extend the lease to now + ttl with a put conditional on our ETag, and remember the new ETag.

        False when there is nothing to renew: not held, or lost (the ETag no longer matches), which is then recorded
        in `lost` and logged. Other S3 errors are raised (the renewal thread logs them and tries again)."""
        from botocore.exceptions import ClientError

        with self._state:
            if not self.held:
                return False
            body, expires_at = self._lease()
            try:
                response = self.client.put_object(
                    Bucket=self.uri.bucket, Key=self.uri.key, Body=body, IfMatch=self._etag
                )
            except ClientError as error:
                if error_code(error) not in (*CONFLICT_CODES, *NOT_FOUND_CODES):
                    raise
                self._lose(f"renewing it was refused ({error_code(error)})")
                return False
            self._etag, self._expires_at = response["ETag"], expires_at
            return True

    def ensure_held(self) -> None:
        """The fence: raise LockLost unless the lock object is still the one we last wrote (same ETag).

        Call it immediately before each write that relies on the lock. With less than half the TTL left on our lease
        (renewal fell behind), it renews instead of only looking: the conditional put checks and extends at once."""
        from botocore.exceptions import ClientError

        with self._state:
            if self._etag is None:
                raise LockLost(f"the registry lock {self.uri} is not held (not acquired, or released)")
            if self.lost is None and self._expires_at - self.clock.time() < self.ttl_s / 2:
                self.renew()
            elif self.lost is None:
                try:
                    current: str | None = self.client.head_object(Bucket=self.uri.bucket, Key=self.uri.key)["ETag"]
                except ClientError as error:
                    if error_code(error) not in NOT_FOUND_CODES:
                        raise
                    current = None
                if current != self._etag:
                    self._lose("its ETag changed" if current else "it was removed")
            if self.lost is not None:
                raise LockLost(f"the registry lock {self.uri} is no longer ours: {self.lost}")

    def _lose(self, why: str) -> None:
        """Record (and log) that the lock is no longer ours, with who holds it now if that can be read."""
        try:
            current = self._read()
            holder = "nobody" if current is None else str(current[0].get("owner", "?"))
        except Exception as error:  # who holds it is for the message: the loss is recorded regardless
            holder = f"unknown ({error_code(error) or error})"
        self.lost = f"{why}; held by {holder} now"
        log.error(
            "lost the registry lock %s (%s, ours was %s): nothing more is written under it", self.uri, why, self.owner
        )

    def release(self) -> None:
        from botocore.exceptions import ClientError

        with self._state:
            if self._stop_renewing is not None:
                self._stop_renewing.set()  # the thread ends when it wakes up; it renews nothing more
                self._stop_renewing = None
            if self._etag is None:
                return
            try:
                # Conditional: if our lock expired and someone took it over, theirs must stay.
                self.client.delete_object(Bucket=self.uri.bucket, Key=self.uri.key, IfMatch=self._etag)
            except ClientError as error:
                log.warning("registry lock %s was no longer ours at release (%s)", self.uri, error_code(error))
            finally:
                self._etag = None

    def __enter__(self) -> AliasLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
