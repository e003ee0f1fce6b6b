"""Synthetic feature folders shaped exactly like the Spark preprocessing job's output, for tests and benchmarks.

`write_synthetic_features` puts `train/`, `validation/`, `test/` Parquet parts (plus Spark's `_SUCCESS` markers) and
`feature_spec.json` (written last) under `ml.storage.features_uri(lake, dataset, snapshot_id)`. The data is learnable:
labels follow a fixed linear rule of the features plus noise, so a model can beat a trivial baseline by a clear margin.
`make_training_data` gives the same arrays in memory for unit tests.
"""

from __future__ import annotations

import io
import itertools
import uuid
from dataclasses import dataclass

import numpy as np

from ml.data import SplitArrays, TrainingData
from ml.features import LABEL_COLUMN, CategoricalFeature, FeatureSpec, NumericFeature
from ml.settings import Settings
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = f"class{num_classes}" if task == "classification" else "regr"
    dataset = dataset or f"synthetic-{kind}-{uuid.uuid4().hex[:10]}"
    rows = rows or SPLIT_ROWS
    spec = make_spec(dataset, snapshot_id, task, num_classes, num_numeric=num_numeric, rows=rows)
    splits = make_arrays(spec, rows, seed, noise)
    from ml.clients import s3_client

    uri = features_uri(settings.lake, dataset, snapshot_id)
    client = s3_client(settings.s3)
    label_type = pa.int32() if task == "classification" else pa.float64()  # Spark writes int / double labels
    for name, split in splits.items():
        bounds = np.linspace(0, split.rows, parts + 1).astype(int)
        for part, (start, stop) in enumerate(itertools.pairwise(bounds)):
            columns = {c: pa.array(split.X[start:stop, i], pa.float32()) for i, c in enumerate(spec.feature_columns)}
            columns[LABEL_COLUMN] = pa.array(split.y[start:stop]).cast(label_type)
            buffer = io.BytesIO()
            pq.write_table(pa.table(columns), buffer)
            key = uri.join(name, f"part-{part:05d}-{uuid.uuid4().hex[:8]}-c000.snappy.parquet")
            client.put_object(Bucket=key.bucket, Key=key.key, Body=buffer.getvalue())
        marker = uri.join(name, "_SUCCESS")
        client.put_object(Bucket=marker.bucket, Key=marker.key, Body=b"")
    spec_uri = uri.join("feature_spec.json")
    client.put_object(Bucket=spec_uri.bucket, Key=spec_uri.key, Body=spec.to_json().encode())
    return SyntheticFeatures(dataset, snapshot_id, uri, spec, splits, settings)


def delete_mlflow_experiment(settings: Settings, name: str) -> None:
    """Remove a test's MLflow experiment (searches log to one named after the dataset), if it exists."""
    from ml.clients import mlflow_client

    client = mlflow_client(settings.mlflow)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        client.delete_experiment(experiment.experiment_id)
