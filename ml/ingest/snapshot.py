"""The snapshot: raw CSV/Parquet objects from S3 into the lake, keyed by a content hash, after validating them.

The snapshot id is a hash of the source objects' names, ETags and sizes and of the target (and task, when given), so
unchanged input gives the same id and copies nothing, while the same files ingested for another target get their own
snapshot. Objects are copied server-side; `manifest.json` is written last and marks the snapshot complete; on
any failure the partial snapshot is deleted, so no later run can mistake it for a good one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ml.ingest.config import IngestConfig, IngestResult
from ml.ingest.read import SUPPORTED, content_hash, format_of, read_table, source_objects
from ml.ingest.validate import check_drift, validate
from ml.settings import LakeSettings, S3Settings
from ml.storage import (
    MANIFEST_FILE,
    S3Uri,
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


def _read_object(client: Any, bucket: str, obj: dict[str, Any]) -> tuple[str, Any]:
    """(URI, pyarrow table) of one listed object, exactly the listed version (its ETag)."""
    where = f"s3://{bucket}/{obj['Key']}"
    with _changed_object_is_an_error(where):
        body = client.get_object(Bucket=bucket, Key=obj["Key"], IfMatch=obj["ETag"])["Body"].read()
    return where, read_table(body, format_of(obj["Key"]) or "csv", where)


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
        manifest = read_json(manifest_uri, client)
        log.info("snapshot %s of %s already exists: nothing copied", snapshot_id, config.dataset)
        return IngestResult(
            config.dataset,
            snapshot_id,
            str(target_root),
            str(manifest_uri),
            manifest["rows"],
            manifest["task"],
            manifest["target"],
            created=False,
            warnings=manifest["warnings"],
        )

    # Objects are read (and copied below) a few at a time; errors still name the first bad object in key order.
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(objects))) as pool:
        tables = list(pool.map(lambda obj: _read_object(client, raw.bucket, obj), objects))
    kinds, task, rows, warnings = validate(tables, config)
    warnings += check_drift(lake, config.dataset, kinds, config, client)
    for warning in warnings:
        log.warning(warning)

    def copy(index: int) -> dict[str, Any]:
        obj, table = objects[index], tables[index][1]
        suffix = next(s for s in SUPPORTED if obj["Key"].lower().endswith(s))
        destination = target_root.join("data", f"part-{index:05d}{suffix}")
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
            "columns": table.column_names,
            "types": [str(t) for t in table.schema.types],
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
        write_json(manifest_uri, manifest, client)
        pointer = {"snapshot_id": snapshot_id, "columns": manifest["columns"], "manifest": str(manifest_uri)}
        write_json(latest_snapshot_uri(lake, config.dataset), pointer, client)
    except BaseException:
        # The clean-up must not replace the error that matters: when the S3 server itself went away, deleting fails
        # too, and the caller would see a listing error instead of the failed copy. Without a manifest the partial
        # objects are never trusted, and a re-run overwrites them (same keys).
        try:
            removed = delete_prefix(target_root, client)
            log.error("ingest failed; removed %d partial object(s) under %s", removed, target_root)
        except Exception as cleanup_error:
            log.error(
                "ingest failed, and removing the partial snapshot under %s failed too (%s); it has no "
                "manifest, so no run uses it, and the next ingest overwrites it",
                target_root,
                cleanup_error,
            )
        raise
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
