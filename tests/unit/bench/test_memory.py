"""bench.memory: a child under a resident-memory cap, stopped when it passes it, and peaks read from the kernel."""

from __future__ import annotations

import os

import pytest

from bench import memory
from bench.memory import (
    GIB,
    cap_within_available,
    memory_available_bytes,
    memory_total_bytes,
    peak_rss_bytes,
    rss_bytes,
    run_capped,
)

MIB = 2**20


def sum_of_squares(count: int) -> int:
    return sum(i * i for i in range(count))


def grow_without_end(chunk_mib: int, ceiling_mib: int) -> str:
    """Holds ever more memory; returns only if nothing stopped it before `ceiling_mib` (the test's own bound)."""
    held = []
    while len(held) * chunk_mib < ceiling_mib:
        held.append(b"x" * (chunk_mib * MIB))  # written, so resident
    return "never stopped"


def fail(message: str) -> None:
    raise ValueError(message)


def test_a_finished_child_returns_its_result_time_and_peak() -> None:
    run = run_capped(sum_of_squares, (1000,), cap_bytes=GIB)

    assert run.finished
    assert run.result == sum(i * i for i in range(1000))
    assert run.seconds >= 0
    # A Python interpreter is resident in more than 5 MiB, and far less than the cap here.
    assert 5 * MIB < run.peak_bytes < GIB


def test_a_child_does_not_count_its_parents_memory() -> None:
    held = b"x" * (512 * MIB)  # resident in this process while the child is spawned and runs

    run = run_capped(sum_of_squares, (10,), cap_bytes=GIB)

    assert len(held) == 512 * MIB
    assert run.finished and run.peak_bytes < 256 * MIB


def test_a_child_that_passes_the_cap_is_stopped_and_reported() -> None:
    run = run_capped(grow_without_end, (16, 4096), cap_bytes=200 * MIB, poll_s=0.01)

    assert run.stopped_at_cap
    assert not run.finished
    assert run.result is None
    assert run.cap_bytes == 200 * MIB
    # Seen above the cap (it was polled there), and stopped far before the function's own 4-GiB end.
    assert 200 * MIB < run.peak_bytes < 4 * GIB


def test_a_failing_child_reports_its_error() -> None:
    run = run_capped(fail, ("bad column x3",), cap_bytes=GIB)

    assert run.error == "ValueError: bad column x3"
    assert not run.finished and not run.stopped_at_cap
    assert run.result is None


def test_this_process_memory_as_the_kernel_counts_it() -> None:
    current, peak = rss_bytes(os.getpid()), peak_rss_bytes(os.getpid())

    assert current is not None and peak is not None
    assert 0 < current <= peak <= memory_total_bytes()


@pytest.mark.parametrize("reader", [rss_bytes, peak_rss_bytes])
def test_a_process_that_does_not_exist_has_no_memory(reader) -> None:
    assert reader(2**22 + 12345) is None  # above the kernel's largest pid


def test_the_memory_available_now_is_part_of_the_machines() -> None:
    available = memory_available_bytes()

    assert available is not None and 0 < available <= memory_total_bytes()


@pytest.mark.parametrize(
    ("cap", "available", "expected"),
    [
        (14 * GIB, 20 * GIB, 14 * GIB),  # room for the whole cap
        (14 * GIB, 10 * GIB, 9 * GIB),  # other processes hold the rest: 90% of what is left
        (14 * GIB, None, 14 * GIB),  # unknown: the cap as given
    ],
)
def test_a_cap_never_asks_for_more_than_the_machine_has_free(cap: int, available: int | None, expected: int) -> None:
    assert cap_within_available(cap, available) == expected


def test_malloc_can_be_told_to_keep_freed_memory() -> None:
    # in a child: the options last for the process's life
    run = memory.run_capped(memory.keep_freed_memory, (), 1024 * MIB)
    assert run.finished and run.result is True
