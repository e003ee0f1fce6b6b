"""ml.registry's package namespace: the names that pyfunc code registered before ml.registry became a package imports
from it still resolve (to the objects that now live in ml.predictor and ml.registry.conventions)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import ml.registry
from ml import predictor
from ml.registry import conventions

REPO = Path(__file__).resolve().parents[4]
LEGACY = {
    "CHECKPOINT_ARTIFACT": conventions,
    "FEATURE_SPEC_ARTIFACT": conventions,
    "TabularPredictor": predictor,
    "output_frame": predictor,
}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_legacy_names_resolve_to_the_current_objects(name: str) -> None:
    assert getattr(ml.registry, name) is getattr(LEGACY[name], name)


def test_legacy_from_imports_work_in_a_fresh_interpreter() -> None:
    # What registered pyfunc code runs, in a process that has imported nothing of `ml` yet.
    code = (
        "from ml.registry import CHECKPOINT_ARTIFACT, FEATURE_SPEC_ARTIFACT, TabularPredictor, output_frame\n"
        "import ml.predictor\n"
        "assert TabularPredictor is ml.predictor.TabularPredictor and output_frame is ml.predictor.output_frame\n"
        "print(CHECKPOINT_ARTIFACT, FEATURE_SPEC_ARTIFACT)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["checkpoint", "feature_spec"]


def test_the_legacy_names_match_the_registered_artifacts() -> None:
    # The artifact names are part of every registered version: they must never change.
    assert (conventions.CHECKPOINT_ARTIFACT, conventions.FEATURE_SPEC_ARTIFACT) == ("checkpoint", "feature_spec")


def test_other_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'register_model'"):
        ml.registry.register_model
    assert not hasattr(ml.registry, "nothing_like_this")
    assert importlib.import_module("ml.registry") is ml.registry
