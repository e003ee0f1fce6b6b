"""Free disk space, checked before the steps that write a lot: a full disk makes the tools fail with errors that do not
say so (mypy reports an INTERNAL ERROR; Kafka, the S3 server and Spark fail mid-write)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from stack.process import StackError

GIB = 1024**3
# What one run of the suite writes besides .venv: the stack's data and logs (S3 objects, Kafka's log, PostgreSQL,
# MLflow), Spark's and Ray's scratch folders in /tmp, the mypy cache. About 1 GiB was measured; twice that is asked.
SUITE_NEEDS_GIB = 3.0


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def require_free_space(path: Path, need_gib: float, *, free_bytes: Callable[[Path], int] | None = None) -> float:
    """The GiB free on `path`'s filesystem; a StackError that says how much is missing when fewer than `need_gib`."""
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    free_gib = (free_bytes or _free_bytes)(existing) / GIB
    if free_gib < need_gib:
        raise StackError(
            f"only {free_gib:.1f} GiB free on the filesystem of {existing}; this needs {need_gib:g} GiB (the stack's "
            "data and logs, Spark's and Ray's scratch folders, the mypy cache): free some space (old clones, "
            ".stack/data) and run it again"
        )
    return free_gib
