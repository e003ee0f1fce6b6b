"""What a search keeps in its S3 folder besides Tune's own state: the manifest of its settings (a resumed run must
not change them), the stored result of a completed search, and whether Tune left a restorable experiment.

Everything here goes through the search's signed filesystem (ml.tune.signing), as Tune's state does: the manifest
and the result are signed when written and checked when read, and an experiment is restorable only when every file
Tune reads back to restore it carries this stack's signature (TamperedTuneState otherwise, before any is unpickled).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml.storage import S3Uri
from ml.tune.config import INVARIANT_DEFAULTS, RESUME_INVARIANTS, SEARCH_MANIFEST_FILE, SEARCH_RESULT_FILE, SearchResult

log = logging.getLogger(__name__)

# What Tune reads back from the experiment's folder to restore it: Tuner.restore reads tuner.pkl, and
# TuneController.resume the newest experiment state and every other `*.json` and `*.pkl` there (searcher state).
_RESTORED_SUFFIXES = (".json", ".pkl")


def restorable(experiment_path: str, filesystem: Any) -> bool:
    """A Tune experiment we can resume: `tuner.pkl` and at least one saved experiment state, each file that a restore
    reads signed by this stack (`filesystem`: the search's signed one, which raises TamperedTuneState otherwise).

    A run killed in its first seconds leaves `tuner.pkl` without any state; restoring that fails, so such a run
    starts over (its trials had not reported anything yet; nothing of the folder is read).
    """
    from pyarrow import fs
    from ray import tune

    if not tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem):
        return False
    entries = filesystem.get_file_info(fs.FileSelector(experiment_path, recursive=False))
    if not any(Path(entry.path).name.startswith("experiment_state-") for entry in entries):
        log.warning(
            "%s has tuner.pkl but no experiment state (killed before its first snapshot): starting over",
            experiment_path,
        )
        return False
    for entry in entries:
        if entry.type == fs.FileType.File and entry.path.endswith(_RESTORED_SUFFIXES):
            with filesystem.open_input_stream(entry.path):
                pass  # opened: checked against its signature
    return True


def _read_json(uri: S3Uri, filesystem: Any) -> Any | None:
    """The JSON document at `uri` (checked), None when there is none."""
    try:
        with filesystem.open_input_stream(f"{uri.bucket}/{uri.key}") as stream:
            return json.loads(stream.readall())
    except FileNotFoundError:
        return None


def _write_json(uri: S3Uri, value: Any, filesystem: Any) -> None:
    filesystem.create_dir(f"{uri.bucket}/{uri.key.rpartition('/')[0]}", recursive=True)  # as Tune does before writing
    with filesystem.open_output_stream(f"{uri.bucket}/{uri.key}") as stream:
        stream.write(json.dumps(value, indent=2, sort_keys=True).encode())


def stored_result(experiment: S3Uri, manifest: Mapping[str, Any], filesystem: Any) -> SearchResult | None:
    """The result of a completed search with the same settings, if one is stored (different settings: an error)."""
    document = _read_json(experiment.join(SEARCH_RESULT_FILE), filesystem)
    if document is None:
        return None
    compare_manifest(experiment, manifest, filesystem)
    stored = SearchResult.from_dict(document)
    if stored.search_space_hash != manifest["search_space_hash"]:
        raise ValueError(
            f"{experiment}: run {stored.run_name!r} completed with search space {stored.search_space_hash}, "
            f"not {manifest['search_space_hash']}; use a new run name"
        )
    return stored


def store_result(result: SearchResult, filesystem: Any) -> None:
    """Record a completed search's result in its folder (`search_result.json`, what later stages read)."""
    _write_json(result.search_result_uri, result.to_dict(), filesystem)


def compare_manifest(experiment: S3Uri, manifest: Mapping[str, Any], filesystem: Any) -> None:
    stored = _read_json(experiment.join(SEARCH_MANIFEST_FILE), filesystem)
    if stored is None:
        return
    recorded = {k: stored.get(k, INVARIANT_DEFAULTS.get(k)) for k in RESUME_INVARIANTS}
    changed = {k: (recorded[k], manifest[k]) for k in RESUME_INVARIANTS if recorded[k] != manifest[k]}
    if changed:
        raise ValueError(
            f"{experiment}: run {manifest['run_name']!r} was started with other settings "
            f"(stored, now): {changed}; use a new run name"
        )


def record_or_check_manifest(experiment: S3Uri, manifest: Mapping[str, Any], restoring: bool, filesystem: Any) -> None:
    """Refuse to resume a run whose search settings changed; record them when a run starts."""
    if restoring:
        compare_manifest(experiment, manifest, filesystem)
    else:
        _write_json(experiment.join(SEARCH_MANIFEST_FILE), dict(manifest), filesystem)
