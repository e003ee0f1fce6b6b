"""What a search keeps in its S3 folder besides Tune's own state: the manifest of its settings (a resumed run must
not change them), the stored result of a completed search, and whether Tune left a restorable experiment."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml.storage import S3Uri, exists, read_json, write_json
from ml.tune.config import RESUME_INVARIANTS, SEARCH_MANIFEST_FILE, SEARCH_RESULT_FILE, SearchResult

log = logging.getLogger(__name__)


def restorable(experiment_path: str, filesystem: Any) -> bool:
    """A Tune experiment we can resume: `tuner.pkl` and at least one saved experiment state.

    A run killed in its first seconds leaves `tuner.pkl` without any state; restoring that fails, so such a run
    starts over (its trials had not reported anything yet).
    """
    from pyarrow import fs
    from ray import tune

    if not tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem):
        return False
    entries = filesystem.get_file_info(fs.FileSelector(experiment_path, recursive=False))
    if any(Path(entry.path).name.startswith("experiment_state-") for entry in entries):
        return True
    log.warning(
        "%s has tuner.pkl but no experiment state (killed before its first snapshot): starting over", experiment_path
    )
    return False


def stored_result(experiment: S3Uri, manifest: Mapping[str, Any], client: Any) -> SearchResult | None:
    """The result of a completed search with the same settings, if one is stored (different settings: an error)."""
    uri = experiment.join(SEARCH_RESULT_FILE)
    if not exists(uri, client):
        return None
    compare_manifest(experiment, manifest, client)
    stored = SearchResult.from_dict(read_json(uri, client))
    if stored.search_space_hash != manifest["search_space_hash"]:
        raise ValueError(
            f"{experiment}: run {stored.run_name!r} completed with search space {stored.search_space_hash}, "
            f"not {manifest['search_space_hash']}; use a new run name"
        )
    return stored


def compare_manifest(experiment: S3Uri, manifest: Mapping[str, Any], client: Any) -> None:
    uri = experiment.join(SEARCH_MANIFEST_FILE)
    if not exists(uri, client):
        return
    stored = read_json(uri, client)
    changed = {k: (stored.get(k), manifest[k]) for k in RESUME_INVARIANTS if stored.get(k) != manifest[k]}
    if changed:
        raise ValueError(
            f"{experiment}: run {manifest['run_name']!r} was started with other settings "
            f"(stored, now): {changed}; use a new run name"
        )


def record_or_check_manifest(experiment: S3Uri, manifest: Mapping[str, Any], restoring: bool, client: Any) -> None:
    """Refuse to resume a run whose search settings changed; record them when a run starts."""
    if restoring:
        compare_manifest(experiment, manifest, client)
    else:
        write_json(experiment.join(SEARCH_MANIFEST_FILE), dict(manifest), client)
