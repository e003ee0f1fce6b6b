"""A stand-in for what training produces: a tiny feature spec, a checkpoint in ml.models' format, raw rows, a test
split and the evaluation result that registration consumes. Deterministic, CPU-only, milliseconds.

The ground truth is a rule on the raw column x1 (classification: "yes" iff x1 > 0; regression: 2 * x1 + 1), and the
model weights are set by hand, so that the quality of a stand-in model is known in advance:
  "good"    follows the rule (accuracy 1.0 / rmse ~0)
  "medium"  mixes x1 with x2 (clearly worse than good, clearly better than bad)
  "bad"     inverts the rule
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ml.features import CategoricalFeature, FeatureSpec, NumericFeature

QUALITY_WEIGHTS = {"good": (4.0, 0.0), "medium": (4.0, 3.0), "bad": (-4.0, 0.0)}  # weights of standardised (x1, x2)


def make_spec(
    task: str = "classification", *, dataset: str = "standin", snapshot_id: str = "snap-a", x1_mean: float = 0.0
) -> FeatureSpec:
    """Two numeric columns and one categorical; `x1_mean` shifts the standardisation (a 'different snapshot')."""
    return FeatureSpec(
        dataset=dataset,
        snapshot_id=snapshot_id,
        task=task,
        target="target",
        numeric=[NumericFeature("x1", fill=x1_mean, mean=x1_mean, std=1.0), NumericFeature("x2", 0.5, 0.5, 2.0)],
        categorical=[CategoricalFeature("color", ["red", "green"])],
        classes=["no", "yes"] if task == "classification" else None,
        rows={"train": 800, "validation": 100, "test": 100},
    )


def make_checkpoint(directory: str | Path, spec: FeatureSpec, quality: str = "good") -> Path:
    """Write model_state.pt + model_config.json (a linear model: ml.models' MLP with no hidden layer)."""
    import torch

    from ml.models import ModelConfig, build_model, save_checkpoint

    config = ModelConfig(input_dim=len(spec.feature_columns), output_dim=spec.num_outputs, task=spec.task, num_layers=0)
    model = build_model(config)
    w1, w2 = QUALITY_WEIGHTS[quality]
    # The rule is on raw x1; the model sees (x1 - mean) / std, so add the bias that undoes the spec's centring.
    x1 = spec.numeric[0]
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        if spec.task == "classification":
            model.head.weight[1, 0] = w1
            model.head.weight[1, 1] = w2
            model.head.bias[1] = w1 * x1.mean / x1.std
        else:
            model.head.weight[0, 0] = (w1 / 2.0) * x1.std
            model.head.weight[0, 1] = w2
            model.head.bias[0] = 1.0 + (w1 / 2.0) * x1.mean
    return save_checkpoint(model, config, directory)


def raw_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Raw request rows like a client sends them (some missing values and an unseen category included)."""
    rng = np.random.default_rng(seed)
    colors = ["red", "green", "blue", None]
    rows = []
    for index in range(count):
        rows.append(
            {
                "x1": float(rng.normal()),
                "x2": None if index % 7 == 3 else float(rng.normal(0.5, 2.0)),
                "color": colors[int(rng.integers(len(colors)))],
            }
        )
    return rows


def true_labels(spec: FeatureSpec, rows: list[dict[str, Any]]) -> np.ndarray:
    x1 = np.array([row["x1"] for row in rows], dtype=np.float64)
    if spec.task == "classification":
        return (x1 > 0).astype(np.int64)
    return 2.0 * x1 + 1.0


def split_parquet(spec: FeatureSpec, rows: list[dict[str, Any]]) -> bytes:
    """A split as preprocessing writes it: `spec.feature_columns` as float32 plus `label`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    matrix = spec.transform(rows)
    columns = {name: pa.array(matrix[:, i], pa.float32()) for i, name in enumerate(spec.feature_columns)}
    labels = true_labels(spec, rows)
    columns["label"] = pa.array(labels, pa.int32() if spec.task == "classification" else pa.float64())
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def score(spec: FeatureSpec, checkpoint: Path, rows: list[dict[str, Any]]) -> dict[str, float]:
    from ml.metrics import compute_metrics
    from ml.models import load_model, predict

    outputs, probabilities = predict(load_model(checkpoint), spec.transform(rows))
    return compute_metrics(spec.task, true_labels(spec, rows), outputs, probabilities, num_classes=spec.num_outputs)


def upload_stand_in(
    s3: Any,
    workdir: Path,
    *,
    bucket: str = "lake",
    prefix: str | None = None,
    task: str = "classification",
    dataset: str = "standin",
    snapshot_id: str = "snap-a",
    quality: str = "good",
    x1_mean: float = 0.0,
    test_rows: int = 200,
    seed: int = 0,
    metric: str | None = None,
) -> dict[str, Any]:
    """Put a stand-in checkpoint, feature spec and test split into S3; return the evaluation result for it."""
    prefix = prefix or f"tests/standin/{uuid.uuid4().hex[:12]}"
    spec = make_spec(task, dataset=dataset, snapshot_id=snapshot_id, x1_mean=x1_mean)
    checkpoint = make_checkpoint(workdir / f"checkpoint-{uuid.uuid4().hex[:6]}", spec, quality)
    rows = raw_rows(test_rows, seed)
    features = f"{prefix}/features/{snapshot_id}"
    for path in checkpoint.iterdir():
        s3.upload_file(str(path), bucket, f"{prefix}/checkpoint/{path.name}")
    s3.put_object(Bucket=bucket, Key=f"{features}/feature_spec.json", Body=spec.to_json().encode())
    s3.put_object(Bucket=bucket, Key=f"{features}/test/part-00000.parquet", Body=split_parquet(spec, rows))
    test_metrics = score(spec, checkpoint, rows)
    metric = metric or ("accuracy" if task == "classification" else "rmse")
    return {
        "dataset": dataset,
        "snapshot_id": snapshot_id,
        "task": task,
        "metric": metric,
        "test_metrics": test_metrics,
        "baseline_test_metrics": {metric: 0.5 if task == "classification" else 2.0},
        "validation_metrics": {metric: test_metrics[metric]},
        "params": {"num_layers": 0, "quality": quality},
        "checkpoint_uri": f"s3://{bucket}/{prefix}/checkpoint",
        "features_uri": f"s3://{bucket}/{features}",
        "feature_spec_uri": f"s3://{bucket}/{features}/feature_spec.json",
        "search_space_hash": "standin-space",
        "mlflow_parent_run_id": None,
        "num_trials": 1,
    }


def training_distributions(spec: FeatureSpec, rows: list[dict[str, Any]]) -> Any:
    """What preprocessing would record of `rows` as the training split (ml.features.distributions): deciles of each
    numeric column, shares of the spec's categories then `__other__`, missing shares. numpy's exact quantiles stand in
    for Spark's approximate ones."""
    from ml.drift import bin_counts, category_counts
    from ml.features import CategoricalDistribution, NumericDistribution, TrainingDistributions

    def numeric(name: str) -> NumericDistribution:
        values = np.array([np.nan if row[name] is None else row[name] for row in rows], dtype=np.float64)
        present = values[np.isfinite(values)]
        edges = sorted(set(np.quantile(present, np.linspace(0.1, 0.9, 9)).tolist()))
        counts = bin_counts(present, edges)
        return NumericDistribution(
            name, edges, (counts / counts.sum()).tolist(), len(present), 1 - len(present) / len(rows)
        )

    def categorical(name: str, categories: list[str]) -> CategoricalDistribution:
        keys = [row[name] for row in rows]
        counts = category_counts(keys, categories)
        present = int(counts.sum())
        return CategoricalDistribution(name, categories, (counts / present).tolist(), present, 1 - present / len(rows))

    return TrainingDistributions(
        dataset=spec.dataset,
        snapshot_id=spec.snapshot_id,
        rows=len(rows),
        numeric=[numeric(feature.name) for feature in spec.numeric],
        categorical=[categorical(feature.name, list(feature.categories)) for feature in spec.categorical],
    )
