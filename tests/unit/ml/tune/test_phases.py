"""ml.tune.phases: the search's phase timer, on a fake clock."""

from __future__ import annotations

import pytest

from ml.tune.phases import PhaseTimer, format_phases
from tests.support.fake_clock import FakeClock


def test_phases_add_up_in_the_order_they_first_ran_and_the_rest_is_other() -> None:
    clock = FakeClock()
    timer = PhaseTimer(clock)
    with timer.phase("read"):
        clock.advance(2.0)
    clock.advance(0.5)  # between phases
    with timer.phase("fit"):
        clock.advance(10.0)
    with timer.phase("read"):
        clock.advance(1.0)
    timer.add("extra", 0.25)  # measured elsewhere (the fit's own split)

    assert timer.elapsed() == pytest.approx(13.5)
    assert timer.summary() == {"read": 3.0, "fit": 10.0, "extra": 0.25, "other": 0.25}
    assert list(timer.summary()) == ["read", "fit", "extra", "other"]


def test_a_phase_that_raises_is_timed_and_the_error_goes_on() -> None:
    clock = FakeClock()
    timer = PhaseTimer(clock)
    with pytest.raises(RuntimeError), timer.phase("fit"):
        clock.advance(4.0)
        raise RuntimeError("stopped")
    assert timer.seconds == {"fit": 4.0}


def test_negative_durations_count_as_zero_and_the_log_line_is_readable() -> None:
    timer = PhaseTimer(FakeClock())
    timer.add("skewed", -1.0)
    assert timer.summary() == {"skewed": 0.0, "other": 0.0}
    assert format_phases({"read": 1.234, "fit": 10.0}) == "read=1.23 fit=10.00"
