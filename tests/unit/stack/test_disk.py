"""stack/disk.py: the free-space check, with the filesystem's free bytes injected (this disk's are what they are)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.disk import GIB, require_free_space
from stack.process import StackError


def test_enough_space_returns_the_free_gib_of_the_nearest_existing_folder(tmp_path: Path) -> None:
    asked: list[Path] = []

    def free_bytes(path: Path) -> int:
        asked.append(path)
        return 5 * GIB

    assert require_free_space(tmp_path / "not" / "made" / "yet", 3, free_bytes=free_bytes) == 5.0
    assert asked == [tmp_path], "a folder that does not exist yet is measured on its nearest existing parent"


def test_too_little_space_says_how_much_there_is_and_how_much_is_needed(tmp_path: Path) -> None:
    with pytest.raises(StackError) as error:
        require_free_space(tmp_path, 3, free_bytes=lambda path: GIB // 10)
    assert str(error.value).startswith(f"only 0.1 GiB free on the filesystem of {tmp_path}; this needs 3 GiB")
    assert "free some space" in str(error.value)


def test_the_real_filesystem_is_measured(tmp_path: Path) -> None:
    """No injection: the default reads the filesystem (a need of 0 GiB passes on any disk)."""
    assert require_free_space(tmp_path, 0) > 0
