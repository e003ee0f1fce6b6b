"""ml.tune.state: whether Tune left a restorable experiment (a local folder stands in for S3), and the manifest and
stored result a search keeps beside Tune's state (moto's S3)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyarrow import fs

from ml.storage import S3Uri, read_json, write_json
from ml.tune.config import SEARCH_MANIFEST_FILE, SEARCH_RESULT_FILE, SearchConfig, SearchResult
from ml.tune.state import compare_manifest, record_or_check_manifest, restorable, stored_result
from tests.support.synthetic_features import in_memory_s3

EXPERIMENT = S3Uri("lake", "tune/d/s/run-1")
CONFIG = SearchConfig(dataset="d", snapshot_id="s", run_name="run-1", search_space={"lr": 0.01}, num_samples=4)
MANIFEST = CONFIG.manifest("classification")


# -- restorable


def test_a_run_killed_before_its_first_snapshot_starts_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    filesystem = fs.LocalFileSystem()
    run = tmp_path / "run"
    assert not restorable(str(run), filesystem)  # nothing there
    run.mkdir()
    assert not restorable(str(run), filesystem)  # an empty folder
    (run / "tuner.pkl").write_bytes(b"not restorable alone")
    with caplog.at_level(logging.WARNING, "ml.tune.state"):
        assert not restorable(str(run), filesystem)
    assert "has tuner.pkl but no experiment state" in caplog.text
    (run / "trial_x").mkdir()
    (run / "trial_x" / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")  # not at the top: no state
    assert not restorable(str(run), filesystem)
    (run / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    assert restorable(str(run), filesystem)


# -- manifest and stored result


@pytest.fixture
def s3() -> Iterator[Any]:
    with in_memory_s3("lake") as client:
        yield client


def _stored(client: Any, **changes: Any) -> SearchResult:
    values: dict[str, Any] = {name: None for name in SearchResult.__dataclass_fields__}
    values.update({"run_name": "run-1", "search_space_hash": MANIFEST["search_space_hash"], "best_trial_id": "t1"})
    values.update(changes)
    result = SearchResult(**values)
    write_json(EXPERIMENT.join(SEARCH_RESULT_FILE), result.to_dict(), client)
    return result


def test_a_new_run_records_its_manifest(s3: Any) -> None:
    record_or_check_manifest(EXPERIMENT, MANIFEST, False, s3)
    assert read_json(EXPERIMENT.join(SEARCH_MANIFEST_FILE), s3) == MANIFEST
    # A new start (nothing restorable) records the current settings, whatever was there.
    other = SearchConfig(dataset="d", snapshot_id="s", run_name="run-1", search_space={"lr": 0.01}, num_samples=5)
    record_or_check_manifest(EXPERIMENT, other.manifest("classification"), False, s3)
    assert read_json(EXPERIMENT.join(SEARCH_MANIFEST_FILE), s3)["num_samples"] == 5


def test_a_resumed_run_must_keep_its_settings(s3: Any) -> None:
    record_or_check_manifest(EXPERIMENT, MANIFEST, False, s3)
    record_or_check_manifest(EXPERIMENT, MANIFEST, True, s3)  # the same settings: fine
    # Settings that do not change the search itself may differ (e.g. how many trials run at once).
    record_or_check_manifest(EXPERIMENT, {**MANIFEST, "max_concurrent_trials": 1, "cpus_per_trial": 2.0}, True, s3)
    with pytest.raises(ValueError, match=r"started with other settings \(stored, now\): \{'num_samples': \(4, 8\)\}"):
        record_or_check_manifest(EXPERIMENT, {**MANIFEST, "num_samples": 8}, True, s3)
    assert read_json(EXPERIMENT.join(SEARCH_MANIFEST_FILE), s3) == MANIFEST  # a check writes nothing


def test_a_run_without_a_manifest_has_nothing_to_compare(s3: Any) -> None:
    compare_manifest(EXPERIMENT, MANIFEST, s3)  # e.g. a run of code older than the manifest


def test_no_stored_result_before_a_search_completed(s3: Any) -> None:
    assert stored_result(EXPERIMENT, MANIFEST, s3) is None


def test_the_stored_result_of_the_same_search(s3: Any) -> None:
    write_json(EXPERIMENT.join(SEARCH_MANIFEST_FILE), MANIFEST, s3)
    stored = _stored(s3)
    assert stored_result(EXPERIMENT, MANIFEST, s3) == stored


def test_a_stored_result_of_other_settings_is_refused(s3: Any) -> None:
    write_json(EXPERIMENT.join(SEARCH_MANIFEST_FILE), MANIFEST, s3)
    _stored(s3)
    with pytest.raises(ValueError, match="seed"):
        stored_result(EXPERIMENT, {**MANIFEST, "seed": 3}, s3)


def test_a_stored_result_of_another_search_space_is_refused_without_a_manifest(s3: Any) -> None:
    _stored(s3, search_space_hash="0000000000000000")
    with pytest.raises(ValueError, match="completed with search space 0000000000000000"):
        stored_result(EXPERIMENT, MANIFEST, s3)
