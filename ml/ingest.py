"""Ingest: snapshot raw CSV/Parquet objects from S3 into the lake, keyed by a content hash, after validating them.

The snapshot id is a hash of the source objects' names, ETags and sizes and of the target (and task, when given), so
unchanged input gives the same id and copies nothing, while the same files ingested for another target get their own
snapshot. Objects are copied server-side; `manifest.json` is written last and marks the snapshot complete; on
any failure the partial snapshot is deleted, so no later run can mistake it for a good one.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import logging
import math
import re
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ml.features import NON_FINITE_WORDS, NUMBER_PATTERN
from ml.settings import Settings
from ml.storage import (
    DataError,
    S3Uri,
    delete_prefix,
    exists,
    latest_snapshot_uri,
    list_keys,
    read_json,
    s3_client,
    snapshot_uri,
    write_json,
)

log = logging.getLogger(__name__)

SUPPORTED = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_CLASSES = 100
MANIFEST_VERSION = 1
READ_THREADS = 2  # objects read and parsed at once (pyarrow parses with threads of its own too)
COPY_THREADS = 8  # server-side copies at once
_SINGLE_COPY_LIMIT = 5 * 1024**3  # S3 refuses a CopyObject of a larger object
# The longest CSV row accepted (pyarrow's parse block; its default of 1 MiB refuses long texts). A longer row is
# almost always a broken file (an unclosed quote swallows the rest of it), and Spark would hold it in one value.
MAX_ROW_BYTES = 16 * 1024**2


def _copy_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=_SINGLE_COPY_LIMIT, multipart_chunksize=512 * 1024**2)


@dataclass(frozen=True)
class IngestConfig:
    raw_uri: str
    dataset: str
    target: str
    task: str | None = None  # inferred from the target when None
    max_bad_share: float = 0.01  # share of unparseable values a numeric column may have (they become missing)
    allow_schema_drift: bool = False


@dataclass
class IngestResult:
    dataset: str
    snapshot_id: str
    snapshot_uri: str
    manifest_uri: str
    rows: int
    task: str
    target: str
    created: bool  # False when the same content was already snapshotted
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _format_of(key: str) -> str | None:
    return next((fmt for suffix, fmt in SUPPORTED.items() if key.lower().endswith(suffix)), None)


def source_objects(raw: S3Uri, client: Any) -> list[dict[str, Any]]:
    """The CSV/Parquet objects at a key or under a prefix, sorted by key."""
    prefix = raw.key.rstrip("/") + "/"
    listed = [
        obj
        for obj in list_keys(raw, client)
        if not raw.key or obj["Key"] in (raw.key,) or obj["Key"].startswith(prefix)
    ]
    objects = [obj for obj in listed if _format_of(obj["Key"]) and obj["Size"] > 0]
    empty = [obj["Key"] for obj in listed if _format_of(obj["Key"]) and obj["Size"] == 0]
    if empty:
        raise DataError(f"s3://{raw.bucket}/{empty[0]}: the file is empty (0 bytes)")
    if not objects:
        raise DataError(f"{raw}: no CSV or Parquet object found (looked for {', '.join(SUPPORTED)})")
    return sorted(objects, key=lambda obj: obj["Key"])


def content_hash(raw: S3Uri, objects: list[dict[str, Any]], target: str = "", task: str | None = None) -> str:
    """A stable id for the objects' content (their names relative to the source, ETags and sizes) and for what the
    snapshot is for (the target, and the task when one is given rather than inferred)."""
    digest = hashlib.sha256()
    if target or task:
        digest.update(f"target\0{target}\0task\0{task or ''}\n".encode())
    for obj in objects:
        relative = obj["Key"][len(raw.key) :].lstrip("/") or obj["Key"].rsplit("/", 1)[-1]
        digest.update(f"{relative}\0{obj['ETag'].strip(chr(34))}\0{obj['Size']}\n".encode())
    return digest.hexdigest()[:16]


def read_table(body: bytes, fmt: str, where: str) -> Any:
    """Parse one object with pyarrow; errors name the object."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    kind = "Parquet" if fmt == "parquet" else "CSV"
    try:
        if fmt == "parquet":
            return pq.read_table(io.BytesIO(body))
        if where.lower().endswith(".gz"):
            body = gzip.decompress(body)
        table = pacsv.read_csv(
            pa.py_buffer(body),
            read_options=pacsv.ReadOptions(block_size=MAX_ROW_BYTES),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as error:
        if "straddling" in str(error):  # pyarrow's words for a row longer than its parse block
            raise DataError(
                f"{where}: a row is longer than {MAX_ROW_BYTES // 1024**2} MiB, the limit for one CSV "
                "row (an unclosed quote, or a text that does not belong in a feature table)"
            ) from None
        raise DataError(f"{where}: not a readable {kind} file ({error})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{where}: not a readable {kind} file: not UTF-8 text ({error})") from None
    # pyarrow keeps values that are not valid UTF-8 as bytes; Spark would read them as mangled text.
    binary = [field.name for field in table.schema if pa.types.is_binary(field.type)]
    if binary:
        raise DataError(
            f"{where}: not a readable {kind} file: column {binary[0]!r} holds values that are not UTF-8 text"
        )
    _refuse_multiline_values(table, where)
    return table


def _refuse_multiline_values(table: Any, where: str) -> None:
    """pyarrow accepts a line break inside quotes (and an unclosed quote, which swallows the rest of the file into
    one value); Spark reads CSV one line per row and would split that value into broken rows: refuse it here."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for column in table.schema:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        broken = pc.match_substring_regex(table.column(column.name), r"[\r\n]")
        if pc.any(broken).as_py():
            row = pc.index(broken, True).as_py() + 1
            raise DataError(
                f"{where}: column {column.name!r}, data row {row}: a value spans several lines (an "
                "unclosed quote, or a quoted text with line breaks); CSV rows must be one line each"
            )


def column_kinds(table: Any, where: str, max_bad_share: float) -> tuple[dict[str, str], list[str]]:
    """Classify each column as numeric or categorical; string columns that are mostly numbers are numeric with the
    rest treated as missing, unless more than `max_bad_share` of them are not numbers (an error naming the column)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kinds: dict[str, str] = {}
    warnings: list[str] = []
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_null(column.type) or column.null_count == len(column) or _all_nan(column):
            kinds[name] = "empty"
            continue
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
            kinds[name] = "numeric"
            continue
        strings = pc.cast(column, pa.large_string())
        present = pc.drop_null(strings)
        # Vectorised (a Python loop over every value took seconds per million rows): what `_parse_number` accepts.
        is_number = pc.or_(
            pc.match_substring_regex(present, NUMBER_PATTERN),
            pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(present)), value_set=pa.array(sorted(NON_FINITE_WORDS))),
        )
        parsed = int(pc.sum(is_number).as_py() or 0)
        if parsed < len(present):
            bad = pc.filter(present, pc.invert(is_number))[0].as_py()
        if parsed and len(present) - parsed <= max_bad_share * len(present):
            kinds[name] = "numeric"
            if parsed < len(present):
                warnings.append(
                    f"{where}: column {name!r}: {len(present) - parsed} non-numeric value(s) such as "
                    f"{bad!r} are treated as missing"
                )
        elif parsed > len(present) / 2:
            raise DataError(
                f"{where}: column {name!r} is numeric but {len(present) - parsed} of {len(present)} values are not "
                f"numbers (e.g. {bad!r}), over the allowed share {max_bad_share:.1%}"
            )
        else:
            kinds[name] = "categorical"
    return kinds, warnings


_NUMBER = re.compile(NUMBER_PATTERN)


def _parse_number(value: str) -> float | None:
    """A plain decimal number, or a spelling of inf/nan (missing values); None for anything else (as in Spark)."""
    if not isinstance(value, str) or not (_NUMBER.match(value) or value.strip().lower() in NON_FINITE_WORDS):
        return None
    return float(value)


def _all_nan(column: Any) -> bool:
    """A floating column whose every value is null or NaN: no value at all."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_floating(column.type):
        return False
    return bool(pc.all(pc.fill_null(pc.is_nan(column), True)).as_py())


def infer_task(table: Any, target: str) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(target)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return "classification"
    distinct = pc.unique(pc.drop_null(column))
    integral = all(float(v).is_integer() for v in distinct.to_pylist() if v is not None and math.isfinite(v))
    return "classification" if integral and len(distinct) <= 20 else "regression"


def validate(tables: list[tuple[str, Any]], config: IngestConfig) -> tuple[dict[str, str], str, int, list[str]]:
    """Check every object and their agreement; return (column kinds, task, rows, warnings)."""
    import pyarrow.compute as pc

    source = config.raw_uri  # errors about the objects together name the source
    kinds: dict[str, str] | None = None
    kind_seen_in: dict[str, str] = {}
    warnings: list[str] = []
    rows = 0
    for where, table in tables:
        if table.num_rows == 0:
            raise DataError(f"{where}: no data rows (header only or empty)")
        if len(table.column_names) == 1 and any(sep in table.column_names[0] for sep in (";", "\t", "|")):
            raise DataError(
                f"{where}: only one column {table.column_names[0][:80]!r} was found; the file looks delimited by "
                "something other than ',' (CSV must be comma-separated)"
            )
        if config.target not in table.column_names:
            raise DataError(
                f"{where}: target column {config.target!r} is missing (columns: {', '.join(table.column_names)})"
            )
        if table.column(config.target).null_count == table.num_rows:
            raise DataError(f"{where}: target column {config.target!r} has no values")
        file_kinds, file_warnings = column_kinds(table, where, config.max_bad_share)
        warnings += file_warnings
        if kinds is None:
            kinds = dict(file_kinds)
        elif set(file_kinds) != set(kinds):
            raise DataError(f"{where}: columns differ from the other files: {sorted(set(file_kinds) ^ set(kinds))}")
        else:
            for name, kind in file_kinds.items():
                # A column that is empty in one file takes its kind from the others.
                if kind == "empty":
                    continue
                if kinds[name] not in ("empty", kind):
                    raise DataError(
                        f"{where}: column {name!r} is {kind} here but {kinds[name]} in {kind_seen_in[name]}"
                    )
                kinds[name] = kind
        for name, kind in file_kinds.items():
            if kind != "empty":
                kind_seen_in.setdefault(name, where)
        rows += table.num_rows
    assert kinds is not None
    for name, kind in kinds.items():
        if kind == "empty":
            if name == config.target:
                raise DataError(f"{source}: target column {config.target!r} has no values")
            warnings.append(f"{source}: column {name!r} has no values in any file and is dropped from the features")
    task = config.task or infer_task(tables[0][1], config.target)
    if task not in ("classification", "regression"):
        raise DataError(f"task must be classification or regression, not {task!r}")
    if task == "regression" and kinds[config.target] != "numeric":
        raise DataError(f"{source}: target column {config.target!r} is not numeric, so the task cannot be regression")
    if task == "classification":
        classes = set()
        for _, table in tables:
            classes |= {str(v) for v in pc.unique(pc.drop_null(table.column(config.target))).to_pylist()}
        if len(classes) < 2:
            raise DataError(
                f"{source}: target column {config.target!r} has a single class {sorted(classes)}: nothing to learn"
            )
        if len(classes) > MAX_CLASSES:
            raise DataError(
                f"{source}: target column {config.target!r} has {len(classes)} classes "
                f"(> {MAX_CLASSES}); is it a regression target? pass --task regression"
            )
    return kinds, task, rows, warnings


def check_drift(dataset: str, kinds: dict[str, str], config: IngestConfig, client: Any) -> list[str]:
    """Compare the columns with the dataset's previous snapshot; a lost or retyped column is an error."""
    pointer = latest_snapshot_uri(dataset)
    if not exists(pointer, client):
        return []
    previous = read_json(pointer, client)
    before: dict[str, str] = previous["columns"]
    # A column that had no values was never a feature: losing it is no drift.
    problems = [f"column {name!r} disappeared" for name in before if name not in kinds and before[name] != "empty"]
    problems += [
        f"column {name!r} changed from {before[name]} to {kinds[name]}"
        for name in before
        if name in kinds and "empty" not in (before[name], kinds[name]) and before[name] != kinds[name]
    ]
    added = [f"new column {name!r}" for name in kinds if name not in before]
    if problems and not config.allow_schema_drift:
        raise DataError(
            f"{config.raw_uri}: schema drift against snapshot {previous['snapshot_id']} of {dataset!r}: "
            f"{'; '.join(problems)} "
            "(pass --allow-schema-drift to accept it)"
        )
    return [f"schema drift against snapshot {previous['snapshot_id']}: {p}" for p in problems + added]


def _read_object(client: Any, bucket: str, obj: dict[str, Any]) -> tuple[str, Any]:
    """(URI, pyarrow table) of one listed object, exactly the listed version (its ETag)."""
    where = f"s3://{bucket}/{obj['Key']}"
    with _changed_object_is_an_error(where):
        body = client.get_object(Bucket=bucket, Key=obj["Key"], IfMatch=obj["ETag"])["Body"].read()
    return where, read_table(body, _format_of(obj["Key"]) or "csv", where)


@contextmanager
def _changed_object_is_an_error(where: str) -> Iterator[None]:
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            raise RuntimeError(f"{where} changed while it was being ingested; run the ingest again") from None
        raise


def ingest(config: IngestConfig, settings: Settings | None = None) -> IngestResult:
    """Validate the raw objects and snapshot them into the lake (idempotent)."""
    settings = settings or Settings.from_env()
    client = s3_client(settings)
    raw = S3Uri.parse(config.raw_uri)
    objects = source_objects(raw, client)
    snapshot_id = content_hash(raw, objects, config.target, config.task)
    target_root = snapshot_uri(config.dataset, snapshot_id, settings)
    manifest_uri = target_root.join("manifest.json")
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
    warnings += check_drift(config.dataset, kinds, config, client)
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
            "format": _format_of(obj["Key"]) or "csv",
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
        write_json(latest_snapshot_uri(config.dataset, settings), pointer, client)
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


def _cli(args: argparse.Namespace) -> dict[str, Any]:
    config = IngestConfig(
        raw_uri=args.raw_uri,
        dataset=args.dataset,
        target=args.target,
        task=args.task,
        max_bad_share=args.max_bad_share,
        allow_schema_drift=args.allow_schema_drift,
    )
    return ingest(config).to_dict()


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("ingest", help="validate raw CSV/Parquet in S3 and snapshot it into the lake")
    parser.add_argument("--raw-uri", required=True, help="s3://bucket/key or s3://bucket/prefix/")
    parser.add_argument("--dataset", required=True, help="dataset name (lake prefix, Hive table, model name)")
    parser.add_argument("--target", required=True, help="the column to predict")
    parser.add_argument("--task", choices=["classification", "regression"], help="default: inferred from the target")
    parser.add_argument(
        "--max-bad-share",
        type=float,
        default=0.01,
        help="share of non-numeric values tolerated in a numeric column (default 0.01)",
    )
    parser.add_argument("--allow-schema-drift", action="store_true", help="accept lost or retyped columns")
    parser.set_defaults(handler=_cli)
