"""S3 access shared by every stage: URI parsing, small object operations on a given client, the lake's key layout.

Lake layout (one place, so that a re-run writes the same keys and two runs never overwrite each other's work):
  s3://LAKE/datasets/DATASET/snapshots/SNAPSHOT/manifest.json        created last, once: the snapshot is complete
  s3://LAKE/datasets/DATASET/snapshots/SNAPSHOT/data/ATTEMPT/...      each ingest attempt's copy of the raw objects
                                                                      (the manifest names the one that counts)
  s3://LAKE/datasets/DATASET/features/SNAPSHOT/{train,validation,test}/part-*.parquet
  s3://LAKE/datasets/DATASET/features/SNAPSHOT/training_distributions.json   what the drift monitor compares with
  s3://LAKE/datasets/DATASET/features/SNAPSHOT/feature_spec.json     written last: the features are complete
  s3://LAKE/tune/DATASET/SNAPSHOT/RUN                                 Ray Tune storage (trials, checkpoints): the tune
                                                                      task's alone (on the stack's S3, no other key
                                                                      may write it: stack.s3_users)
  s3://LAKE/evaluations/DATASET/SNAPSHOT/RUN/evaluation.json          the search's best model scored on the test split
  s3://LAKE/locks/registry/MODEL.lock                                 the registry's alias lock
Clients come from ml.clients."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ml.settings import LakeSettings


class DataError(ValueError):
    """Input data is unusable; the message names the object, the column and the reason."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme not in ("s3", "s3a") or not rest or rest.startswith("/"):
            raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
        bucket, _, key = rest.partition("/")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def s3a(self) -> str:
        return f"s3a://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)


def list_keys(uri: S3Uri, client: Any) -> list[dict[str, Any]]:
    """Every object under a prefix (paginated), as boto3's listing dicts."""
    objects: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.key):
        objects.extend(page.get("Contents", []))
    return objects


NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")
# What S3-compatible servers answer when a conditional put or delete finds its precondition false.
CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "409", "412")


def error_code(error: Any) -> str:
    """The S3 error code of a botocore ClientError ("" if it has none)."""
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def current_etag(uri: S3Uri, client: Any) -> str | None:
    """The object's ETag now (quoted, as S3 gives it); None when there is no such object."""
    from botocore.exceptions import ClientError

    try:
        return str(client.head_object(Bucket=uri.bucket, Key=uri.key)["ETag"])
    except ClientError as error:
        if error_code(error) in NOT_FOUND_CODES:
            return None
        raise


def exists(uri: S3Uri, client: Any) -> bool:
    return current_etag(uri, client) is not None


def read_json(uri: S3Uri, client: Any) -> Any:
    return json.loads(client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())


def _json_body(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def write_json(uri: S3Uri, value: Any, client: Any) -> None:
    client.put_object(Bucket=uri.bucket, Key=uri.key, Body=_json_body(value), ContentType="application/json")


def create_json(uri: S3Uri, value: Any, client: Any) -> bool:
    """Write `value` at `uri` only if no object is there (a conditional put, `If-None-Match: *`): True when this call
    created it, False when one existed already (its content is left as it was)."""
    from botocore.exceptions import ClientError

    try:
        client.put_object(
            Bucket=uri.bucket, Key=uri.key, Body=_json_body(value), ContentType="application/json", IfNoneMatch="*"
        )
    except ClientError as error:
        if error_code(error) in CONFLICT_CODES:
            return False
        raise
    return True


def delete_prefix(uri: S3Uri, client: Any, *, keep: Collection[str] = ()) -> int:
    """Delete every object under a prefix except the URIs in `keep`; returns how many. Used to remove partial output
    after a failure."""
    keys = [{"Key": obj["Key"]} for obj in list_keys(uri, client) if f"s3://{uri.bucket}/{obj['Key']}" not in keep]
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=uri.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True})
    return len(keys)


def lake_root(lake: LakeSettings) -> S3Uri:
    return S3Uri(lake.lake_bucket, "")


def drift_checkpoint_uri(lake: LakeSettings) -> S3Uri:
    """The streaming drift monitor's checkpoint (Spark's offsets and window state, ml.drift.stream)."""
    return lake_root(lake).join("monitor", "drift.v1", "checkpoint")


def snapshot_uri(lake: LakeSettings, dataset: str, snapshot_id: str) -> S3Uri:
    return lake_root(lake).join("datasets", dataset, "snapshots", snapshot_id)


def features_uri(lake: LakeSettings, dataset: str, snapshot_id: str) -> S3Uri:
    return lake_root(lake).join("datasets", dataset, "features", snapshot_id)


FEATURE_SPEC_FILE = "feature_spec.json"
TRAINING_DISTRIBUTIONS_FILE = "training_distributions.json"
MANIFEST_FILE = "manifest.json"


def feature_spec_uri(features: S3Uri | str) -> S3Uri:
    """The spec beside a features folder's splits: written last, its presence marks the features complete."""
    return (features if isinstance(features, S3Uri) else S3Uri.parse(features)).join(FEATURE_SPEC_FILE)


def training_distributions_uri(features: S3Uri | str) -> S3Uri:
    """The training distributions (ml.features.distributions) beside a features folder's spec, written just before
    it. A model version's `feature_spec_uri` tag names the spec: the folder that holds it is the features folder."""
    return (features if isinstance(features, S3Uri) else S3Uri.parse(features)).join(TRAINING_DISTRIBUTIONS_FILE)


def tune_uri(lake: LakeSettings, dataset: str, snapshot_id: str, run_name: str) -> S3Uri:
    return lake_root(lake).join("tune", dataset, snapshot_id, run_name)


def evaluation_uri(experiment: S3Uri | str) -> S3Uri:
    """Where the evaluation of a search (its tune folder, `experiment`) is written: under `evaluations/`, beside the
    tune folder rather than in it, because the task that evaluates (registration) may not write the searches'
    storage."""
    experiment = experiment if isinstance(experiment, S3Uri) else S3Uri.parse(experiment)
    return S3Uri(experiment.bucket, "").join("evaluations", experiment.key.removeprefix("tune/"), "evaluation.json")


def latest_snapshot_uri(lake: LakeSettings, dataset: str) -> S3Uri:
    """Pointer to the dataset's newest snapshot (its columns are the reference for schema drift)."""
    return lake_root(lake).join("datasets", dataset, "latest.json")


def registry_lock_uri(lake: LakeSettings, model_name: str) -> S3Uri:
    """The lock object that serialises alias moves of one registered model (ml.registry.lock)."""
    return lake_root(lake).join("locks", "registry", f"{model_name}.lock")
