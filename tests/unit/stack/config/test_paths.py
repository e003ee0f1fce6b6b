"""stack/config/paths.py: where the stack lives, and how a secret file is written there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stack.config import REPO_ROOT, StackPaths, stack_paths


def test_the_stack_folder_is_configurable(stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    assert stack_paths() == stack_dir
    assert stack_dir.spark_s3a_classpath_file == stack_dir.root / "jars" / "spark-s3a.classpath"
    monkeypatch.delenv("MLOPS_STACK_DIR")
    assert stack_paths().root == (REPO_ROOT / ".stack").resolve()


def test_write_private_never_lets_others_read_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.config import paths as config

    modes: list[int] = []
    real_write = os.write

    def write(descriptor: int, data: bytes) -> int:
        modes.append(stat.S_IMODE(os.fstat(descriptor).st_mode))  # the mode when the first byte is written
        return real_write(descriptor, data)

    monkeypatch.setattr(config.os, "write", write)
    loose = tmp_path / "secret.json"
    loose.write_text("old")
    loose.chmod(0o644)  # a file left readable by an older version is tightened before it is rewritten
    for path in (tmp_path / "new" / "secret.json", loose):
        config.write_private(path, "s3cret")
        assert path.read_text() == "s3cret" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert modes == [0o600, 0o600]
