"""What an ingest is asked to do and what it produced, and the check of the names a run is given."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from ml.storage import S3Uri

# The names a run is given (the DAG's params mlops_training: raw_uri, dataset, target), as full matches. The DAG's
# JSON-schema patterns are these between `^` and `(?!\n)$` (tests/unit/dags checks that they agree): jsonschema
# searches with Python's `re`, where a bare `$` also matches before a trailing newline.
# An S3 bucket name (3-63 of a-z 0-9 . -), then a key without control characters.
RAW_URI_PATTERN = r"s3a?://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\x00-\x1f\x7f]*)?"
# A lake prefix, a Hive table and a registered model's name: a letter, then letters, digits, _ and -.
DATASET_PATTERN = r"[A-Za-z][A-Za-z0-9_\-]{0,62}"
# A column name: any text without control characters or line breaks (it reaches logs, SQL and MLflow tags).
TARGET_PATTERN = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,128}"


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


def check_ingest_names(raw_uri: str, dataset: str, target: str, *, forbidden_buckets: Collection[str]) -> None:
    """Raise ValueError naming every problem with the names a run is given.

    `forbidden_buckets`: the buckets raw data must not come from, given by the caller (the lake bucket, MLflow's
    artifact bucket): an ingest from them would snapshot the pipeline's own outputs or other runs' artifacts."""
    problems = []
    if not isinstance(raw_uri, str) or not re.fullmatch(RAW_URI_PATTERN, raw_uri):
        problems.append(f"raw_uri {raw_uri!r} is not s3://bucket/key (a bucket name, a key without control characters)")
    elif (bucket := S3Uri.parse(raw_uri).bucket) in set(forbidden_buckets):
        problems.append(
            f"raw_uri {raw_uri!r} is in bucket {bucket!r}, which the pipeline writes (the lake or MLflow's "
            f"artifacts): raw data must come from another bucket"
        )
    if not isinstance(dataset, str) or not re.fullmatch(DATASET_PATTERN, dataset):
        problems.append(f"dataset {dataset!r} must be a letter then up to 62 letters, digits, _ or -")
    if not isinstance(target, str) or not re.fullmatch(TARGET_PATTERN, target):
        problems.append(f"target {target!r} must be 1 to 128 characters without control characters or line breaks")
    if problems:
        raise ValueError("invalid params: " + "; ".join(problems))
