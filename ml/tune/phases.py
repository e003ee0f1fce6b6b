"""Where a search's wall time goes: `PhaseTimer` times `run_search`'s own steps (ml.tune.fit_callbacks.FitPhasesCallback
splits Ray Tune's fit further).

Both read an injected `ml.clock.Clock` (monotonic), so tests drive them with a fake one. The search logs the phases at
INFO and returns them in `SearchResult.phases_s` (B2 reports them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ml.clock import SYSTEM_CLOCK, Clock


class PhaseTimer:
    """Seconds per named phase, in the order the phases first ran (a phase entered twice adds up)."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.started = clock.monotonic()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self.clock.monotonic()
        try:
            yield
        finally:
            self.add(name, self.clock.monotonic() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    def elapsed(self) -> float:
        """Seconds since the timer was made."""
        return self.clock.monotonic() - self.started

    def summary(self, digits: int = 3) -> dict[str, float]:
        """The phases, rounded, plus `other`: the time since the timer was made that no phase covers."""
        phases = {name: round(seconds, digits) for name, seconds in self.seconds.items()}
        phases["other"] = round(max(0.0, self.elapsed() - sum(self.seconds.values())), digits)
        return phases


def format_phases(phases: dict[str, float]) -> str:
    """`name=1.23 ...` for a log line."""
    return " ".join(f"{name}={seconds:.2f}" for name, seconds in phases.items())
