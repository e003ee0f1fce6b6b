"""Stack tests work in a throwaway stack folder (MLOPS_STACK_DIR under tmp_path): nothing is generated in, or read
from, the real `.stack/`."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.config import StackPaths


@pytest.fixture
def stack_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StackPaths:
    root = tmp_path / "stack"
    monkeypatch.setenv("MLOPS_STACK_DIR", str(root))
    return StackPaths(root)
