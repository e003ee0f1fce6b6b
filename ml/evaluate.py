"""Score the search's best checkpoint on the untouched test split, next to a trivial baseline.

`evaluate_best(search_result) -> dict` downloads the best checkpoint from S3, predicts the test split, computes the
task's metrics, and computes the same metrics for a baseline fitted on the training labels only (the majority class
with the training class frequencies as probabilities, or the training mean). The returned JSON is what model
registration consumes; it is also written beside the search (`ml.storage.evaluation_uri`: under the lake's
`evaluations/`, not in the tune folder, which only the tune task writes) and its metrics are logged into the search's
MLflow parent run (`test_*`, `baseline_test_*`).

The primary metric follows the search objective: `val_X` -> `X`, except that the training loss maps to the task's
own loss metric (classification `log_loss`, regression `rmse`), so that the gate compares interpretable numbers.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ml.data import ParquetSplit, SplitArrays, label_moments, load_feature_spec
from ml.json_values import json_safe
from ml.metrics import compute_metrics, constant_prediction_metrics
from ml.models import CLASSIFICATION, base_metric_name, higher_is_better
from ml.settings import MlflowSettings, S3Settings, Settings
from ml.storage import S3Uri, evaluation_uri, write_json

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"


def primary_metric(task: str, objective: str) -> str:
    """The test metric that stands for the search objective (see the module docstring)."""
    base = base_metric_name(objective)
    if base == "loss":
        return "log_loss" if task == CLASSIFICATION else "rmse"
    return base


def baseline_prediction(
    task: str, train_y: np.ndarray | Iterable[np.ndarray], num_classes: int | None = None
) -> tuple[float, np.ndarray | None]:
    """A trivial model fitted on the training labels (an array, or its blocks: only their class counts or moments are
    kept): the (prediction, class probabilities or None) it gives every row. Classification: the majority class and
    the training class frequencies (uniform for no labels); regression: the labels' mean (0 for none), as
    `label_moments` computes it for the trials' standardisation. `ml.metrics.constant_prediction_metrics` scores it."""
    blocks = [train_y] if isinstance(train_y, np.ndarray) else train_y
    if task == CLASSIFICATION:
        counts = np.zeros(int(num_classes or 0), dtype=np.float64)
        for block in blocks:
            found = np.bincount(block.astype(np.int64), minlength=len(counts)).astype(np.float64)
            counts = np.pad(counts, (0, len(found) - len(counts))) + found
        if not len(counts):
            counts = np.zeros(1)
        k = len(counts)
        priors = counts / counts.sum() if counts.sum() else np.full(k, 1.0 / k)
        return int(np.argmax(counts)), priors
    mean, _ = label_moments(blocks)
    return mean, None


def predict_blocks(
    model: Any, blocks: Iterable[SplitArrays], rows: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """`ml.models.predict` over a split's `rows` rows in blocks: (predictions, probabilities or None, labels), in the
    split's order. Each block's outputs are copied into arrays sized for the split, so that memory holds the results
    and one block's outputs, never a list of blocks and their concatenation."""
    from ml.models import predict

    predictions: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None
    filled = 0
    for block in blocks:
        if not len(block.y):
            continue  # an empty block's outputs have no shape to size the results by
        predicted, probability = predict(model, block.X)
        end = filled + len(predicted)
        if end > rows:
            raise ValueError(f"the blocks hold more than the split's {rows} rows")
        if predictions is None:
            predictions = np.empty(rows, predicted.dtype)
            labels = np.empty(rows, block.y.dtype)
            if probability is not None:
                probabilities = np.empty((rows, probability.shape[1]), probability.dtype)
        assert labels is not None
        predictions[filled:end] = predicted
        labels[filled:end] = block.y
        if probabilities is not None:
            probabilities[filled:end] = probability
        filled = end
    if filled != rows:
        raise ValueError(f"the blocks hold {filled} rows, the split {rows}")
    if predictions is None or labels is None:
        return np.empty(0), None, np.empty(0)
    return predictions, probabilities, labels


def evaluate_best(
    search_result: Any, *, s3: S3Settings, mlflow: MlflowSettings | None = None, write_result: bool = True
) -> dict[str, Any]:
    """Evaluate a SearchResult (object, dict, JSON file path or s3:// URI) on the test split; returns the JSON dict.
    The metrics go into the search's MLflow parent run unless `mlflow` is None."""
    from ml.clients import arrow_filesystem, s3_client
    from ml.models import load_model
    from ml.predictor import download_checkpoint
    from ml.tune.config import load_search_result

    started = time.perf_counter()
    client = s3_client(s3)
    result = load_search_result(search_result, client)
    features = S3Uri.parse(result.features_uri)
    spec = load_feature_spec(features, client)
    if spec.task != result.task:
        raise ValueError(f"{features}: the feature spec's task {spec.task!r} differs from the search's {result.task!r}")

    with tempfile.TemporaryDirectory(prefix="best-ckpt-") as directory:
        download_checkpoint(result.best_checkpoint_uri, directory, client)
        model = load_model(directory)

    # Both splits are streamed block by block: only the model's outputs and the labels are kept, never the features.
    filesystem = arrow_filesystem(s3)
    test = ParquetSplit.open(features, "test", spec, filesystem)
    train = ParquetSplit.open(features, "train", spec, filesystem)
    if test.rows == 0:
        raise ValueError(f"{features}: the test split is empty")
    num_classes = spec.num_outputs if spec.task == CLASSIFICATION else None

    predictions, probabilities, test_y = predict_blocks(model, test.blocks(filesystem), test.rows)
    test_metrics = compute_metrics(spec.task, test_y, predictions, probabilities, num_classes=num_classes)
    del predictions, probabilities
    baseline = baseline_prediction(spec.task, train.labels(filesystem), num_classes)
    baseline_metrics = constant_prediction_metrics(spec.task, test_y, *baseline, num_classes=num_classes)

    metric = primary_metric(spec.task, result.metric)
    evaluation = json_safe(
        {
            "dataset": result.dataset,
            "snapshot_id": result.snapshot_id,
            "task": spec.task,
            "metric": metric,
            "higher_is_better": higher_is_better(metric),
            "test_metrics": test_metrics,
            "baseline_test_metrics": baseline_metrics,
            "validation_metrics": result.best_validation_metrics,
            "params": result.best_params,
            "checkpoint_uri": result.best_checkpoint_uri,
            "features_uri": result.features_uri,
            "feature_spec_uri": result.feature_spec_uri,
            "search_space_hash": result.search_space_hash,
            "mlflow_parent_run_id": result.mlflow_parent_run_id,
            "num_trials": result.num_trials,
            "test_rows": test.rows,
            "run_name": result.run_name,
            "dag_run_id": result.dag_run_id,
            "best_trial_id": result.best_trial_id,
            "classes": spec.classes,
        }
    )
    log.info(
        "test %s=%s (baseline %s) on %d rows for %s/%s in %.1fs",
        metric,
        test_metrics.get(metric),
        baseline_metrics.get(metric),
        test.rows,
        result.dataset,
        result.snapshot_id,
        time.perf_counter() - started,
    )

    if write_result:
        write_json(evaluation_uri(result.experiment_uri), evaluation, client)
    if mlflow is not None and result.mlflow_parent_run_id:
        _log_to_parent_run(mlflow, result.mlflow_parent_run_id, evaluation)
    return evaluation


def _log_to_parent_run(mlflow: MlflowSettings, run_id: str, evaluation: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric

    from ml.clients import mlflow_client

    client = mlflow_client(mlflow)
    now = int(time.time() * 1000)
    metrics = [Metric(f"test_{k}", float(v), now, 0) for k, v in evaluation["test_metrics"].items() if v is not None]
    metrics += [
        Metric(f"baseline_test_{k}", float(v), now, 0)
        for k, v in evaluation["baseline_test_metrics"].items()
        if v is not None
    ]
    client.log_batch(run_id, metrics=metrics)
    client.log_dict(run_id, dict(evaluation), EVALUATION_FILE)


def _evaluate_command(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from ml.clients import s3_client
    from ml.tune.config import stored_search_result

    if args.search_result:
        source: Any = args.search_result
    elif args.dataset and args.snapshot and args.run_name:
        client = s3_client(settings.s3)
        source = stored_search_result(settings.lake, args.dataset, args.snapshot, args.run_name, client)
    else:
        raise ValueError("give --search-result, or --dataset, --snapshot and --run-name of a completed search")
    return evaluate_best(source, s3=settings.s3, mlflow=None if args.no_mlflow else settings.mlflow)


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score the best checkpoint of a search on the test split",
        description="Load the best checkpoint of a search, score the untouched test split and a trivial baseline; "
        "prints the evaluation JSON that model registration consumes.",
    )
    parser.add_argument("--search-result", help="SearchResult JSON: a file or an s3:// URI")
    parser.add_argument("--dataset", help="with --snapshot and --run-name: the stored result of that search")
    parser.add_argument("--snapshot")
    parser.add_argument("--run-name")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the test metrics to MLflow")
    parser.set_defaults(handler=_evaluate_command)
