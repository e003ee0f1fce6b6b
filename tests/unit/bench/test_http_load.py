"""bench.http_load's accounting of a server's CPU (the servers and clients themselves run in B8 and B10)."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.http_load import process_tree_cpu_s

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def test_a_process_trees_cpu_counts_its_living_children() -> None:
    burn = "import sys, time; sum(range(10**7)); print(time.process_time(), flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child_cpu = float(child.stdout.readline())
        own_before = sum(os.times()[:2])
        total = process_tree_cpu_s(os.getpid())
        own_after = sum(os.times()[:2])
    finally:
        child.communicate("")
    # /proc counts in clock ticks: each of the two processes may be up to a tick short.
    assert own_before + child_cpu - 2 * TICK_S <= total <= own_after + child_cpu + 2 * TICK_S
    assert child_cpu > 2 * TICK_S, "the child burned measurable CPU"


def test_a_process_that_is_gone_counts_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_tree_cpu_s(child.pid) == 0.0
