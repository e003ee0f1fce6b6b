"""How the pipeline uses the MLflow Model Registry: one registered model per dataset and task, aliases `champion`
(what serving loads) and `challenger` (the latest complete registration), version tags that carry lineage and test
metrics, and the artifacts of a version (a pyfunc "model from code": ml/serve/pyfunc_model.py plus `checkpoint/`,
`feature_spec.json` and `evaluation.json`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

CHAMPION = "champion"
CHALLENGER = "challenger"

PYFUNC_CODE_FILE = Path(__file__).resolve().parent.parent / "serve" / "pyfunc_model.py"
MODEL_ARTIFACT_NAME = "model"
CHECKPOINT_ARTIFACT = "checkpoint"
FEATURE_SPEC_ARTIFACT = "feature_spec"
EVALUATION_ARTIFACT = "evaluation"

REGISTRATION_TAG = "mlops.registration"  # "pending" until the version is complete, then "complete"
LINEAGE_TAGS = (
    "dataset",
    "task",
    "snapshot_id",
    "features_uri",
    "feature_spec_uri",
    "checkpoint_uri",
    "dag_id",
    "dag_run_id",
    "code_version",
    "git_sha",
    "search_space_hash",
    "mlflow_parent_run_id",
    "num_trials",
    "metric",
    "is_backfill",
)
TEST_METRIC_TAG_PREFIX = "test."  # test.accuracy, test.rmse ...: the version's own test metrics


def registered_model_name(dataset: str, task: str) -> str:
    """One registered model per dataset and task."""
    return f"{dataset}-{task}"


def test_metric(tags: Mapping[str, str], metric: str) -> float | None:
    """A version's recorded test metric (tag `test.<metric>`), or None when absent or not a finite number."""
    try:
        value = float(tags[f"{TEST_METRIC_TAG_PREFIX}{metric}"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
