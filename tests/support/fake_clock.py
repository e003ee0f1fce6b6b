"""A `ml.clock.Clock` for tests: time moves only when the test (or the code's own `sleep`) moves it."""

from __future__ import annotations

import threading


class FakeClock:
    """`ml.clock.Clock` that never waits: `sleep` and `advance` move both clocks at once."""

    def __init__(self, wall: float = 1_900_000_000.0, monotonic: float = 100.0) -> None:
        self.wall = wall
        self.mono = monotonic
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.wall += seconds
            self.mono += seconds
