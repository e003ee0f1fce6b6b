"""Data-parallel trials end to end on a local 2-CPU Ray with its state API: Ray Train's TorchTrainer inside each Tune
trial, two DDP workers streaming their shards of the splits from the real S3 server (the splits are larger than the
search's memory cap), with MLflow and Kafka; a worker killed mid-epoch; a trial the cluster can never place.

Kept small for 2 cores: one data-parallel trial at a time (two 1-CPU workers), a few epochs each.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from ray import tune

from ml.settings import Settings
from ml.storage import S3Uri, exists
from ml.tune.config import SEARCH_MANIFEST_FILE, SearchResult
from ml.tune.parallel import CHECKPOINT_PREFIX, TRAIN_RUN_NAME
from tests.integration.ml.tune.support import MetricsTopicReader, search, small_search
from tests.support.synthetic_features import SyntheticFeatures, delete_mlflow_experiment, write_synthetic_features

ROWS = {"train": 6000, "validation": 1000, "test": 1000}


@pytest.fixture(scope="module")
def features(s3_service: None, settings: Settings) -> Iterator[SyntheticFeatures]:
    written = write_synthetic_features(settings, "classification", 3, rows=ROWS, parts=3)
    try:
        yield written
    finally:
        written.cleanup()
        delete_mlflow_experiment(settings, written.dataset)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def searched(
    local_ray_with_state_api: None,
    features: SyntheticFeatures,
    settings: Settings,
    mlflow_service: None,
    kafka_service: None,
) -> tuple[SearchResult, list[tuple[str, dict]], list[str]]:
    run_name = f"ddp-{uuid.uuid4().hex[:8]}"
    reader = MetricsTopicReader(settings)
    records = _Records()
    stream_log = logging.getLogger("ml.data.source")
    stream_log.addHandler(records)
    previous = stream_log.level
    stream_log.setLevel(logging.INFO)
    try:
        # cache_mb=0.01: the splits (about 0.3 MB of arrays) are over the cap, so every worker streams its shard.
        config = small_search(
            features.dataset, features.snapshot_id, run_name, workers_per_trial=2, num_samples=2, cache_mb=0.01
        )
        result = search(config, settings)
    finally:
        stream_log.removeHandler(records)
        stream_log.setLevel(previous)
    return result, reader.read(f"{run_name}:"), records.messages


def test_a_data_parallel_search_streams_its_splits_and_keeps_the_best_train_checkpoint(
    searched: tuple, settings: Settings, s3_client: Any
) -> None:
    from ml.models import load_model
    from ml.predictor import download_checkpoint
    from ml.storage import read_json

    result, _, logged = searched
    assert (result.num_trials, result.num_errored) == (2, 0)
    assert any("streamed from S3 by the trials" in message for message in logged), logged
    checkpoint = S3Uri.parse(result.best_checkpoint_uri)
    assert f"/{TRAIN_RUN_NAME}/{CHECKPOINT_PREFIX}" in checkpoint.key
    assert checkpoint.key.endswith(f"{result.best_epoch:04d}")
    stored = read_json(checkpoint.join("metrics.json"), s3_client)["metrics"]
    assert stored["val_loss"] == pytest.approx(result.best_validation_metrics["val_loss"])
    with tempfile.TemporaryDirectory() as directory:
        download_checkpoint(checkpoint, directory, s3_client)
        model = load_model(directory)
    assert model.task == "classification"


def test_kafka_and_mlflow_see_one_result_per_trial_epoch_not_one_per_worker(
    searched: tuple, mlflow_client: Any
) -> None:
    from ml.events.envelope import validate_envelope
    from ml.topics import TRAINING_METRICS

    result, messages, _ = searched
    keys = [key for key, _ in messages]
    assert keys and Counter(keys).most_common(1)[0][1] == 1, "a trial-epoch was published twice"
    epochs: dict[str, list[int]] = {}
    for _, envelope in messages:
        validate_envelope(envelope, TRAINING_METRICS)
        payload = envelope["payload"]
        assert "val_loss" in payload["metrics"]  # rank 0's metrics: only it validates
        epochs.setdefault(payload["trial_id"], []).append(payload["epoch"])
    assert len(epochs) == 2
    assert all(sorted(seen) == list(range(1, len(seen) + 1)) for seen in epochs.values()), epochs
    parent = mlflow_client.get_run(result.mlflow_parent_run_id)
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 2


class KillOneWorker(tune.Callback):
    """After a trial's first epoch, kills its rank-1 DDP worker process (a SIGKILL, as an OOM kill would)."""

    def __init__(self) -> None:
        self.killed: list[int] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.killed or result.get("epoch") != 1:
            return
        from ray.util.state import list_actors

        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], detail=True)
        assert len(workers) == 2, workers
        victim = max(workers, key=lambda actor: actor.pid)  # either is a worker of the group; any kill restarts it
        os.kill(victim.pid, signal.SIGKILL)
        self.killed.append(victim.pid)


def test_a_worker_killed_mid_epoch_restarts_the_group_from_the_latest_checkpoint(
    local_ray_with_state_api: None, features: SyntheticFeatures, settings: Settings
) -> None:
    run_name = f"ddp-kill-{uuid.uuid4().hex[:8]}"
    reader = MetricsTopicReader(settings)
    killer = KillOneWorker()
    config = small_search(
        features.dataset, features.snapshot_id, run_name, workers_per_trial=2, num_samples=1, max_epochs=4, patience=4
    )
    result = search(config, settings, mlflow=False, callbacks=[killer])
    assert killer.killed, "no worker was killed"
    assert (result.num_trials, result.num_errored) == (1, 0)
    epochs = sorted(envelope["payload"]["epoch"] for _, envelope in reader.read(f"{run_name}:"))
    # From the latest checkpoint: a restart from scratch would report epoch 1 again.
    assert epochs == [1, 2, 3, 4]
    with pytest.raises(ProcessLookupError):
        os.kill(killer.killed[0], 0)


def test_a_trial_the_cluster_cannot_place_fails_before_the_search_starts(
    local_ray_with_state_api: None, features: SyntheticFeatures, settings: Settings, s3_client: Any
) -> None:
    config = small_search(features.dataset, features.snapshot_id, f"ddp-{uuid.uuid4().hex[:8]}", workers_per_trial=3)
    with pytest.raises(ValueError, match=r"cannot be placed.*3 worker\(s\) x 1 CPU need 3 CPU, the cluster has 2"):
        search(config, settings)
    assert not exists(config.experiment_uri(settings.lake).join(SEARCH_MANIFEST_FILE), s3_client)


# Tune brings callbacks back from their pickle on restore: the records live in module state, which survives that.
RESULTS: list[tuple[int, str, int]] = []  # (phase, trial id, epoch)
PHASE = {"now": 1, "interrupt_at": 0}


class RecordAndInterrupt(tune.Callback):
    """Records every result; in phase 1, interrupts the search like Ctrl+C once a trial reports its second epoch."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        RESULTS.append((PHASE["now"], trial.trial_id, int(result["epoch"])))
        if PHASE["interrupt_at"] and result["epoch"] == PHASE["interrupt_at"]:
            PHASE["interrupt_at"] = 0  # once
            os.kill(os.getpid(), signal.SIGINT)  # Tune saves its state and returns


def test_an_interrupted_data_parallel_search_resumes_each_trial_from_its_train_checkpoint(
    local_ray_with_state_api: None, features: SyntheticFeatures, settings: Settings
) -> None:
    from ml.tune.config import SearchIncomplete

    config = small_search(
        features.dataset,
        features.snapshot_id,
        f"ddp-resume-{uuid.uuid4().hex[:8]}",
        workers_per_trial=2,
        num_samples=2,
        max_epochs=4,
        patience=4,
        grace_period=4,  # no ASHA stop: every trial runs its 4 epochs
    )
    RESULTS.clear()
    PHASE.update(now=1, interrupt_at=2)
    with pytest.raises(SearchIncomplete):
        search(config, settings, mlflow=False, kafka=False, callbacks=[RecordAndInterrupt()])
    interrupted = {trial for _, trial, _ in RESULTS}
    assert len(interrupted) == 1, RESULTS
    PHASE["now"] = 2
    result = search(config, settings, mlflow=False, kafka=False)
    assert (result.num_trials, result.num_errored) == (2, 0)
    (trial,) = interrupted
    before = [epoch for phase, t, epoch in RESULTS if phase == 1 and t == trial]
    after = [epoch for phase, t, epoch in RESULTS if phase == 2 and t == trial]
    assert before[:2] == [1, 2] and after and after[-1] == 4, RESULTS
    # Resumed from the Train run's latest checkpoint, not from scratch: epoch 1 never runs again, and no epoch but
    # the one in flight at the interruption runs twice.
    assert 1 not in after and len(Counter(before + after)) >= len(before + after) - 1, RESULTS
    others = [epoch for phase, t, epoch in RESULTS if phase == 2 and t != trial]
    assert others == [1, 2, 3, 4], RESULTS
