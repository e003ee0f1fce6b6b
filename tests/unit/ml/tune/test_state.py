"""ml.tune.state: whether Tune left a restorable experiment, every file a restore reads signed by this stack, and the
manifest and stored result a search keeps beside Tune's state, signed too (a local folder stands in for S3, read
through the search's signed filesystem)."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest
from pyarrow import fs

from ml.storage import S3Uri
from ml.tune.config import SEARCH_MANIFEST_FILE, SEARCH_RESULT_FILE, SearchConfig, SearchResult
from ml.tune.signing import TamperedTuneState, signed_filesystem
from ml.tune.state import compare_manifest, record_or_check_manifest, restorable, store_result, stored_result

EXPERIMENT = S3Uri("lake", "tune/d/s/run-1")
RUN = f"{EXPERIMENT.bucket}/{EXPERIMENT.key}"
CONFIG = SearchConfig(dataset="d", snapshot_id="s", run_name="run-1", search_space={"lr": 0.01}, num_samples=4)
MANIFEST = CONFIG.manifest("classification")
STATE = "experiment_state-2026-01-01_00-00-00.json"


@pytest.fixture
def storage(tmp_path: Path) -> Any:
    """A plain filesystem laid out as S3 (bucket/key): what something without the key writes through."""
    return fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem())


@pytest.fixture
def signed(storage: Any) -> Any:
    """The search's filesystem over it, with this test's key."""
    return signed_filesystem(storage, secrets.token_urlsafe(32))


def _write(filesystem: Any, name: str, content: bytes) -> None:
    path = f"{RUN}/{name}"
    filesystem.create_dir(path.rpartition("/")[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(content)


# -- restorable


def test_a_run_killed_before_its_first_snapshot_starts_over(signed: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert not restorable(RUN, signed)  # nothing there
    signed.create_dir(RUN, recursive=True)
    assert not restorable(RUN, signed)  # an empty folder
    _write(signed, "tuner.pkl", b"not restorable alone")
    with caplog.at_level(logging.WARNING, "ml.tune.state"):
        assert not restorable(RUN, signed)
    assert "has tuner.pkl but no experiment state" in caplog.text
    _write(signed, f"trial_x/{STATE}", b"{}")  # not at the top: no state
    assert not restorable(RUN, signed)
    _write(signed, STATE, b"{}")
    assert restorable(RUN, signed)


def test_a_planted_tuner_pkl_alone_is_not_read(storage: Any, signed: Any) -> None:
    # No experiment state: the run starts over and Tune writes its own tuner.pkl; nothing of the planted one is read.
    _write(storage, "tuner.pkl", b"planted")
    assert not restorable(RUN, signed)


@pytest.mark.parametrize(
    "planted", ["tuner.pkl", STATE, "searcher-state-2026-01-01_00-00-00.pkl", SEARCH_MANIFEST_FILE]
)
def test_an_experiment_with_an_unsigned_state_file_is_refused(storage: Any, signed: Any, planted: str) -> None:
    """Every file Tune reads back to restore (tuner.pkl, the experiment and searcher state, the rest of the top
    level's JSON) must carry this stack's signature: one written without the key stops the restore, naming it."""
    for name in {"tuner.pkl", STATE, "searcher-state-2026-01-01_00-00-00.pkl", SEARCH_MANIFEST_FILE} - {planted}:
        _write(signed, name, b"signed")
    _write(signed, "trial_x/result.json", b"{}")  # a trial's files are checked when read, not here
    _write(storage, planted, b"planted")
    with pytest.raises(TamperedTuneState, match=f"{RUN}/{planted}: it has no valid signature"):
        restorable(RUN, signed)


def test_an_experiment_whose_state_changed_after_signing_is_refused(storage: Any, signed: Any) -> None:
    _write(signed, "tuner.pkl", b"signed")
    _write(signed, STATE, b"{}")
    assert restorable(RUN, signed)
    _write(storage, STATE, b'{"changed": true}')
    with pytest.raises(TamperedTuneState, match=f"{STATE}: its content does not match its signature"):
        restorable(RUN, signed)


# -- manifest and stored result


def _stored(filesystem: Any, **changes: Any) -> SearchResult:
    values: dict[str, Any] = {name: None for name in SearchResult.__dataclass_fields__}
    values.update({"run_name": "run-1", "search_space_hash": MANIFEST["search_space_hash"], "best_trial_id": "t1"})
    values.update({"experiment_uri": str(EXPERIMENT), **changes})
    result = SearchResult(**values)
    store_result(result, filesystem)
    return result


def _read(filesystem: Any, name: str) -> Any:
    with filesystem.open_input_stream(f"{RUN}/{name}") as stream:
        return json.loads(stream.readall())


def test_a_new_run_records_its_manifest(signed: Any) -> None:
    record_or_check_manifest(EXPERIMENT, MANIFEST, False, signed)
    assert _read(signed, SEARCH_MANIFEST_FILE) == MANIFEST  # read back through the check: signed
    # A new start (nothing restorable) records the current settings, whatever was there.
    other = SearchConfig(dataset="d", snapshot_id="s", run_name="run-1", search_space={"lr": 0.01}, num_samples=5)
    record_or_check_manifest(EXPERIMENT, other.manifest("classification"), False, signed)
    assert _read(signed, SEARCH_MANIFEST_FILE)["num_samples"] == 5


def test_a_resumed_run_must_keep_its_settings(signed: Any) -> None:
    record_or_check_manifest(EXPERIMENT, MANIFEST, False, signed)
    record_or_check_manifest(EXPERIMENT, MANIFEST, True, signed)  # the same settings: fine
    # Settings that do not change the search itself may differ (e.g. how many trials run at once).
    record_or_check_manifest(EXPERIMENT, {**MANIFEST, "max_concurrent_trials": 1, "cpus_per_trial": 2.0}, True, signed)
    with pytest.raises(ValueError, match=r"started with other settings \(stored, now\): \{'num_samples': \(4, 8\)\}"):
        record_or_check_manifest(EXPERIMENT, {**MANIFEST, "num_samples": 8}, True, signed)
    assert _read(signed, SEARCH_MANIFEST_FILE) == MANIFEST  # a check writes nothing


def test_a_run_without_a_manifest_has_nothing_to_compare(signed: Any) -> None:
    compare_manifest(EXPERIMENT, MANIFEST, signed)  # e.g. a run of code older than the manifest


def test_no_stored_result_before_a_search_completed(signed: Any) -> None:
    assert stored_result(EXPERIMENT, MANIFEST, signed) is None


def test_the_stored_result_of_the_same_search(signed: Any) -> None:
    record_or_check_manifest(EXPERIMENT, MANIFEST, False, signed)
    stored = _stored(signed)
    assert stored_result(EXPERIMENT, MANIFEST, signed) == stored


def test_a_stored_result_of_other_settings_is_refused(signed: Any) -> None:
    record_or_check_manifest(EXPERIMENT, MANIFEST, False, signed)
    _stored(signed)
    with pytest.raises(ValueError, match="seed"):
        stored_result(EXPERIMENT, {**MANIFEST, "seed": 3}, signed)


def test_a_stored_result_of_another_search_space_is_refused_without_a_manifest(signed: Any) -> None:
    _stored(signed, search_space_hash="0000000000000000")
    with pytest.raises(ValueError, match="completed with search space 0000000000000000"):
        stored_result(EXPERIMENT, MANIFEST, signed)


@pytest.mark.parametrize("name", [SEARCH_RESULT_FILE, SEARCH_MANIFEST_FILE])
def test_a_result_or_manifest_written_without_the_key_is_refused(storage: Any, signed: Any, name: str) -> None:
    record_or_check_manifest(EXPERIMENT, MANIFEST, False, signed)
    _stored(signed)
    _write(storage, name, json.dumps(_read(signed, name)).encode())  # rewritten without the key (formatted otherwise)
    with pytest.raises(TamperedTuneState, match=name):
        stored_result(EXPERIMENT, MANIFEST, signed)
