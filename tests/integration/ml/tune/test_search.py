"""A tiny Ray Tune search end to end on synthetic features in the real S3 server, with MLflow and Kafka: the best
checkpoint stored, no credentials in Tune's storage, one MLflow child run and one Kafka message per trial-epoch, a
completed search never run again (no Tuner is built), evaluation against a trivial baseline, the CLI.

Kept small for 2 cores: 4 trials of at most 3 epochs, 2 at a time, on a 1000-row synthetic problem.
"""

from __future__ import annotations

import argparse
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ml.settings import Settings
from ml.storage import S3Uri, evaluation_uri, exists, list_keys, read_json
from ml.tune.config import SearchResult
from ml.tune.space import load_search_space
from tests.integration.ml.tune.support import SMALL_SPACE, MetricsTopicReader, search, small_search
from tests.support.synthetic_features import SyntheticFeatures, delete_mlflow_experiment, write_synthetic_features

CONTRACT_KEYS = {
    "dataset",
    "snapshot_id",
    "task",
    "metric",
    "test_metrics",
    "baseline_test_metrics",
    "validation_metrics",
    "params",
    "checkpoint_uri",
    "features_uri",
    "feature_spec_uri",
    "search_space_hash",
    "mlflow_parent_run_id",
    "num_trials",
}


@pytest.fixture(scope="module")
def classification_features(s3_service: None, settings: Settings) -> Iterator[SyntheticFeatures]:
    features = write_synthetic_features(settings, "classification", 3)
    try:
        yield features
    finally:
        features.cleanup()
        delete_mlflow_experiment(settings, features.dataset)


def _config(features: SyntheticFeatures, run_name: str, **overrides: Any) -> Any:
    return small_search(features.dataset, features.snapshot_id, run_name, **overrides)


@pytest.fixture(scope="module")
def searched(
    local_ray: None,
    classification_features: SyntheticFeatures,
    settings: Settings,
    mlflow_service: None,
    kafka_service: None,
) -> tuple[SearchResult, list[tuple[str, dict]]]:
    run_name = f"e2e-{uuid.uuid4().hex[:8]}"
    reader = MetricsTopicReader(settings)
    result = search(_config(classification_features, run_name), settings)
    messages = reader.read(f"{run_name}:")  # the publisher flushed before run_search returned
    return result, messages


def _children(client: Any, result: SearchResult) -> list[Any]:
    parent = client.get_run(result.mlflow_parent_run_id)
    return list(
        client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
    )


def test_search_runs_every_trial_and_stores_the_best_checkpoint(searched: tuple, s3_client: Any) -> None:
    result, _ = searched
    assert result.num_trials == 4 and result.num_errored == 0
    assert result.task == "classification" and (result.metric, result.mode) == ("val_loss", "min")
    assert set(result.best_params) >= {"lr", "num_layers", "hidden_size", "dropout", "norm", "activation"}
    assert 1 <= result.best_epoch <= 3
    assert result.best_validation_metrics["val_accuracy"] > 0.6
    checkpoint = S3Uri.parse(result.best_checkpoint_uri)
    assert checkpoint.key.startswith(f"tune/{result.dataset}/{result.snapshot_id}/{result.run_name}/trial_")
    for name in ("model_state.pt", "model_config.json", "training_state.pt"):
        assert exists(checkpoint.join(name), s3_client), name
    assert read_json(result.search_result_uri, s3_client)["best_checkpoint_uri"] == result.best_checkpoint_uri


def test_tune_storage_holds_no_credentials(searched: tuple, s3_client: Any, settings: Settings) -> None:
    result, _ = searched
    assert settings.s3.secret_access_key, "the stack's S3 server has keys: this test needs one to look for"
    secret = settings.s3.secret_access_key.encode()
    experiment = S3Uri.parse(result.experiment_uri)
    keys = [obj["Key"] for obj in list_keys(experiment, s3_client) if not obj["Key"].endswith("/")]
    assert any(key.endswith("tuner.pkl") for key in keys)
    for key in keys:
        assert secret not in s3_client.get_object(Bucket=experiment.bucket, Key=key)["Body"].read(), key


def test_mlflow_has_a_parent_run_with_one_child_per_trial(searched: tuple, mlflow_client: Any) -> None:
    result, _ = searched
    client = mlflow_client
    parent = client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.experiment_id == result.mlflow_experiment_id
    assert client.get_experiment(parent.info.experiment_id).name == result.dataset
    assert parent.data.tags["mlops.snapshot_id"] == result.snapshot_id
    assert parent.data.tags["mlops.search_space_hash"] == result.search_space_hash
    assert parent.data.tags["mlops.best_checkpoint_uri"] == result.best_checkpoint_uri
    assert parent.data.params["num_samples"] == "4"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(result.best_validation_metrics["val_loss"])
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == [f"{result.dataset}@{result.snapshot_id}"]
    assert parent.inputs.dataset_inputs[0].dataset.digest == result.snapshot_id

    children = _children(client, result)
    assert len(children) == 4
    assert {c.data.tags["mlops.trial_id"] for c in children} >= {result.best_trial_id}
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"lr", "hidden_size", "num_layers"} <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "val_loss")
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)) and steps[0] == 1  # one point per epoch, epochs numbered from 1


def test_kafka_sees_one_message_per_trial_epoch(searched: tuple, mlflow_client: Any) -> None:
    from ml.events.envelope import validate_envelope
    from ml.topics import TRAINING_METRICS

    result, messages = searched
    expected = {
        f"{result.run_name}:{c.data.tags['mlops.trial_id']}:{m.step}"
        for c in _children(mlflow_client, result)
        for m in mlflow_client.get_metric_history(c.info.run_id, "val_loss")
    }
    keys = [key for key, _ in messages]
    assert keys and Counter(keys).most_common(1)[0][1] == 1, "a trial-epoch was published twice"
    assert set(keys) == expected
    for key, envelope in messages:
        validate_envelope(envelope, TRAINING_METRICS)
        payload = envelope["payload"]
        assert key == f"{payload['run_name']}:{payload['trial_id']}:{payload['epoch']}"
        assert {"train_loss", "val_loss", "val_accuracy"} <= set(payload["metrics"])
        assert envelope["dag_run_id"] == f"manual__{result.run_name}"


def test_v2_says_which_dataset_snapshot_and_model_each_metric_is_about(searched: tuple, settings: Settings) -> None:
    from ml.events.envelope import validate_envelope
    from ml.topics import TRAINING_METRICS_V2

    result, v1_messages = searched
    v2_messages = MetricsTopicReader(settings, TRAINING_METRICS_V2, from_beginning=True).read(f"{result.run_name}:")
    assert sorted(key for key, _ in v2_messages) == sorted(key for key, _ in v1_messages)
    v1_payloads = {key: envelope["payload"] for key, envelope in v1_messages}
    subject = {
        "dataset": result.dataset,
        "snapshot_id": result.snapshot_id,
        "task": "classification",
        "model_name": f"{result.dataset}-classification",
    }
    for key, envelope in v2_messages:
        validate_envelope(envelope, TRAINING_METRICS_V2)
        assert envelope["payload"] == {**v1_payloads[key], **subject}


def test_a_completed_search_is_not_run_again(
    searched: tuple, classification_features: SyntheticFeatures, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    def no_tuner(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a completed search built a Tuner")

    result, _ = searched
    monkeypatch.setattr(tune, "Tuner", no_tuner)  # neither a new search nor a restore can run
    again = search(_config(classification_features, result.run_name), settings)
    assert again.to_dict() == result.to_dict()

    changed = load_search_space(SMALL_SPACE) | {"hidden_size": {"type": "choice", "values": [8, 16]}}
    with pytest.raises(ValueError, match="search_space_hash"):
        search(_config(classification_features, result.run_name, search_space=changed), settings)
    with pytest.raises(ValueError, match="num_samples"):
        search(_config(classification_features, result.run_name, num_samples=5), settings)


def test_evaluation_beats_the_majority_baseline(
    searched: tuple, settings: Settings, s3_client: Any, mlflow_client: Any
) -> None:
    from ml.evaluate import evaluate_best

    result, _ = searched
    evaluation = evaluate_best(result.to_dict(), s3=settings.s3, mlflow=settings.mlflow)
    assert CONTRACT_KEYS <= set(evaluation)
    assert evaluation["metric"] == "log_loss" and evaluation["num_trials"] == 4
    test, baseline = evaluation["test_metrics"], evaluation["baseline_test_metrics"]
    assert test["accuracy"] > baseline["accuracy"] + 0.3, (test, baseline)
    assert test["log_loss"] < 0.6 * baseline["log_loss"], (test, baseline)
    assert baseline["roc_auc"] == pytest.approx(0.5)
    assert read_json(evaluation_uri(result.experiment_uri), s3_client) == evaluation
    parent = mlflow_client.get_run(result.mlflow_parent_run_id)
    assert parent.data.metrics["test_accuracy"] == pytest.approx(test["accuracy"])
    assert parent.data.metrics["baseline_test_accuracy"] == pytest.approx(baseline["accuracy"])


def test_cli_tune_and_evaluate(searched: tuple, settings: Settings) -> None:
    from ml import evaluate
    from ml.tune import cli

    result, _ = searched
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="stage", required=True)
    cli.register_cli(subparsers)
    evaluate.register_cli(subparsers)
    args = parser.parse_args(
        [
            "tune",
            "--dataset",
            result.dataset,
            "--snapshot",
            result.snapshot_id,
            "--run-name",
            result.run_name,
            "--search-space",
            str(SMALL_SPACE),
            "--num-samples",
            "4",
            "--max-epochs",
            "3",
            "--patience",
            "3",
            "--seed",
            "1",
        ]
    )
    # The stored, completed search.
    assert args.handler(args, settings)["best_checkpoint_uri"] == result.best_checkpoint_uri
    args = parser.parse_args(["evaluate", "--search-result", str(result.search_result_uri), "--no-mlflow"])
    assert args.handler(args, settings)["checkpoint_uri"] == result.best_checkpoint_uri
    args = parser.parse_args(
        [
            "evaluate",
            "--dataset",
            result.dataset,
            "--snapshot",
            result.snapshot_id,
            "--run-name",
            result.run_name,
            "--no-mlflow",
        ]
    )
    assert args.handler(args, settings)["dataset"] == result.dataset


def test_a_bad_feature_folder_fails_clearly(local_ray: None, s3_service: None, settings: Settings) -> None:
    from ml.storage import DataError
    from ml.tune.config import SearchConfig

    config = SearchConfig(
        dataset=f"missing-{uuid.uuid4().hex[:8]}", snapshot_id="nope", run_name="r", search_space={"lr": 0.01}
    )
    with pytest.raises(DataError, match="no feature spec"):
        search(config, settings, mlflow=False, kafka=False)
