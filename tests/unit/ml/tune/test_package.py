"""ml.tune (the package): cheap to import, and the names that Tune pickled into experiment state written before
ml.tune became a package still resolve, to today's definitions: the fixture in tests/fixtures/legacy_tune_state/
(written by that code) unpickles into today's callbacks, which a restored search then replaces."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import ml.tune
from ml.tune import callbacks, search

LEGACY_STATE = Path(__file__).resolve().parents[3] / "fixtures" / "legacy_tune_state"


def test_legacy_pickled_names_resolve_to_todays_definitions() -> None:
    assert ml.tune.KafkaMetricsCallback is callbacks.KafkaMetricsCallback
    assert ml.tune.MlflowTrialCallback is callbacks.MlflowTrialCallback
    assert ml.tune.ProgressLogCallback is callbacks.ProgressLogCallback
    assert ml.tune.trial_name is search.trial_name
    with pytest.raises(AttributeError, match="has no attribute 'run_search'"):
        ml.tune.run_search


def test_importing_the_package_imports_neither_ray_nor_torch() -> None:
    code = (
        "import sys, ml.tune, ml.tune.config, ml.tune.space, ml.tune.state, ml.tune.cli, ml.tune.runtime, "
        "ml.tune.search; "
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[4]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_legacy_experiment_state_unpickles_into_todays_callbacks() -> None:
    from tests.support.tune_interrupt import InterruptAfterTrials

    state = pickle.loads((LEGACY_STATE / "tuner.pkl").read_bytes())
    run_config = state["_run_config"]
    assert run_config.name == "legacy-v0"
    progress, mlflow, kafka, interrupt = run_config.callbacks
    assert type(progress) is callbacks.ProgressLogCallback
    assert (progress.run_name, progress.metric, progress.mode, progress.num_samples) == (
        "legacy-v0",
        "val_loss",
        "min",
        4,
    )
    # The old code recorded no endpoints (None: "the environment"); migrated, nothing is recorded.
    assert type(mlflow) is callbacks.MlflowTrialCallback and mlflow.mlflow is None and mlflow.parent_run_id
    assert type(kafka) is callbacks.KafkaMetricsCallback and kafka.kafka is None
    assert kafka.dag_run_id == "manual__legacy-v0" and kafka.run_name == "legacy-v0"
    assert isinstance(interrupt, InterruptAfterTrials)

    # What a restore does with them: the search's own ones are replaced for the current settings; others stay.
    class Restored:
        def __init__(self) -> None:
            self._local_tuner = type("Local", (), {"get_run_config": lambda _self: run_config})()

    fresh = [callbacks.ProgressLogCallback("legacy-v0", "val_loss", "min", 4)]
    search._replace_pipeline_callbacks(Restored(), fresh)
    assert run_config.callbacks == [*fresh, interrupt]


def test_the_legacy_trial_name_function_is_todays() -> None:
    # Tune pickled `ml.tune.trial_name` as the trial name and folder creator of every trial.
    pickled = pickle.dumps(ml.tune.trial_name)
    assert b"ml.tune.search" in pickled  # pickled today under its own module
    legacy = b"\x80\x05\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x07ml.tune\x94\x8c\ntrial_name\x94\x93\x94."
    assert (LEGACY_STATE / "experiment_state-2026-12-02_01-05-25.json").read_text().count(legacy.hex()) == 6
    assert pickle.loads(legacy) is search.trial_name
