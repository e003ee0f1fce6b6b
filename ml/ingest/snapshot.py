"""The snapshot: raw CSV/Parquet objects from S3 into the lake, keyed by a content hash, after validating them.

The snapshot id is a hash of the source objects' names, ETags and sizes and of the target (and task, when given), so
unchanged input gives the same id and copies nothing, while the same files ingested for another target get their own
snapshot. Objects are copied server-side into a folder of this attempt's own (`data/attempt-ID/`), and
`manifest.json` is created last with a conditional put (`If-None-Match: *`): the snapshot is complete once it exists,
and it is never replaced. Two runs on the same content (say `max_active_runs=2`) may both be copying; the first to
create the manifest wins, the other keeps the winner's snapshot and removes only its own copies. A failed attempt
removes only its own folder, never a prefix that a manifest names, so it cannot delete the data another run is reading.
After a commit, copies of attempts that will never be committed (crashed ones, or a loser still copying) are removed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ml.ingest.config import IngestConfig, IngestResult
from ml.ingest.read import SUPPORTED, content_hash, format_of, read_table, source_objects
from ml.ingest.validate import ObjectSummary, check_drift, summarise, validate
from ml.settings import LakeSettings, S3Settings
from ml.storage import (
    MANIFEST_FILE,
    S3Uri,
    create_json,
    delete_prefix,
    exists,
    latest_snapshot_uri,
    read_json,
    snapshot_uri,
    write_json,
)

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
READ_THREADS = 2  # objects read and parsed at once (pyarrow parses with threads of its own too)
COPY_THREADS = 8  # server-side copies at once
_SINGLE_COPY_LIMIT = 5 * 1024**3  # S3 refuses a CopyObject of a larger object


def _copy_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=_SINGLE_COPY_LIMIT, multipart_chunksize=512 * 1024**2)


def _check_object(client: Any, bucket: str, obj: dict[str, Any], config: IngestConfig) -> ObjectSummary:
    """Read one listed object, exactly the listed version (its ETag), check it on its own, and keep only its summary."""
    where = f"s3://{bucket}/{obj['Key']}"
    with _changed_object_is_an_error(where):
        body = client.get_object(Bucket=bucket, Key=obj["Key"], IfMatch=obj["ETag"])["Body"].read()
    return summarise(where, read_table(body, format_of(obj["Key"]) or "csv", where), config)


@contextmanager
def _changed_object_is_an_error(where: str) -> Iterator[None]:
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            raise RuntimeError(f"{where} changed while it was being ingested; run the ingest again") from None
        raise


def ingest(config: IngestConfig, *, s3: S3Settings, lake: LakeSettings) -> IngestResult:
    """Validate the raw objects and snapshot them into the lake (idempotent)."""
    from ml.clients import s3_client

    client = s3_client(s3)
    raw = S3Uri.parse(config.raw_uri)
    objects = source_objects(raw, client)
    snapshot_id = content_hash(raw, objects, config.target, config.task)
    target_root = snapshot_uri(lake, config.dataset, snapshot_id)
    manifest_uri = target_root.join(MANIFEST_FILE)
    if exists(manifest_uri, client):
        log.info("snapshot %s of %s already exists: nothing copied", snapshot_id, config.dataset)
        return _existing(config, target_root, manifest_uri, read_json(manifest_uri, client))

    # Objects are read and checked a few at a time, each table dropped once summarised (memory: READ_THREADS objects,
    # not the dataset); errors still name the first bad object in key order (map yields in order).
    pool = ThreadPoolExecutor(max_workers=min(READ_THREADS, len(objects)))
    try:
        summaries = list(pool.map(lambda obj: _check_object(client, raw.bucket, obj, config), objects))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a bad object stops the reading of those not yet started
    kinds, task, rows, warnings = validate(summaries, config)
    warnings += check_drift(lake, config.dataset, kinds, config, client)
    for warning in warnings:
        log.warning(warning)

    # This attempt's own folder: a failure (or losing the commit to a concurrent run) removes this folder only.
    attempt = target_root.join("data", f"attempt-{uuid.uuid4().hex[:16]}")

    def copy(index: int) -> dict[str, Any]:
        obj, summary = objects[index], summaries[index]
        suffix = next(s for s in SUPPORTED if obj["Key"].lower().endswith(s))
        destination = attempt.join(f"part-{index:05d}{suffix}")
        # A managed copy: server-side, multipart above 5 GB (where one CopyObject is refused), and only of the
        # version that was listed, hashed and validated.
        with _changed_object_is_an_error(f"s3://{raw.bucket}/{obj['Key']}"):
            client.copy(
                {"Bucket": raw.bucket, "Key": obj["Key"]},
                destination.bucket,
                destination.key,
                ExtraArgs={"CopySourceIfMatch": obj["ETag"]},
                Config=_copy_config(),
            )
        # Each object's own columns (and Parquet types): the Spark job reads CSV files by header, not position.
        return {
            "source": f"s3://{raw.bucket}/{obj['Key']}",
            "etag": obj["ETag"].strip('"'),
            "size": obj["Size"],
            "format": format_of(obj["Key"]) or "csv",
            "snapshot_uri": str(destination),
            "columns": summary.columns,
            "types": summary.types,
        }

    try:
        pool = ThreadPoolExecutor(max_workers=min(COPY_THREADS, len(objects)))
        try:
            copied = list(pool.map(copy, range(len(objects))))
        finally:
            # Wait for copies in flight, so that none lands after the clean-up below.
            pool.shutdown(wait=True, cancel_futures=True)
        manifest = {
            "version": MANIFEST_VERSION,
            "dataset": config.dataset,
            "snapshot_id": snapshot_id,
            "source_uri": str(raw),
            "objects": copied,
            "rows": rows,
            "target": config.target,
            "task": task,
            "columns": {name: kind for name, kind in kinds.items()},
            "warnings": warnings,
            "max_bad_share": config.max_bad_share,
        }
        committed = create_json(manifest_uri, manifest, client)
    except BaseException:
        # The clean-up must not replace the error that matters: when the S3 server itself went away, deleting fails
        # too, and the caller would see a listing error instead of the failed copy. No manifest names this
        # attempt's objects, so they are never trusted; the next committed attempt removes them.
        try:
            removed = delete_prefix(attempt, client)
            log.error("ingest failed; removed %d partial object(s) under %s", removed, attempt)
        except Exception as cleanup_error:
            log.error(
                "ingest failed, and removing its partial copies under %s failed too (%s); no manifest names "
                "them, so no run uses them, and the next ingest of this snapshot removes them",
                attempt,
                cleanup_error,
            )
        raise
    if not committed:
        log.info("snapshot %s of %s was committed by another run meanwhile: keeping it", snapshot_id, config.dataset)
        winner = read_json(manifest_uri, client)
        _remove_uncommitted_copies(target_root, winner, client)
        return _existing(config, target_root, manifest_uri, winner)
    _remove_uncommitted_copies(target_root, manifest, client)
    pointer = {"snapshot_id": snapshot_id, "columns": manifest["columns"], "manifest": str(manifest_uri)}
    write_json(latest_snapshot_uri(lake, config.dataset), pointer, client)
    log.info("snapshot %s of %s: %d object(s), %d rows, task %s", snapshot_id, config.dataset, len(objects), rows, task)
    return IngestResult(
        config.dataset,
        snapshot_id,
        str(target_root),
        str(manifest_uri),
        rows,
        task,
        config.target,
        created=True,
        warnings=warnings,
    )


def _existing(config: IngestConfig, target_root: S3Uri, manifest_uri: S3Uri, manifest: dict[str, Any]) -> IngestResult:
    """The result of a snapshot that its manifest (already there) marks complete."""
    return IngestResult(
        config.dataset,
        manifest["snapshot_id"],
        str(target_root),
        str(manifest_uri),
        manifest["rows"],
        manifest["task"],
        manifest["target"],
        created=False,
        warnings=manifest["warnings"],
    )


def _remove_uncommitted_copies(target_root: S3Uri, manifest: dict[str, Any], client: Any) -> None:
    """Delete the copies under `data/` that the committed manifest does not name (failed, crashed or losing attempts;
    an attempt still copying can no longer commit). Best effort: left-overs are never read, only stored."""
    data = target_root.join("data")
    try:
        removed = delete_prefix(data, client, keep={obj["snapshot_uri"] for obj in manifest["objects"]})
    except Exception as error:
        log.warning("could not remove uncommitted copies under %s (%s); they are never read", data, error)
        return
    if removed:
        log.info("removed %d uncommitted object(s) under %s", removed, data)
