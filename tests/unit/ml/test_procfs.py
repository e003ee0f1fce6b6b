"""Reading fields of /proc files (ml.procfs)."""

from __future__ import annotations

import os
from pathlib import Path

from ml.procfs import proc_field_kib, status_kib


def test_a_field_is_read_as_its_number_and_a_missing_one_is_none(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n")
    assert proc_field_kib(str(status), "VmHWM") == 204800
    assert proc_field_kib(str(status), "VmRSS") == 102400
    assert proc_field_kib(str(status), "VmSwap") is None
    assert proc_field_kib(str(tmp_path / "absent"), "VmHWM") is None


def test_this_process_status_reads_the_same_by_pid_and_as_self() -> None:
    peak = status_kib("self", "VmHWM")
    assert peak is not None and peak > 1024  # a Python process holds more than 1 MiB
    assert status_kib(os.getpid(), "VmHWM") is not None
    assert status_kib(2**22 + 1, "VmHWM") is None  # above Linux's largest pid: no such process
