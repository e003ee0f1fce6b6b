"""ml.lineage: code_version changes exactly when a source that shapes a trained model changes (edits are made to copies
of the package in a temporary folder), and git_sha names the checkout."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ml.lineage import MODEL_SOURCES, PACKAGE_DIR, code_version, git_sha, model_source_files


@pytest.fixture
def copy_package(tmp_path: Path) -> Callable[[str], Path]:
    """A fresh copy of the `ml` package per call (code_version caches per folder: each edit gets its own copy)."""

    def make(name: str) -> Path:
        target = tmp_path / name / "ml"
        shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return target

    return make


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def first_docstring_line(path: Path) -> str:
    return path.read_text().split('"""')[1].splitlines()[0]


def test_every_listed_source_exists() -> None:
    for name in MODEL_SOURCES:
        assert (PACKAGE_DIR / name).exists(), name
    files = model_source_files()
    assert files == sorted(set(files), key=files.index)  # no file twice
    assert {p.relative_to(PACKAGE_DIR).as_posix() for p in files} >= {
        "features/spec.py",
        "preprocess/steps.py",
        "train/loop.py",
        "search_spaces/default.json",
    }


def test_what_does_not_shape_a_model_is_not_hashed() -> None:
    hashed = {p.relative_to(PACKAGE_DIR).as_posix() for p in model_source_files()}
    for left_out in (
        "serve/app.py",
        "registry/promote.py",
        "events/publisher.py",
        "evaluate.py",
        "__main__.py",
        "pipeline.py",
        "lineage.py",
        "storage.py",
        "preprocess/hive.py",
        "ingest/snapshot.py",
    ):
        assert left_out not in hashed, left_out


def test_the_version_is_stable_and_short(copy_package: Callable[[str], Path]) -> None:
    version = code_version()
    assert re.fullmatch(r"[0-9a-f]{12}", version)
    assert code_version(PACKAGE_DIR) == version
    # the same code elsewhere (an image, another checkout) is the same version
    assert code_version(copy_package("elsewhere")) == version


@pytest.mark.parametrize(
    "change",
    [
        "serve/app.py",  # serving
        "registry/promote.py",  # the registry
        "storage.py",  # a shared module's docstring
        "new serving module",
        "pycache",
    ],
)
def test_changes_outside_the_model_sources_keep_the_version(copy_package: Callable[[str], Path], change: str) -> None:
    package = copy_package("changed")
    if change == "new serving module":
        (package / "serve" / "extra.py").write_text("VALUE = 1\n")
    elif change == "pycache":
        (package / "tune" / "__pycache__").mkdir(exist_ok=True)
        (package / "tune" / "__pycache__" / "space.cpython-311.pyc").write_bytes(b"\0compiled")
    else:
        path = package / change
        edit(path, first_docstring_line(path), first_docstring_line(path) + " (reworded)")
    assert code_version(package) == code_version(PACKAGE_DIR)


@pytest.mark.parametrize(
    "change",
    [
        "features/spec.py",
        "preprocess/steps.py",
        "preprocess/job.py",
        "train/loop.py",
        "models.py",
        "metrics.py",
        "tune/space.py",
        "search_spaces/default.json",
        "new search space",
    ],
)
def test_a_change_to_a_model_source_changes_the_version(copy_package: Callable[[str], Path], change: str) -> None:
    package = copy_package("changed")
    if change == "new search space":
        (package / "search_spaces" / "mine.json").write_text("{}\n")
    elif change.endswith(".json"):
        path = package / change
        path.write_text(path.read_text() + "\n")
    else:
        path = package / change
        edit(path, first_docstring_line(path), first_docstring_line(path) + " (reworded)")
    assert code_version(package) != code_version(PACKAGE_DIR)


def test_a_moved_source_changes_the_version(copy_package: Callable[[str], Path]) -> None:
    # names are hashed with contents: the same bytes under another listed name are other code
    package = copy_package("moved")
    (package / "search_spaces" / "small.json").rename(package / "search_spaces" / "smaller.json")
    assert code_version(package) != code_version(PACKAGE_DIR)


def test_a_missing_source_is_an_error(copy_package: Callable[[str], Path]) -> None:
    package = copy_package("broken")
    (package / "models.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"models\.py: listed in ml\.lineage\.MODEL_SOURCES but missing"):
        code_version(package)


def test_git_sha(tmp_path: Path) -> None:
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", git_sha()) or git_sha() == "unknown"
    assert git_sha(tmp_path) == "unknown"  # no git repository here (an image)
