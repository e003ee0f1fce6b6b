"""Peak resident memory of processes, a function run in a child process under a resident-memory cap, and malloc told
to keep what it frees (Linux).

A baseline that reads its whole input into memory (B3's pandas) can take the machine down at large sizes; run under
`run_capped`, it is stopped when its resident set passes the cap, and what it reached is reported instead of a figure.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ml.procfs import proc_field_kib, status_kib

GIB = 1024**3


def rss_bytes(pid: int) -> int | None:
    """The process's resident set now."""
    kib = status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes(pid: int) -> int | None:
    """The largest resident set the process has had so far (the kernel's high-water mark, not a sample)."""
    kib = status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def _meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo field in bytes (None where it does not say)."""
    kib = proc_field_kib("/proc/meminfo", field)
    return None if kib is None else kib * 1024


def memory_total_bytes() -> int | None:
    """The machine's memory (None where /proc/meminfo does not say)."""
    return _meminfo_bytes("MemTotal")


def memory_available_bytes() -> int | None:
    """What the kernel estimates it can give a new process now, page cache included (MemAvailable)."""
    return _meminfo_bytes("MemAvailable")


def cap_within_available(cap_bytes: int, available_bytes: int | None, share: float = 0.9) -> int:
    """`cap_bytes`, or `share` of the memory available now if that is less: with the machine's other processes
    holding the rest, a child allowed up to a share of the total can be killed by the kernel's OOM killer (an
    error, no figure) before it reaches its cap, where it should have been stopped and reported."""
    return cap_bytes if available_bytes is None else min(cap_bytes, int(share * available_bytes))


@dataclass(frozen=True)
class CappedRun:
    """What a capped child did: its result (None unless it finished), its own seconds in the function (the wall
    clock until it was stopped otherwise), its peak resident set, and whether it was stopped at the cap or failed."""

    result: Any
    seconds: float
    peak_bytes: int
    cap_bytes: int
    stopped_at_cap: bool = False
    error: str | None = None

    @property
    def finished(self) -> bool:
        return not self.stopped_at_cap and self.error is None


def _child(function: Callable[..., Any], args: tuple[Any, ...], send: Any) -> None:
    started = time.perf_counter()
    try:
        result = function(*args)
    except BaseException as error:  # reported to the parent, which decides what it means
        outcome: tuple[str, Any] = ("error", f"{type(error).__name__}: {error}")
    else:
        outcome = ("ok", result)
    # VmHWM, not rusage's ru_maxrss: Linux carries ru_maxrss across fork and exec, so a spawned child reports at
    # least its parent's size at the fork (a 1.1-GB test process made a 40-MB child read 1.1 GB).
    send.send((*outcome, time.perf_counter() - started, peak_rss_bytes(os.getpid()) or 0))
    send.close()


def run_capped(
    function: Callable[..., Any], args: tuple[Any, ...], cap_bytes: int, *, poll_s: float = 0.05
) -> CappedRun:
    """`function(*args)` in a fresh (spawned) interpreter, killed as soon as its resident set passes `cap_bytes`.

    `function` and `args` must pickle (a module-level function; settings, not clients). The child's peak comes from
    its own high-water mark when it finishes, from the same mark read by this process while it ran otherwise."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(function, args, send), name="capped", daemon=True)
    started = time.perf_counter()
    process.start()
    send.close()  # the child holds the only writing end: a child that dies unannounced gives EOF
    peak, answer = 0, None
    try:
        while True:
            peak = max(peak, peak_rss_bytes(process.pid) or 0)
            if (rss_bytes(process.pid) or 0) > cap_bytes:
                process.kill()
                process.join()
                return CappedRun(None, time.perf_counter() - started, peak, cap_bytes, stopped_at_cap=True)
            if receive.poll(poll_s):
                try:
                    answer = receive.recv()
                except EOFError:
                    answer = None
                break
    finally:
        receive.close()
    process.join()
    if answer is None:
        return CappedRun(
            None, time.perf_counter() - started, peak, cap_bytes, error=f"the child exited with {process.exitcode}"
        )
    status, value, seconds, child_peak = answer
    peak = max(peak, child_peak)
    if status == "ok":
        return CappedRun(value, seconds, peak, cap_bytes)
    return CappedRun(None, seconds, peak, cap_bytes, error=value)


def keep_freed_memory(top_pad_bytes: int = GIB) -> bool:
    """Make glibc's malloc keep the memory a process frees for its next allocations, as a JVM keeps its heap: no
    large allocation from mmap (each one is returned to the kernel when freed, and the next one faults its pages in
    again), trimming only past 2 GiB free at the heap's top, and the heap grown `top_pad_bytes` at a time. Here each
    80-MB temporary array cost ~30 ms of page faults otherwise. False where it cannot be set (no glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # malloc.h
    return all(
        mallopt(option, value) == 1
        for option, value in ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, top_pad_bytes))
    )
