"""Time as a dependency: code that waits, expires or stamps takes a `Clock`, so tests inject a fake one."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (wall clock: comparable across machines, e.g. a lock's expiry)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines within one process)."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def utc_iso(epoch_seconds: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z, e.g. 2026-12-02T01:02:03.456Z."""
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now_iso(clock: Clock = SYSTEM_CLOCK) -> str:
    return utc_iso(clock.time())


class Backoff:
    """Capped exponential delays between attempts: initial, 2x, 4x ... up to maximum; `reset()` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial}, {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial
