"""A tiny Ray Tune search end to end on synthetic features in the real S3 server, with MLflow and Kafka; an
interrupted search that resumes without running any trial twice; evaluation against a trivial baseline.

Kept small for 2 cores: 4 trials of at most 3 epochs, 2 at a time, on a 1000-row synthetic problem.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from ml.storage import S3Uri, exists, list_keys, read_json
from ml.tune import SearchConfig, SearchIncomplete, SearchResult, load_search_space, run_search
from tests.support.synthetic_features import SyntheticFeatures, delete_mlflow_experiment, write_synthetic_features

pytestmark = pytest.mark.integration

SMALL_SPACE = Path(__file__).resolve().parents[2] / "ml" / "search_spaces" / "small.json"
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


def _features(task: str, classes: int) -> Iterator[SyntheticFeatures]:
    features = write_synthetic_features(task, classes)
    try:
        yield features
    finally:
        features.cleanup()
        delete_mlflow_experiment(features.dataset)


def _config(features: SyntheticFeatures, run_name: str, **overrides: Any) -> SearchConfig:
    values: dict[str, Any] = {
        "dataset": features.dataset,
        "snapshot_id": features.snapshot_id,
        "run_name": run_name,
        "search_space": load_search_space(SMALL_SPACE),
        "num_samples": 4,
        "max_concurrent_trials": 2,
        "max_epochs": 3,
        "patience": 3,
        "seed": 1,
        "dag_run_id": f"manual__{run_name}",
    }
    return SearchConfig(**{**values, **overrides})


class MetricsTopicReader:
    """Reads the training-metrics topic from the offsets it had when created (other runs share the topic)."""

    def __init__(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from ml.topics import TRAINING_METRICS

        self.consumer = KafkaConsumer(
            bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], enable_auto_commit=False, consumer_timeout_ms=3000
        )
        partitions = [
            TopicPartition(TRAINING_METRICS.name, p)
            for p in sorted(self.consumer.partitions_for_topic(TRAINING_METRICS.name) or [])
        ]
        assert partitions, f"topic {TRAINING_METRICS.name} is missing"
        self.consumer.assign(partitions)
        for partition, offset in self.consumer.end_offsets(partitions).items():
            self.consumer.seek(partition, offset)

    def read(self, key_prefix: str, expected: int, timeout_s: float = 30.0) -> list[tuple[str, dict]]:
        import json

        found: list[tuple[str, dict]] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            for record in self.consumer:
                key = record.key.decode() if record.key else ""
                if key.startswith(key_prefix):
                    found.append((key, json.loads(record.value)))
        self.consumer.close()
        return found


# --------------------------------------------------------------------------------------------------------------------
# A search end to end
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classification_features(s3_service: None) -> Iterator[SyntheticFeatures]:
    yield from _features("classification", 3)


@pytest.fixture(scope="module")
def searched(
    local_ray: None, classification_features: SyntheticFeatures, mlflow_service: None, kafka_service: None
) -> tuple[SearchResult, list[tuple[str, dict]], float]:
    run_name = f"e2e-{uuid.uuid4().hex[:8]}"
    reader = MetricsTopicReader()
    started = time.perf_counter()
    result = run_search(_config(classification_features, run_name))
    elapsed = time.perf_counter() - started
    print(f"\nsearch of {result.num_trials} trials took {elapsed:.1f}s")
    messages = reader.read(f"{run_name}:", expected=1, timeout_s=20)  # the publisher flushed on close
    return result, messages, elapsed


def test_search_runs_every_trial_and_stores_the_best_checkpoint(searched: tuple, s3_client: Any) -> None:
    result, _, _ = searched
    assert result.num_trials == 4 and result.num_errored == 0
    assert result.task == "classification" and (result.metric, result.mode) == ("val_loss", "min")
    assert set(result.best_params) >= {"lr", "num_layers", "hidden_size", "dropout", "norm", "activation"}
    assert 1 <= result.best_epoch <= 3
    assert result.best_validation_metrics["val_accuracy"] > 0.6
    checkpoint = S3Uri.parse(result.best_checkpoint_uri)
    assert checkpoint.key.startswith(f"tune/{result.dataset}/{result.snapshot_id}/{result.run_name}/trial_")
    for name in ("model_state.pt", "model_config.json", "training_state.pt"):
        assert exists(checkpoint.join(name)), name
    assert read_json(result.search_result_uri)["best_checkpoint_uri"] == result.best_checkpoint_uri


def test_tune_storage_holds_no_credentials(searched: tuple, s3_client: Any) -> None:
    result, _, _ = searched
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    experiment = S3Uri.parse(result.experiment_uri)
    keys = [obj["Key"] for obj in list_keys(experiment) if not obj["Key"].endswith("/")]
    assert any(key.endswith("tuner.pkl") for key in keys)
    for key in keys:
        assert secret not in s3_client.get_object(Bucket=experiment.bucket, Key=key)["Body"].read(), key


def test_mlflow_has_a_parent_run_with_one_child_per_trial(searched: tuple) -> None:
    from mlflow import MlflowClient

    result, _, _ = searched
    client = MlflowClient()
    parent = client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    assert client.get_experiment(parent.info.experiment_id).name == result.dataset
    assert parent.data.tags["mlops.snapshot_id"] == result.snapshot_id
    assert parent.data.tags["mlops.search_space_hash"] == result.search_space_hash
    assert parent.data.tags["mlops.best_checkpoint_uri"] == result.best_checkpoint_uri
    assert parent.data.params["num_samples"] == "4"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(result.best_validation_metrics["val_loss"])
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == [f"{result.dataset}@{result.snapshot_id}"]
    assert parent.inputs.dataset_inputs[0].dataset.digest == result.snapshot_id

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 4
    assert {c.data.tags["mlops.trial_id"] for c in children} >= {result.best_trial_id}
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"lr", "hidden_size", "num_layers"} <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "val_loss")
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)) and steps[0] == 1  # one point per epoch, epochs numbered from 1


def test_kafka_sees_one_message_per_trial_epoch(searched: tuple) -> None:
    from mlflow import MlflowClient

    from ml.events import validate_envelope
    from ml.topics import TRAINING_METRICS

    result, messages, _ = searched
    client = MlflowClient()
    parent = client.get_run(result.mlflow_parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    expected = {
        f"{result.run_name}:{c.data.tags['mlops.trial_id']}:{m.step}"
        for c in children
        for m in client.get_metric_history(c.info.run_id, "val_loss")
    }
    keys = [key for key, _ in messages]
    assert Counter(keys).most_common(1)[0][1] == 1, "a trial-epoch was published twice"
    assert set(keys) == expected
    for key, envelope in messages:
        validate_envelope(envelope, TRAINING_METRICS)
        payload = envelope["payload"]
        assert key == f"{payload['run_name']}:{payload['trial_id']}:{payload['epoch']}"
        assert {"train_loss", "val_loss", "val_accuracy"} <= set(payload["metrics"])
        assert envelope["dag_run_id"] == f"manual__{result.run_name}"


def test_a_completed_search_is_not_run_again(searched: tuple, classification_features: SyntheticFeatures) -> None:
    result, _, first_elapsed = searched
    started = time.perf_counter()
    again = run_search(_config(classification_features, result.run_name))
    assert time.perf_counter() - started < min(5.0, first_elapsed / 2)
    assert again.to_dict() == result.to_dict()
    changed = load_search_space(SMALL_SPACE) | {"hidden_size": {"type": "choice", "values": [8, 16]}}
    with pytest.raises(ValueError, match="search_space_hash"):
        run_search(_config(classification_features, result.run_name, search_space=changed))
    with pytest.raises(ValueError, match="num_samples"):
        run_search(_config(classification_features, result.run_name, num_samples=5))


def test_evaluation_beats_the_majority_baseline(searched: tuple) -> None:
    from mlflow import MlflowClient

    from ml.evaluate import evaluate_best

    result, _, _ = searched
    evaluation = evaluate_best(result.to_dict())
    assert CONTRACT_KEYS <= set(evaluation)
    assert evaluation["metric"] == "log_loss" and evaluation["num_trials"] == 4
    test, baseline = evaluation["test_metrics"], evaluation["baseline_test_metrics"]
    assert test["accuracy"] > baseline["accuracy"] + 0.3, (test, baseline)
    assert test["log_loss"] < 0.6 * baseline["log_loss"], (test, baseline)
    assert baseline["roc_auc"] == pytest.approx(0.5)
    assert read_json(S3Uri.parse(result.experiment_uri).join("evaluation.json")) == evaluation
    parent = MlflowClient().get_run(result.mlflow_parent_run_id)
    assert parent.data.metrics["test_accuracy"] == pytest.approx(test["accuracy"])
    assert parent.data.metrics["baseline_test_accuracy"] == pytest.approx(baseline["accuracy"])


def test_cli_tune_and_evaluate(searched: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    from ml import evaluate
    from ml import tune as tune_module

    result, _, _ = searched
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="stage", required=True)
    tune_module.register_cli(subparsers)
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
    assert args.handler(args)["best_checkpoint_uri"] == result.best_checkpoint_uri  # the stored, completed search
    args = parser.parse_args(["evaluate", "--search-result", str(result.search_result_uri), "--no-mlflow"])
    assert args.handler(args)["checkpoint_uri"] == result.best_checkpoint_uri
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
    assert args.handler(args)["dataset"] == result.dataset


# --------------------------------------------------------------------------------------------------------------------
# Resume after an interruption
# --------------------------------------------------------------------------------------------------------------------

# Tune saves its callbacks with the experiment and uses the saved copies on restore, so the test's callbacks keep
# their records in module state, which survives pickling.
RECORDS: list[tuple[int, str, int]] = []  # (phase, trial id, epoch) of every result the driver processed
COMPLETED: list[tuple[int, str]] = []  # (phase, trial id)
STATE = {"phase": 1, "interrupt_after": 2}


class RecordResults(tune.Callback):
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        RECORDS.append((STATE["phase"], trial.trial_id, int(result["epoch"])))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        COMPLETED.append((STATE["phase"], trial.trial_id))


class InterruptAfterTrials(tune.Callback):
    """Sends this process SIGINT once `interrupt_after` trials have finished in phase 1, like Ctrl+C or an
    orchestrator's stop: Tune stops every trial, saves the experiment state and returns."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        finished = sum(1 for phase, _ in COMPLETED if phase == 1)
        if STATE["phase"] == 1 and finished == STATE["interrupt_after"]:
            STATE["interrupt_after"] = -1  # once
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                raise RuntimeError("Tune's SIGINT handler is not installed: refusing to interrupt pytest")
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def regression_features(s3_service: None) -> Iterator[SyntheticFeatures]:
    yield from _features("regression", 1)


def test_interrupted_search_resumes_without_rerunning_trials(
    local_ray: None, regression_features: SyntheticFeatures, mlflow_service: None, kafka_service: None
) -> None:
    from mlflow import MlflowClient

    from ml.evaluate import evaluate_best
    from ml.storage import arrow_filesystem

    run_name = f"resume-{uuid.uuid4().hex[:8]}"
    config = _config(regression_features, run_name)
    RECORDS.clear()
    COMPLETED.clear()
    STATE.update(phase=1, interrupt_after=2)
    with pytest.raises(SearchIncomplete, match="run it again"):
        run_search(config, callbacks=[RecordResults(), InterruptAfterTrials()])
    first_done = {trial for phase, trial in COMPLETED if phase == 1}
    assert len(first_done) >= 2
    experiment = S3Uri.parse(str(config.experiment_uri))
    keyless = arrow_filesystem(embed_keys=False)
    assert tune.Tuner.can_restore(f"{experiment.bucket}/{experiment.key}", storage_filesystem=keyless)
    assert not exists(experiment.join("search_result.json"))

    STATE["phase"] = 2
    result = run_search(config)  # the same run name: restores the saved experiment
    assert result.num_trials == 4 and result.num_errored == 0

    trials = {trial for _, trial, _ in RECORDS}
    assert len(trials) == 4
    pairs = Counter((trial, epoch) for _, trial, epoch in RECORDS)
    assert max(pairs.values()) == 1, f"an epoch ran twice: {pairs}"
    rerun = {trial for phase, trial, _ in RECORDS if phase == 2} & first_done
    assert not rerun, f"finished trials ran again after the resume: {rerun}"
    assert any(phase == 2 for phase, _, _ in RECORDS), "nothing was left to run after the interruption"
    for trial in trials:  # each trial's epochs are contiguous from 1, across the interruption
        epochs = sorted(epoch for _, t, epoch in RECORDS if t == trial)
        assert epochs == list(range(1, len(epochs) + 1)), (trial, epochs)

    # One parent run, continued; one child per trial.
    client = MlflowClient()
    parent = client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["mlops.trial_id"] for c in children) == sorted(trials)

    # Regression on the same learnable rule: far better than predicting the training mean.
    evaluation = evaluate_best(result)
    assert evaluation["metric"] == "rmse"
    assert evaluation["test_metrics"]["rmse"] < 0.5 * evaluation["baseline_test_metrics"]["rmse"]
    assert evaluation["test_metrics"]["r2"] > 0.7


def test_a_bad_feature_folder_fails_clearly(local_ray: None, s3_service: None) -> None:
    from ml.storage import DataError

    config = SearchConfig(
        dataset=f"missing-{uuid.uuid4().hex[:8]}",
        snapshot_id="nope",
        run_name="r",
        search_space={"lr": 0.01},
        track_mlflow=False,
        publish_metrics=False,
    )
    with pytest.raises(DataError, match="no feature spec"):
        run_search(config)


def test_a_run_killed_before_its_first_snapshot_starts_over(s3_client: Any, unique_prefix: str) -> None:
    from ml.storage import arrow_filesystem
    from ml.tune import _restorable

    path = f"lake/{unique_prefix}/run"
    s3_client.put_object(Bucket="lake", Key=f"{unique_prefix}/run/tuner.pkl", Body=b"not restorable alone")
    try:
        assert tune.Tuner.can_restore(path, storage_filesystem=arrow_filesystem(embed_keys=False))
        assert not _restorable(path, arrow_filesystem(embed_keys=False))
        s3_client.put_object(
            Bucket="lake", Key=f"{unique_prefix}/run/experiment_state-2026-01-01_00-00-00.json", Body=b"{}"
        )
        assert _restorable(path, arrow_filesystem(embed_keys=False))
    finally:
        from ml.storage import delete_prefix

        delete_prefix(S3Uri("lake", unique_prefix))
