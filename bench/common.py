"""What every benchmark shares: a timer, the machine's description, and the JSON report (stdout + bench/results/)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGES = ("pyspark", "pandas", "pyarrow", "numpy", "boto3", "torch", "ray", "mlflow", "kafka-python")

T = TypeVar("T")


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """`with timer() as t: ...` then `t["seconds"]` (wall clock, perf_counter)."""
    elapsed: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed["seconds"] = time.perf_counter() - start


def timed(function: Callable[[], T]) -> tuple[T, float]:
    """Call `function()`; return its result and the wall-clock seconds it took."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _java_version() -> str | None:
    try:
        completed = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (completed.stderr or completed.stdout).splitlines()
    return lines[0].strip() if lines else None


def _git_commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


def machine_info(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """Cores, memory, CPU model, Python, Java and package versions: what a ratio needs next to it to be read."""
    cpu_model = None
    try:
        cpu_model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        )
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _memory_bytes()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": cpu_model,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "memory_gib": round(memory / 1024**3, 1) if memory else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "java": _java_version(),
        "packages": versions,
        "git_commit": _git_commit(),
    }


def report(name: str, result: dict[str, Any], packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """Print the benchmark's JSON on stdout and write it to bench/results/NAME.json; returns the full document."""
    document = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **result,
        "machine": machine_info(packages),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    temporary = RESULTS_DIR / f"{name}.json.tmp"
    temporary.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    temporary.replace(RESULTS_DIR / f"{name}.json")
    print(json.dumps(document, indent=2, default=str), flush=True)
    return document


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def ensure_repo_on_path() -> None:
    """Let `python bench/bX.py` import `ml` as `python -m bench.bX` does."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
