"""ml.tune.config: SearchConfig (checks, objective, manifest, where it lives in the lake), run names, SearchResult
and reading one back (dict, JSON, file, moto's S3)."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from ml.settings import LakeSettings
from ml.storage import S3Uri, write_json
from ml.tune.config import (
    RESUME_INVARIANTS,
    SEARCH_RESULT_FILE,
    SearchConfig,
    SearchResult,
    load_search_result,
    sanitize_run_name,
    stored_search_result,
)
from ml.tune.space import default_search_space, search_space_hash
from tests.support.synthetic_features import IN_MEMORY_S3, in_memory_s3

LAKE = LakeSettings(raw_bucket="raw-b", lake_bucket="lake-b")


def _config(**values: Any) -> SearchConfig:
    return SearchConfig(**{"dataset": "d", "snapshot_id": "s", "run_name": "r", "search_space": {"lr": 0.01}, **values})


def test_run_names_are_sanitised() -> None:
    assert sanitize_run_name("manual__2024-05-01T10:00:00+00:00") == "manual__2024-05-01T10-00-00-00-00"
    assert sanitize_run_name("scheduled__x/y z") == "scheduled__x-y-z"
    assert sanitize_run_name("  .run.  ") == "run"
    assert len(sanitize_run_name("a" * 300)) == 200
    for bad in ("::", "", "..."):
        with pytest.raises(ValueError, match="no usable characters"):
            sanitize_run_name(bad)


def test_search_config_objective_defaults_and_checks() -> None:
    config = _config(run_name="manual__a:b")
    assert config.run_name == "manual__a-b"
    assert config.objective("classification") == ("val_loss", "min")
    assert config.objective("regression") == ("val_loss", "min")
    assert _config(metric="val_accuracy").objective("classification") == ("val_accuracy", "max")
    assert _config(metric="val_rmse", mode="max").objective("regression") == ("val_rmse", "max")
    with pytest.raises(ValueError, match="val_accuracy"):
        _config(metric="val_accuracy").objective("regression")
    with pytest.raises(ValueError, match="not reported for classification"):
        _config(metric="test_accuracy").objective("classification")


@pytest.mark.parametrize(
    "values,fragment",
    [
        ({"num_samples": 0}, "num_samples must be >= 1"),
        ({"max_concurrent_trials": 0}, "max_concurrent_trials must be >= 1"),
        ({"max_epochs": 0}, "max_epochs must be >= 1"),
        ({"patience": 0}, "patience must be >= 1"),
        ({"reduction_factor": 1}, "reduction_factor must be >= 2"),
        ({"cpus_per_trial": 0}, "cpus_per_trial must be > 0"),
        ({"mode": "best"}, "mode must be 'min' or 'max'"),
        ({"dataset": ""}, "dataset and snapshot_id are required"),
        ({"snapshot_id": ""}, "dataset and snapshot_id are required"),
        ({"search_space": {"lr": -1}}, "search space 'lr'"),
        ({"run_name": "//"}, "no usable characters"),
    ],
)
def test_search_config_refuses_bad_values(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        _config(**values)


def test_grace_period() -> None:
    assert _config(max_epochs=12).resolved_grace_period == 3
    assert _config(max_epochs=3).resolved_grace_period == 1
    assert _config(max_epochs=3, grace_period=5).resolved_grace_period == 3  # never past max_epochs
    assert _config(max_epochs=20, grace_period=2).resolved_grace_period == 2


def test_where_a_search_lives_in_the_lake() -> None:
    config = _config(run_name="manual__a:b")
    assert config.experiment_uri(LAKE) == S3Uri("lake-b", "tune/d/s/manual__a-b")
    assert config.resolved_features_uri(LAKE) == S3Uri("lake-b", "datasets/d/features/s")
    assert _config(features_uri="s3a://other/f/x").resolved_features_uri(LAKE) == S3Uri("other", "f/x")


def test_create_takes_any_search_space_form() -> None:
    config = SearchConfig.create(dataset="d", snapshot_id="s", run_name="r", search_space=None, num_samples=3)
    assert config.search_space == default_search_space() and config.num_samples == 3
    assert SearchConfig.create(dataset="d", snapshot_id="s", run_name="r", search_space='{"lr": 0.1}').search_space == {
        "lr": 0.1
    }
    with in_memory_s3("lake") as client:
        client.put_object(Bucket="lake", Key="space.json", Body=b'{"dropout": 0.3}')
        config = SearchConfig.create(
            dataset="d", snapshot_id="s", run_name="r", search_space="s3://lake/space.json", s3=IN_MEMORY_S3
        )
    assert config.search_space == {"dropout": 0.3}


def test_the_manifest_holds_every_resume_invariant() -> None:
    config = _config(num_samples=6, max_epochs=8, patience=2, seed=4, reduction_factor=4, metric="val_r2")
    manifest = config.manifest("regression")
    assert set(RESUME_INVARIANTS) <= set(manifest)
    assert manifest["search_space_hash"] == search_space_hash({"lr": 0.01})
    assert (manifest["metric"], manifest["mode"], manifest["grace_period"]) == ("val_r2", "max", 2)
    assert (manifest["dataset"], manifest["snapshot_id"], manifest["run_name"]) == ("d", "s", "r")
    json.dumps(manifest)  # stored as JSON
    with pytest.raises(ValueError, match="not reported"):
        config.manifest("classification")


def _result(**values: Any) -> SearchResult:
    base: dict[str, Any] = {field.name: None for field in fields(SearchResult)}
    base.update(
        dataset="d",
        snapshot_id="s",
        run_name="r",
        task="regression",
        metric="val_loss",
        mode="min",
        best_trial_id="t1",
        best_params={"lr": 0.01},
        best_epoch=2,
        best_validation_metrics={"val_loss": 0.5, "val_r2": math.nan},
        best_checkpoint_uri="s3://lake-b/tune/d/s/r/trial_t1/checkpoint_000001",
        num_trials=4,
        num_errored=0,
        experiment_uri="s3://lake-b/tune/d/s/r",
        features_uri="s3://lake-b/datasets/d/features/s",
        feature_spec_uri="s3://lake-b/datasets/d/features/s/feature_spec.json",
        search_space={"lr": {"type": "constant", "value": 0.01}},
        search_space_hash="abc",
    )
    base.update(values)
    return SearchResult(**base)


def test_a_search_result_is_json_without_nan() -> None:
    result = _result()
    data = json.loads(result.to_json())
    assert data["best_validation_metrics"] == {"val_loss": 0.5, "val_r2": None}
    assert SearchResult.from_dict(data).best_validation_metrics == {"val_loss": 0.5, "val_r2": None}
    assert result.search_result_uri == S3Uri("lake-b", f"tune/d/s/r/{SEARCH_RESULT_FILE}")
    # Keys a newer writer added are ignored by an older reader.
    assert SearchResult.from_dict({**data, "added_later": 1}) == SearchResult.from_dict(data)


def test_a_search_result_is_read_from_every_source(tmp_path: Path) -> None:
    result = _result(best_validation_metrics={"val_loss": 0.5})
    path = tmp_path / "result.json"
    path.write_text(result.to_json())
    assert load_search_result(result, None) is result
    assert load_search_result(result.to_dict(), None) == result
    assert load_search_result(result.to_json(), None) == result
    assert load_search_result(str(path), None) == load_search_result(path, None) == result
    with in_memory_s3("lake-b") as client:
        write_json(result.search_result_uri, result.to_dict(), client)
        assert load_search_result(str(result.search_result_uri), client) == result


def test_the_stored_result_of_a_completed_search() -> None:
    result = _result(best_validation_metrics={"val_loss": 0.5})
    with in_memory_s3("lake-b") as client:
        with pytest.raises(LookupError, match=r"s3://lake-b/tune/d/s/r/search_result.json: no completed search"):
            stored_search_result(LAKE, "d", "s", "r", client)
        write_json(result.search_result_uri, result.to_dict(), client)
        assert stored_search_result(LAKE, "d", "s", "r", client) == result
        # The run name is sanitised as the search sanitised it.
        write_json(S3Uri("lake-b", "tune/d/s/manual__a-b/search_result.json"), result.to_dict(), client)
        assert stored_search_result(LAKE, "d", "s", "manual__a:b", client) == result
