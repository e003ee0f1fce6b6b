"""Fields of Linux's /proc files: a process's memory (`/proc/<pid>/status`) and the machine's (`/proc/meminfo`)."""

from __future__ import annotations

from pathlib import Path


def proc_field_kib(path: str, field: str) -> int | None:
    """A `Field:   1234 kB` line's number from a /proc file; None where the file or the line is not there (no /proc,
    a process that ended: a zombie has no memory lines)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def status_kib(pid: int | str, field: str) -> int | None:
    """A field of the process's status (`VmRSS`, `VmHWM`: KiB); `pid` may be "self"."""
    return proc_field_kib(f"/proc/{pid}/status", field)
