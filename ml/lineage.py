"""Lineage values attached to models: the code version of what shapes a trained model, and the git commit.

`code_version()` hashes exactly the sources that change what training produces from a snapshot: the feature
transform and the Spark job that fits it, the data path and the training loop, the model family, the search (space
rules, defaults, searcher and scheduler) and the shipped search spaces. Serving, events, the registry, evaluation,
the CLI and the Airflow glue are left out: changing them must not make the pipeline retrain a model that already
exists for a snapshot (the `check_for_existing_model` branch compares this hash).
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# Paths relative to the `ml` package; a folder means every .py and .json file in it.
MODEL_SOURCES = (
    "features",
    "preprocess/job.py",
    "preprocess/steps.py",
    "data",
    "train",
    "models.py",
    "metrics.py",  # the validation metrics choose the epoch and the trial
    "tune/space.py",
    "tune/config.py",
    "tune/search.py",
    "tune/parallel.py",
    "search_spaces",
)


def model_source_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files `code_version` hashes, in a stable order; FileNotFoundError if a listed source is missing."""
    files: list[Path] = []
    for name in MODEL_SOURCES:
        path = package_dir / name
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".py", ".json") and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: listed in ml.lineage.MODEL_SOURCES but missing")
    return files


def code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """A hash of the sources that shape a trained model: equal code gives an equal version, with or without git."""
    return _code_version(package_dir)


@cache
def _code_version(package_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in model_source_files(package_dir):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@cache
def git_sha(repo: Path = PACKAGE_DIR.parent) -> str:
    """The git commit of this checkout, "-dirty" when tracked files changed; "unknown" without git (an image)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
