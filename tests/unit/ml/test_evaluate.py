"""ml.evaluate: the baseline and the primary metric, and `evaluate_best` end to end on moto's S3 (spec, checkpoint,
result) and a local folder read as the lake (splits), with a fake MLflow client: no services."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.data import TrainingData
from ml.evaluate import EVALUATION_FILE, baseline_prediction, evaluate_best, primary_metric, register_cli
from ml.metrics import compute_metrics
from ml.models import build_model, save_checkpoint
from ml.settings import MlflowSettings, Settings
from ml.storage import S3Uri, evaluation_uri, read_json, write_json
from ml.train import configs_from_trial, target_stats, train_model
from ml.tune.config import SEARCH_RESULT_FILE, SearchResult
from tests.support.synthetic_features import (
    IN_MEMORY_S3,
    LocalLake,
    in_memory_s3,
    make_arrays,
    make_spec,
)

FEATURES = S3Uri("lake", "datasets/d/features/snap")
EXPERIMENT = S3Uri("lake", "tune/d/snap/run-1")
CHECKPOINT = EXPERIMENT.join("trial_abc/checkpoint_000002")
ROWS = {"train": 300, "validation": 100, "test": 100}


# -- the baseline and the primary metric


def test_baselines_use_training_labels_only() -> None:
    prediction, probabilities = baseline_prediction("classification", np.array([0, 2, 2, 1, 2]), num_classes=3)
    assert prediction == 2 and probabilities is not None and np.allclose(probabilities, [0.2, 0.2, 0.6])
    assert baseline_prediction("regression", np.array([1.0, 2.0, 6.0])) == (3.0, None)


def test_baselines_without_training_labels() -> None:
    prediction, probabilities = baseline_prediction("classification", np.array([], dtype=np.int64), num_classes=4)
    assert prediction == 0 and probabilities is not None
    assert np.allclose(probabilities, 0.25)  # uniform when nothing is known
    assert baseline_prediction("regression", np.array([])) == (0.0, None)
    # Without num_classes, the classes are the ones the labels show.
    _, inferred = baseline_prediction("classification", np.array([0, 1, 1]))
    assert inferred is not None and inferred.shape == (2,)


def test_baselines_from_streamed_label_blocks_equal_the_whole_array() -> None:
    labels = np.array([0, 2, 2, 1, 2, 3, 3, 3])
    blocks = iter([labels[:3], labels[3:5], labels[5:]])  # a later block shows a class the first did not
    whole = baseline_prediction("classification", labels)
    streamed = baseline_prediction("classification", blocks)
    assert whole[0] == streamed[0] and np.allclose(whole[1], streamed[1])  # type: ignore[arg-type]
    values = np.array([1.0, 2.0, 6.0, 7.0])
    assert baseline_prediction("regression", iter([values[:1], values[1:]]))[0] == 4.0


def test_the_regression_baseline_is_the_float64_mean_that_standardisation_uses() -> None:
    from ml.data import label_moments

    blocks = [np.array([], np.float32), np.array([0.1, 0.2], np.float32), np.array([0.6], np.float32)]
    value, _ = baseline_prediction("regression", iter(blocks))
    expected = float(np.mean(np.concatenate(blocks), dtype=np.float64))  # of the float32 labels, not 0.3 exactly
    assert value == pytest.approx(expected, rel=1e-15)
    assert value == label_moments(blocks)[0]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_predictions_over_blocks_equal_one_pass_over_the_split(task: str) -> None:
    from ml.data import SplitArrays
    from ml.evaluate import predict_blocks
    from ml.models import build_model, predict
    from tests.support.synthetic_features import make_training_data

    data = make_training_data(task, 3 if task == "classification" else 1)
    model_config, _ = configs_from_trial({"num_layers": 1, "hidden_size": 8}, data.spec)
    model = build_model(model_config)
    split = data.validation
    # An empty block first: the results are sized by the first block with rows.
    blocks = [SplitArrays("v", split.X[:0], split.y[:0])]
    blocks += [SplitArrays("v", split.X[i : i + 7], split.y[i : i + 7]) for i in range(0, split.rows, 7)]
    predictions, probabilities, labels = predict_blocks(model, blocks, split.rows)
    expected, expected_probabilities = predict(model, split.X)
    # Equal to the float32 rounding of the linear layers, whose kernels differ by batch size.
    assert predictions.dtype == expected.dtype and np.allclose(predictions, expected, rtol=1e-5, atol=1e-6)
    if task == "classification":
        assert probabilities is not None and expected_probabilities is not None
        assert probabilities.dtype == np.float64 and np.allclose(probabilities, expected_probabilities, rtol=1e-6)
    else:
        assert probabilities is None
    assert labels.dtype == split.y.dtype and labels.tolist() == split.y.tolist()
    with pytest.raises(ValueError, match="more than the split's"):
        predict_blocks(model, blocks, split.rows - 1)
    with pytest.raises(ValueError, match="the blocks hold"):
        predict_blocks(model, blocks, split.rows + 1)


def test_primary_metric_follows_the_objective() -> None:
    assert primary_metric("classification", "val_loss") == "log_loss"
    assert primary_metric("regression", "val_loss") == "rmse"
    assert primary_metric("classification", "val_accuracy") == "accuracy"
    assert primary_metric("regression", "val_r2") == "r2"


# -- evaluate_best without services


class FakeMlflowClient:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list[Any]]] = []
        self.dicts: list[tuple[str, dict[str, Any], str]] = []

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        self.batches.append((run_id, list(metrics)))

    def log_dict(self, run_id: str, value: dict[str, Any], path: str) -> None:
        self.dicts.append((run_id, value, path))


class Setup:
    def __init__(self, client: Any, lake: LocalLake, spec: Any, splits: Any, result: SearchResult) -> None:
        self.client, self.lake, self.spec, self.splits, self.result = client, lake, spec, splits, result


@pytest.fixture(params=[("classification", 3), ("regression", 1)], ids=["classification", "regression"])
def evaluation_setup(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    """Features in moto's S3 and in a local folder read as the lake; a trained checkpoint in moto's S3."""
    import ml.clients

    task, classes = request.param
    lake = LocalLake(tmp_path / "lake")
    monkeypatch.setattr(ml.clients, "arrow_filesystem", lambda s3: lake.filesystem)
    with in_memory_s3("lake") as client:
        spec = make_spec("d", "snap", task, classes, rows=ROWS)
        splits = make_arrays(spec, ROWS)
        lake.write_features(spec, splits, FEATURES, client=client)
        data = TrainingData(spec, splits["train"], splits["validation"])
        mean, std = target_stats(spec, data.train.y)
        model_config, train_config = configs_from_trial(
            {"lr": 1e-2, "num_layers": 1, "hidden_size": 16, "batch_size": 64, "max_epochs": 6, "patience": 6},
            spec,
            target_mean=mean,
            target_std=std,
        )
        trained = train_model(data, model_config, train_config)
        save_checkpoint(trained.model, model_config, tmp_path / "ckpt")
        for path in (tmp_path / "ckpt").iterdir():
            client.upload_file(str(path), CHECKPOINT.bucket, CHECKPOINT.join(path.name).key)
        result = SearchResult(
            dataset="d",
            snapshot_id="snap",
            run_name="run-1",
            task=task,
            metric="val_loss",
            mode="min",
            best_trial_id="abc",
            best_params={"lr": 1e-2, "num_layers": 1, "hidden_size": 16},
            best_epoch=trained.best_epoch,
            best_validation_metrics={"val_loss": trained.best_metrics["val_loss"]},
            best_checkpoint_uri=str(CHECKPOINT),
            num_trials=1,
            num_errored=0,
            experiment_uri=str(EXPERIMENT),
            features_uri=str(FEATURES),
            feature_spec_uri=str(FEATURES.join("feature_spec.json")),
            search_space={"lr": {"type": "constant", "value": 0.01}},
            search_space_hash="0123456789abcdef",
            mlflow_parent_run_id="parent-1",
            dag_run_id="manual__1",
        )
        write_json(result.search_result_uri, result.to_dict(), client)
        yield Setup(client, lake, spec, splits, result)


def test_evaluation_scores_the_checkpoint_and_the_baseline_on_the_test_split(evaluation_setup: Setup) -> None:
    setup = evaluation_setup
    task = setup.spec.task
    evaluation = evaluate_best(str(setup.result.search_result_uri), s3=IN_MEMORY_S3)

    assert evaluation["metric"] == ("log_loss" if task == "classification" else "rmse")
    assert evaluation["higher_is_better"] is False
    assert evaluation["test_rows"] == ROWS["test"] and evaluation["checkpoint_uri"] == str(CHECKPOINT)
    assert evaluation["classes"] == setup.spec.classes
    for key in ("dataset", "snapshot_id", "run_name", "dag_run_id", "best_trial_id", "search_space_hash"):
        assert evaluation[key] == getattr(setup.result, key), key
    assert evaluation["params"] == setup.result.best_params and evaluation["num_trials"] == 1

    # The baseline is fitted on the training labels only, and scored like the model.
    test, train = setup.splits["test"], setup.splits["train"]
    num_classes = setup.spec.num_outputs if task == "classification" else None
    prediction, row = baseline_prediction(task, train.y, num_classes)
    repeated = None if row is None else np.tile(row, (test.rows, 1))
    expected = compute_metrics(task, test.y, np.full(test.rows, prediction), repeated, num_classes=num_classes)
    assert evaluation["baseline_test_metrics"] == pytest.approx({k: v for k, v in expected.items()}, nan_ok=True)
    model_score, baseline_score = evaluation["test_metrics"], evaluation["baseline_test_metrics"]
    if task == "classification":
        assert model_score["accuracy"] > baseline_score["accuracy"] + 0.2
    else:
        assert model_score["rmse"] < 0.5 * baseline_score["rmse"]
    # Stored beside the search (not in its tune folder, which only the tune task writes), as JSON (no NaN).
    stored = read_json(evaluation_uri(EXPERIMENT), setup.client)
    assert evaluation_uri(EXPERIMENT).key.startswith("evaluations/")
    assert stored == evaluation
    json.dumps(evaluation, allow_nan=False)


def test_evaluation_logs_into_the_parent_run(evaluation_setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    import ml.clients

    fake = FakeMlflowClient()
    seen: list[MlflowSettings] = []
    monkeypatch.setattr(ml.clients, "mlflow_client", lambda mlflow: seen.append(mlflow) or fake)
    mlflow = MlflowSettings("http://mlflow.invalid:5000")
    evaluation = evaluate_best(evaluation_setup.result, s3=IN_MEMORY_S3, mlflow=mlflow, write_result=False)

    assert seen == [mlflow]
    ((run_id, metrics),) = fake.batches
    assert run_id == "parent-1"
    logged = {m.key: m.value for m in metrics}
    for name, value in evaluation["test_metrics"].items():
        if value is not None:
            assert logged[f"test_{name}"] == pytest.approx(value)
    assert {f"baseline_test_{name}" for name, v in evaluation["baseline_test_metrics"].items() if v is not None} <= set(
        logged
    )
    assert not any(v is None or (isinstance(v, float) and math.isnan(v)) for v in logged.values())
    assert fake.dicts == [("parent-1", evaluation, EVALUATION_FILE)]
    # write_result=False: nothing written beside the search.
    assert "Contents" not in evaluation_setup.client.list_objects_v2(
        Bucket="lake", Prefix=evaluation_uri(EXPERIMENT).key
    )


def test_evaluation_refuses_features_of_another_task(evaluation_setup: Setup) -> None:
    other = "regression" if evaluation_setup.spec.task == "classification" else "classification"
    result = SearchResult.from_dict({**evaluation_setup.result.to_dict(), "task": other})
    with pytest.raises(ValueError, match="differs from the search's"):
        evaluate_best(result.to_dict(), s3=IN_MEMORY_S3)


def test_evaluation_of_a_missing_checkpoint(evaluation_setup: Setup) -> None:
    result = SearchResult.from_dict(
        {**evaluation_setup.result.to_dict(), "best_checkpoint_uri": str(EXPERIMENT.join("trial_zzz/checkpoint_0"))}
    )
    with pytest.raises(LookupError, match="checkpoint not found"):
        evaluate_best(result, s3=IN_MEMORY_S3)


def test_the_cli_evaluates_a_stored_search(evaluation_setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="stage"))
    settings = Settings(s3=IN_MEMORY_S3)
    by_uri = parser.parse_args(
        ["evaluate", "--search-result", str(evaluation_setup.result.search_result_uri), "--no-mlflow"]
    )
    by_name = parser.parse_args(
        ["evaluate", "--dataset", "d", "--snapshot", "snap", "--run-name", "run-1", "--no-mlflow"]
    )
    first = by_uri.handler(by_uri, settings)
    assert by_name.handler(by_name, settings) == first
    assert first["checkpoint_uri"] == str(CHECKPOINT)
    missing = parser.parse_args(
        ["evaluate", "--dataset", "d", "--snapshot", "snap", "--run-name", "nope", "--no-mlflow"]
    )
    with pytest.raises(LookupError, match="no completed search"):
        missing.handler(missing, settings)
    incomplete = parser.parse_args(["evaluate", "--dataset", "d", "--no-mlflow"])
    with pytest.raises(ValueError, match="give --search-result"):
        incomplete.handler(incomplete, settings)


def test_an_empty_test_split_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ml.clients

    lake = LocalLake(tmp_path)
    monkeypatch.setattr(ml.clients, "arrow_filesystem", lambda s3: lake.filesystem)
    rows = {"train": 20, "validation": 10, "test": 0}
    with in_memory_s3("lake") as client:
        spec = make_spec("d", "snap", "regression", 1, rows=rows)
        lake.write_features(spec, make_arrays(spec, rows), FEATURES, client=client, parts=1)
        model_config, _ = configs_from_trial({"num_layers": 0}, spec)
        save_checkpoint(build_model(model_config), model_config, tmp_path / "ckpt")
        for path in (tmp_path / "ckpt").iterdir():
            client.upload_file(str(path), "lake", CHECKPOINT.join(path.name).key)
        result = {
            **{k: None for k in SearchResult.__dataclass_fields__},
            "dataset": "d",
            "snapshot_id": "snap",
            "run_name": "r",
            "task": "regression",
            "metric": "val_loss",
            "best_checkpoint_uri": str(CHECKPOINT),
            "experiment_uri": str(EXPERIMENT),
            "features_uri": str(FEATURES),
        }
        with pytest.raises(ValueError, match="the test split is empty"):
            evaluate_best(result, s3=IN_MEMORY_S3)


def test_a_search_result_file_is_read_from_a_local_path(tmp_path: Path, evaluation_setup: Setup) -> None:
    path = tmp_path / SEARCH_RESULT_FILE
    path.write_text(evaluation_setup.result.to_json())
    assert evaluate_best(str(path), s3=IN_MEMORY_S3, write_result=False)["run_name"] == "run-1"
