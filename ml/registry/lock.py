"""The lock around alias moves: one S3 object per registered model, created with a conditional put.

A conditional put `If-None-Match: *` creates the lock only if absent, so exactly one writer holds it; it carries an
expiry, and a waiter takes over an expired lock with `If-Match: <its ETag>` (a conditional overwrite, so two waiters
cannot both take it). MLflow has no compare-and-set on aliases, so a bare "set then re-check" cannot stop two gates
from each comparing against the same old champion and the loser overwriting a better winner; the lock makes
read-champion -> decide -> move -> publish one step. Expiry is wall-clock time (it is compared across machines);
waiting uses the monotonic clock. Both come from an injectable `Clock`.
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
from ml.storage import NOT_FOUND_CODES, S3Uri, error_code

log = logging.getLogger(__name__)

# What S3-compatible servers answer when a conditional put or delete finds the precondition false.
_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "409", "412")


class LockTimeout(RuntimeError):
    """The lock stayed held by someone else for longer than the wait allowed."""


class AliasLock:
    """`with AliasLock(uri, s3_client): ...` holds the lock object at `uri` (ml.storage.registry_lock_uri)."""

    def __init__(
        self,
        uri: S3Uri,
        s3_client: Any,
        *,
        ttl_s: float = 120.0,
        wait_s: float = 300.0,
        clock: Clock = SYSTEM_CLOCK,
        jitter: random.Random | None = None,
    ) -> None:
        self.uri = uri
        self.client = s3_client
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.clock = clock
        self.jitter = jitter or random.Random()  # noqa: S311 - retry jitter, not a secret
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
        self._etag: str | None = None

    @property
    def held(self) -> bool:
        return self._etag is not None

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        deadline = self.clock.monotonic() + self.wait_s
        delay = 0.05
        while True:
            body = json.dumps({"owner": self.owner, "expires_at": self.clock.time() + self.ttl_s}).encode()
            try:
                response = self.client.put_object(Bucket=self.uri.bucket, Key=self.uri.key, Body=body, IfNoneMatch="*")
                self._etag = response["ETag"]
                return
            except ClientError as error:
                if error_code(error) not in _CONFLICT_CODES:
                    raise
            holder = self._take_over_if_expired(body)
            if holder is None:
                return
            if self.clock.monotonic() >= deadline:
                raise LockTimeout(f"could not lock {self.uri} within {self.wait_s:g} s: held by {holder}")
            self.clock.sleep(delay * (0.5 + self.jitter.random()))  # jitter: waiters do not retry in lock-step
            delay = min(delay * 2, 1.0)

    def _take_over_if_expired(self, body: bytes) -> str | None:
        """Replace the lock if it has expired (conditional on its ETag); None when we now hold it, else the holder."""
        from botocore.exceptions import ClientError

        try:
            current = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key)
        except ClientError as error:
            if error_code(error) in NOT_FOUND_CODES:
                return "nobody (released meanwhile)"
            raise
        try:
            held = json.loads(current["Body"].read())
        except ValueError:
            held = {}
        if float(held.get("expires_at", 0)) > self.clock.time():
            return str(held.get("owner", "?"))
        try:
            response = self.client.put_object(
                Bucket=self.uri.bucket, Key=self.uri.key, Body=body, IfMatch=current["ETag"]
            )
        except ClientError as error:
            if error_code(error) in (*_CONFLICT_CODES, "NoSuchKey"):
                return "another waiter (took it over first)"
            raise
        log.warning("took over the expired registry lock %s from %s", self.uri, held.get("owner"))
        self._etag = response["ETag"]
        return None

    def release(self) -> None:
        from botocore.exceptions import ClientError

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
