"""ml.clock: the clock protocol, UTC timestamps and capped exponential backoff (no test waits for time to pass)."""

from __future__ import annotations

import pytest

from ml.clock import SYSTEM_CLOCK, Backoff, Clock, SystemClock, utc_iso, utc_now_iso
from tests.support.fake_clock import FakeClock


def test_backoff_doubles_up_to_the_maximum() -> None:
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(1.0, 8.0)
    for _ in range(3):
        backoff.next_delay()
    backoff.reset()
    assert [backoff.next_delay() for _ in range(2)] == [1.0, 2.0]


def test_backoff_with_equal_bounds_is_constant() -> None:
    backoff = Backoff(2.0, 2.0)
    assert {backoff.next_delay() for _ in range(5)} == {2.0}


@pytest.mark.parametrize(("initial", "maximum"), [(0, 1), (-1, 1), (2, 1)])
def test_backoff_refuses_bad_bounds(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="0 < initial <= maximum"):
        Backoff(initial, maximum)


def test_backoff_drives_a_fake_clock() -> None:
    clock, backoff = FakeClock(wall=100.0), Backoff(1.0, 4.0)
    for _ in range(4):
        clock.sleep(backoff.next_delay())
    assert clock.sleeps == [1.0, 2.0, 4.0, 4.0] and clock.time() == 111.0


def test_utc_iso() -> None:
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(1_796_000_523.4567) == "2026-11-30T01:02:03.456Z"


def test_utc_now_iso_reads_the_given_clock() -> None:
    assert utc_now_iso(FakeClock(wall=86_400.25)) == "1970-01-02T00:00:00.250Z"


def test_the_system_clock() -> None:
    clock: Clock = SYSTEM_CLOCK
    assert isinstance(clock, SystemClock)
    first, second = clock.monotonic(), clock.monotonic()
    assert second >= first
    assert clock.time() > 1.7e9  # after 2023: a wall clock, not a monotonic one
    clock.sleep(0)
    assert utc_now_iso().endswith("Z") and len(utc_now_iso()) == len("2026-12-02T01:02:03.456Z")
