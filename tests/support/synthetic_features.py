"""Synthetic feature folders shaped exactly like the Spark preprocessing job's output, for tests and benchmarks.

`write_synthetic_features` puts `train/`, `validation/`, `test/` Parquet parts (plus Spark's `_SUCCESS` markers) and
`feature_spec.json` (written last) under `ml.storage.features_uri(lake, dataset, snapshot_id)`. The data is learnable:
labels follow a fixed linear rule of the features plus noise, so a model can beat a trivial baseline by a clear margin.
`make_training_data` gives the same arrays in memory for unit tests; `feature_objects` gives the folder's objects
(to put into any store: `in_memory_s3` is moto's S3 for unit tests, `LocalLake` a folder pyarrow reads like the lake).
"""

from __future__ import annotations

import io
import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import SplitArrays, TrainingData
from ml.features import LABEL_COLUMN, CategoricalFeature, FeatureSpec, NumericFeature
from ml.settings import S3Settings, Settings
from ml.storage import S3Uri, delete_prefix, features_uri, lake_root

SPLIT_ROWS = {"train": 600, "validation": 200, "test": 200}
ISLANDS = ["Biscoe", "Dream"]


@dataclass(frozen=True)
class SyntheticFeatures:
    dataset: str
    snapshot_id: str
    uri: S3Uri
    spec: FeatureSpec
    splits: dict[str, SplitArrays]
    settings: Settings

    def cleanup(self) -> None:
        """Remove the features and any tune results written for this dataset."""
        from ml.clients import s3_client

        client = s3_client(self.settings.s3)
        delete_prefix(self.uri, client)
        delete_prefix(lake_root(self.settings.lake).join("tune", self.dataset), client)


def make_spec(
    dataset: str,
    snapshot_id: str,
    task: str,
    num_classes: int = 2,
    num_numeric: int = 4,
    rows: dict[str, int] | None = None,
) -> FeatureSpec:
    classes = [f"class_{chr(ord('a') + i)}" for i in range(num_classes)] if task == "classification" else None
    return FeatureSpec(
        dataset=dataset,
        snapshot_id=snapshot_id,
        task=task,
        target="target",
        numeric=[NumericFeature(f"x{i}", fill=0.0, mean=0.0, std=1.0) for i in range(num_numeric)],
        categorical=[CategoricalFeature("island", list(ISLANDS))],
        classes=classes,
        rows=dict(rows or SPLIT_ROWS),
    )


def make_arrays(
    spec: FeatureSpec, rows: dict[str, int] | None = None, seed: int = 0, noise: float = 0.3
) -> dict[str, SplitArrays]:
    """Features: standard normals and a one-hot island; labels: a fixed linear rule plus noise."""
    rows = rows or SPLIT_ROWS
    rule = np.random.default_rng(1234)  # the same rule for every split and seed
    num_numeric = len(spec.numeric)
    width = len(spec.feature_columns)
    outputs = spec.num_outputs
    weights = rule.normal(size=(width, outputs)) * 2.0
    splits: dict[str, SplitArrays] = {}
    for offset, (name, count) in enumerate(rows.items()):
        rng = np.random.default_rng(seed * 100 + offset)
        X = np.zeros((count, width), dtype=np.float32)
        X[:, :num_numeric] = rng.normal(size=(count, num_numeric))
        island = rng.integers(0, len(ISLANDS) + 1, size=count)  # the last index is "__other__"
        X[np.arange(count), num_numeric + island] = 1.0
        scores = X @ weights + noise * rng.normal(size=(count, outputs))
        if spec.task == "classification":
            y = scores.argmax(axis=1).astype(np.int64)
        else:
            y = (100.0 + 20.0 * scores[:, 0]).astype(np.float32)  # far from 0/1 scale: exercises target scaling
        splits[name] = SplitArrays(name, X, y)
    return splits


def make_training_data(
    task: str = "classification",
    num_classes: int = 2,
    rows: dict[str, int] | None = None,
    seed: int = 0,
    noise: float = 0.3,
) -> TrainingData:
    spec = make_spec("synthetic-memory", "snap", task, num_classes, rows=rows)
    splits = make_arrays(spec, rows, seed, noise)
    return TrainingData(spec, splits["train"], splits["validation"])


def feature_objects(
    spec: FeatureSpec,
    splits: dict[str, SplitArrays],
    uri: S3Uri,
    *,
    parts: int = 2,
    row_group_size: int | None = None,
) -> list[tuple[S3Uri, bytes]]:
    """The objects of a features folder as the Spark job writes them: per split `parts` Parquet parts (row groups
    of `row_group_size` rows; default: one per part) and a `_SUCCESS` marker, then `feature_spec.json` (last: its
    presence marks the folder complete)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    label_type = pa.int32() if spec.task == "classification" else pa.float64()  # Spark writes int / double labels
    objects: list[tuple[S3Uri, bytes]] = []
    for name, split in splits.items():
        bounds = np.linspace(0, split.rows, parts + 1).astype(int)
        for part, (start, stop) in enumerate(itertools.pairwise(bounds)):
            columns = {c: pa.array(split.X[start:stop, i], pa.float32()) for i, c in enumerate(spec.feature_columns)}
            columns[LABEL_COLUMN] = pa.array(split.y[start:stop]).cast(label_type)
            buffer = io.BytesIO()
            pq.write_table(pa.table(columns), buffer, row_group_size=row_group_size)
            objects.append(
                (uri.join(name, f"part-{part:05d}-{uuid.uuid4().hex[:8]}-c000.snappy.parquet"), buffer.getvalue())
            )
        objects.append((uri.join(name, "_SUCCESS"), b""))
    objects.append((uri.join("feature_spec.json"), spec.to_json().encode()))
    return objects


def write_synthetic_features(
    settings: Settings,
    task: str = "classification",
    num_classes: int = 2,
    *,
    dataset: str | None = None,
    snapshot_id: str = "snap0001",
    rows: dict[str, int] | None = None,
    seed: int = 0,
    noise: float = 0.3,
    parts: int = 2,
    num_numeric: int = 4,
) -> SyntheticFeatures:
    """Write a complete features folder to S3 (a unique dataset name unless one is given)."""
    from ml.clients import s3_client

    kind = f"class{num_classes}" if task == "classification" else "regr"
    dataset = dataset or f"synthetic-{kind}-{uuid.uuid4().hex[:10]}"
    rows = rows or SPLIT_ROWS
    spec = make_spec(dataset, snapshot_id, task, num_classes, num_numeric=num_numeric, rows=rows)
    splits = make_arrays(spec, rows, seed, noise)
    uri = features_uri(settings.lake, dataset, snapshot_id)
    client = s3_client(settings.s3)
    for key, body in feature_objects(spec, splits, uri, parts=parts):
        client.put_object(Bucket=key.bucket, Key=key.key, Body=body)
    return SyntheticFeatures(dataset, snapshot_id, uri, spec, splits, settings)


# -- unit tests: stores without a service

# S3 settings for moto's in-memory S3: AWS's own endpoint (moto intercepts it; a custom endpoint would not be) and
# made-up keys (moto accepts any; nothing real is ever signed with them).
IN_MEMORY_S3 = S3Settings(endpoint_url=None, region="us-east-1", access_key_id="unit", secret_access_key="test")


@contextmanager
def in_memory_s3(*buckets: str) -> Iterator[Any]:
    """moto's in-memory S3 with `buckets` (default: the lake's and the raw bucket), as a boto3 client of
    IN_MEMORY_S3; `ml.clients.s3_client(IN_MEMORY_S3)` reaches the same store while the context is open."""
    from moto import mock_aws

    from ml.clients import s3_client

    # mock_credentials=False: moto leaves the process environment alone (the keys are in IN_MEMORY_S3).
    with mock_aws(config={"core": {"mock_credentials": False}}):
        client = s3_client(IN_MEMORY_S3)
        for bucket in buckets or ("lake", "raw"):
            client.create_bucket(Bucket=bucket)
        yield client


class LocalLake:
    """A local folder laid out like S3 (ROOT/BUCKET/KEY) with a pyarrow filesystem that reads it as the lake: what
    `read_split` and `load_training_data` take, without a service."""

    def __init__(self, root: Path) -> None:
        from pyarrow import fs

        self.root = root
        self.filesystem = fs.SubTreeFileSystem(str(root), fs.LocalFileSystem())

    def put(self, uri: S3Uri, body: bytes) -> None:
        path = self.root / uri.bucket / uri.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    def write_features(
        self,
        spec: FeatureSpec,
        splits: dict[str, SplitArrays],
        uri: S3Uri,
        *,
        client: Any = None,
        parts: int = 2,
        row_group_size: int | None = None,
    ) -> None:
        """The features folder here, and into `client` (an S3 client) too when one is given."""
        for key, body in feature_objects(spec, splits, uri, parts=parts, row_group_size=row_group_size):
            self.put(key, body)
            if client is not None:
                client.put_object(Bucket=key.bucket, Key=key.key, Body=body)


def delete_mlflow_experiment(settings: Settings, name: str) -> None:
    """Remove a test's MLflow experiment (searches log to one named after the dataset), if it exists."""
    from ml.clients import mlflow_client

    client = mlflow_client(settings.mlflow)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        client.delete_experiment(experiment.experiment_id)
