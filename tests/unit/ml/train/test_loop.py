"""ml.train: the training loop (seeded, early stopping, divergence, a checkpoint per epoch, resumable, streamed,
data-parallel) and trial configs. (The trial and the Ray Tune trainable: test_trial.py.)"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml.metrics import compute_metrics
from ml.models import ModelConfig
from ml.train import (
    HPARAMS,
    METRICS_FILE,
    TRAINING_STATE_FILE,
    TrainConfig,
    configs_from_trial,
    evaluate_split,
    seed_everything,
    target_stats,
    train_model,
    trial_params,
)
from tests.support.synthetic_features import make_spec, make_training_data


def _configs(data: Any, **overrides: Any) -> tuple[Any, TrainConfig]:
    mean, std = target_stats(data.spec, data.train.y)
    trial = {"num_layers": 1, "hidden_size": 16, "lr": 1e-2, "batch_size": 64, "max_epochs": 5, **overrides}
    return configs_from_trial(trial, data.spec, target_mean=mean, target_std=std)


# -- training


@pytest.mark.parametrize("task,classes", [("classification", 2), ("classification", 3), ("regression", 1)])
def test_loss_decreases_on_a_learnable_problem(task: str, classes: int) -> None:
    data = make_training_data(task, classes)
    model_config, train_config = _configs(data, max_epochs=6, patience=6)
    result = train_model(data, model_config, train_config)
    losses = [m["train_loss"] for m in result.history]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_metrics["val_loss"] <= result.history[0]["val_loss"]
    if task == "classification":
        assert result.best_metrics["val_accuracy"] > 0.8
    else:
        assert result.best_metrics["val_r2"] > 0.8


def test_training_is_reproducible_with_a_seed() -> None:
    data = make_training_data("classification", 3)
    model_config, train_config = _configs(data, dropout=0.2, norm="batch", seed=7)
    first = train_model(data, model_config, train_config)
    second = train_model(data, model_config, train_config)
    strip = [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in first.history]
    assert strip == [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in second.history]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    _, other_seed = _configs(data, dropout=0.2, norm="batch", seed=8)
    third = train_model(data, model_config, other_seed)
    assert third.history[0]["train_loss"] != first.history[0]["train_loss"]


def test_early_stopping_after_patience_epochs() -> None:
    data = make_training_data("classification", 2)
    # A learning rate this small cannot move the validation loss measurably: no epoch after the first improves.
    model_config, train_config = _configs(data, lr=1e-12, max_epochs=20, patience=3, min_delta=1e-3)
    result = train_model(data, model_config, train_config)
    assert [m["epoch"] for m in result.history] == [1, 2, 3, 4]
    assert result.stopped_early and result.best_epoch == 1


def test_each_epoch_reports_metrics_and_a_loadable_checkpoint(tmp_path: Path) -> None:
    from ml.models import load_model, predict

    data = make_training_data("regression")
    model_config, train_config = _configs(data, max_epochs=3)
    reported: list[tuple[dict[str, Any], list[str]]] = []

    def report(metrics: dict[str, Any], directory: Path) -> None:
        reported.append((dict(metrics), sorted(p.name for p in directory.iterdir())))
        shutil.copytree(directory, tmp_path / f"epoch{metrics['epoch']}")

    result = train_model(data, model_config, train_config, report=report)
    assert [m["epoch"] for m, _ in reported] == [1, 2, 3]
    assert reported[0][1] == ["metrics.json", "model_config.json", "model_state.pt", "training_state.pt"]
    assert {"train_loss", "val_loss", "val_rmse", "val_mae", "val_r2"} <= set(reported[0][0])
    model = load_model(tmp_path / "epoch3")
    values, _ = predict(model, data.validation.X)
    rmse = compute_metrics("regression", data.validation.y, values)["rmse"]
    assert rmse == pytest.approx(result.history[-1]["val_rmse"], rel=1e-4)
    assert json.loads((tmp_path / "epoch3" / "metrics.json").read_text())["metrics"]["epoch"] == 3


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = make_training_data("classification", 3)
    model_config, train_config = _configs(data, max_epochs=4, patience=10, dropout=0.3, norm="batch")
    full = train_model(data, model_config, train_config)

    def keep_epoch_2(metrics: dict[str, Any], directory: Path) -> None:
        if metrics["epoch"] == 2:
            shutil.copytree(directory, tmp_path / "epoch2")

    short = TrainConfig(**{**train_config.__dict__, "max_epochs": 2})
    train_model(data, model_config, short, report=keep_epoch_2)
    resumed = train_model(data, model_config, train_config, resume_from=tmp_path / "epoch2")
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1]["train_loss"] == full.history[-1]["train_loss"]
    assert resumed.history[-1]["val_loss"] == full.history[-1]["val_loss"]


def test_trial_config_splits_into_model_and_train_configs() -> None:
    data = make_training_data("classification", 3)
    model_config, train_config = configs_from_trial(
        {
            "num_layers": 2.0,
            "hidden_size": 32,
            "dropout": 0.1,
            "norm": "layer",
            "activation": "silu",
            "lr": 0.01,
            "weight_decay": 1e-4,
            "batch_size": 64.0,
            "max_epochs": 7,
            "patience": 2,
            "seed": 3,
            "metric": "val_loss",
            "mode": "min",
            "threads": 1,
        },
        data.spec,
    )
    assert (model_config.input_dim, model_config.output_dim, model_config.task) == (7, 3, "classification")
    assert (model_config.num_layers, model_config.norm, model_config.activation) == (2, "layer", "silu")
    assert (train_config.batch_size, train_config.max_epochs, train_config.seed) == (64, 7, 3)


@pytest.mark.parametrize(
    "task,classes,metrics", [("regression", 1, ("rmse", "mae", "r2")), ("classification", 3, ("accuracy", "log_loss"))]
)
def test_a_diverging_run_stops_and_is_flagged(task: str, classes: int, metrics: tuple[str, ...]) -> None:
    data = make_training_data(task, classes)
    # An absurd learning rate sends the weights, and the loss, to infinity within the first epochs.
    model_config, train_config = _configs(data, lr=1e30, max_epochs=10, patience=10)
    result = train_model(data, model_config, train_config)
    assert result.diverged and not result.stopped_early
    assert len(result.history) < 10
    last = result.history[-1]
    assert math.isnan(last["train_loss"])
    # Its outputs are no predictions: the metrics are undefined (NaN), not an error that would fail the trial.
    assert all(math.isnan(last[f"val_{name}"]) for name in metrics)


def test_resuming_refuses_a_checkpoint_of_another_model(tmp_path: Path) -> None:
    data = make_training_data("classification", 2)
    model_config, train_config = _configs(data, max_epochs=1)

    def keep(metrics: dict[str, Any], directory: Path) -> None:
        shutil.copytree(directory, tmp_path / "epoch1")

    train_model(data, model_config, train_config, report=keep)
    wider, _ = _configs(data, hidden_size=32)
    with pytest.raises(ValueError, match="checkpoint is for"):
        train_model(data, wider, train_config, resume_from=tmp_path / "epoch1")


def test_early_stopping_follows_the_chosen_metric_and_mode() -> None:
    data = make_training_data("classification", 2)
    model_config, train_config = _configs(
        data, lr=1e-12, max_epochs=20, patience=2, metric="val_accuracy", mode="max", min_delta=0.5
    )
    result = train_model(data, model_config, train_config)
    assert [m["epoch"] for m in result.history] == [1, 2, 3]
    assert result.best_epoch == 1 and result.best_metrics == result.history[0]


def test_validation_metrics_are_prefixed_and_match_the_task_metrics() -> None:
    data = make_training_data("classification", 3)
    model_config, _ = _configs(data)
    torch.manual_seed(0)
    from ml.models import build_model, predict

    model = build_model(model_config)
    metrics = evaluate_split(model, model_config, data.validation, prefix="val_", batch_size=7)
    assert set(metrics) == {"val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc", "val_log_loss"}
    labels, probabilities = predict(model, data.validation.X)
    expected = compute_metrics("classification", data.validation.y, labels, probabilities, num_classes=3)
    assert metrics["val_accuracy"] == pytest.approx(expected["accuracy"])
    # Mean cross-entropy on the logits is the log loss of the softmax probabilities.
    assert metrics["val_loss"] == pytest.approx(expected["log_loss"], rel=1e-4)
    assert model.training  # evaluate_split restores the mode it found


def test_train_config_refuses_bad_values() -> None:
    for bad, fragment in [
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": math.inf}, "lr must be a positive number"),
        ({"batch_size": 0}, "batch_size, max_epochs and patience must be >= 1"),
        ({"patience": 0}, "batch_size, max_epochs and patience must be >= 1"),
        ({"mode": "best"}, "mode must be 'min' or 'max'"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            TrainConfig(**bad)


def test_configs_need_a_spec_or_the_shapes() -> None:
    with pytest.raises(ValueError, match="needs a feature spec or input_dim, output_dim and task"):
        configs_from_trial({"lr": 0.1})
    model_config, train_config = configs_from_trial(
        {"lr": 0.1, "hidden_size": 8}, input_dim=3, output_dim=1, task="regression", target_mean=2.0, target_std=4.0
    )
    assert model_config == ModelConfig(3, 1, "regression", hidden_size=8, target_mean=2.0, target_std=4.0)
    assert train_config == TrainConfig(lr=0.1)


def test_target_stats() -> None:
    regression = make_spec("d", "s", "regression", 1)
    assert target_stats(regression, np.array([1.0, 3.0], dtype=np.float32)) == (2.0, 1.0)
    assert target_stats(regression, np.array([5.0, 5.0])) == (5.0, 1.0)  # constant: std 1
    assert target_stats(regression, np.array([])) == (0.0, 1.0)
    assert target_stats(make_spec("d", "s", "classification", 3), np.array([0, 2, 2])) == (0.0, 1.0)


def test_seed_everything_makes_draws_repeat() -> None:
    import random

    seed_everything(11)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(11)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_trial_params_are_the_hyper_parameters_as_json() -> None:
    config = {
        "lr": np.float64(0.01),
        "hidden_size": np.int64(32),
        "norm": "batch",
        "max_epochs": 3,
        "metric": "val_loss",
        "seed": 1,
    }
    params = trial_params(config)
    assert params == {"lr": 0.01, "hidden_size": 32, "norm": "batch"}
    assert json.loads(json.dumps(params)) == params  # numpy scalars become JSON numbers
    assert set(trial_params({k: 1 for k in (*HPARAMS, "threads")})) == set(HPARAMS)


# -- streamed splits and data-parallel groups


def _streamed(tmp_path: Path, task: str = "classification", classes: int = 2) -> tuple[Any, Any]:
    """The same splits in memory and as a StreamingData over a local folder laid out like the lake."""
    from ml.data import StreamingData, training_data
    from ml.storage import S3Uri
    from tests.support.synthetic_features import LocalLake

    memory = make_training_data(task, classes)
    lake = LocalLake(tmp_path)
    uri = S3Uri("lake", "features")
    lake.write_features(memory.spec, {"train": memory.train, "validation": memory.validation}, uri, row_group_size=50)
    streamed = training_data(uri, memory.spec, lake.filesystem, trial_filesystem=lake.filesystem, cache_bytes=0)
    assert isinstance(streamed, StreamingData)
    return memory, streamed


@pytest.mark.parametrize("task,classes", [("classification", 3), ("regression", 1)])
def test_a_streamed_split_trains_and_validates_on_every_row(tmp_path: Path, task: str, classes: int) -> None:
    from ml.train.config import training_target_stats

    memory, streamed = _streamed(tmp_path, task, classes)
    mean, std = training_target_stats(streamed)
    assert (mean, std) == pytest.approx(target_stats(memory.spec, memory.train.y))
    model_config, train_config = configs_from_trial(
        {"num_layers": 1, "hidden_size": 16, "lr": 1e-2, "batch_size": 64, "max_epochs": 4, "patience": 4},
        memory.spec,
        target_mean=mean,
        target_std=std,
    )
    result = train_model(streamed, model_config, train_config)
    assert [m["epoch"] for m in result.history] == [1, 2, 3, 4]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # Validation streamed block by block gives what the whole split in memory gives.
    in_memory = evaluate_split(result.model, model_config, memory.validation)
    streamed_blocks = evaluate_split(result.model, model_config, streamed.validation.blocks(streamed.filesystem))
    assert streamed_blocks == pytest.approx(in_memory, rel=1e-5)
    again = train_model(streamed, model_config, train_config)  # seeded by (seed, epoch): reproducible
    assert [m["train_loss"] for m in again.history] == [m["train_loss"] for m in result.history]


class _FakeGroup:
    """A worker of a data-parallel group without a process group: `agree` answers what rank 0 decided."""

    def __init__(self, rank: int, world_size: int, decisions: list[bool]) -> None:
        self.rank, self.world_size, self.device = rank, world_size, "cpu"
        self.decisions = decisions
        self.asked: list[bool] = []

    def wrap(self, model: Any) -> Any:
        return model

    def agree(self, stop: bool) -> bool:
        self.asked.append(stop)
        return self.decisions[len(self.asked) - 1]


def test_a_worker_other_than_rank_0_trains_its_shard_and_follows_rank_0() -> None:
    data = make_training_data("classification", 2)
    model_config, train_config = _configs(data, max_epochs=5, patience=5)
    reports: list[tuple[dict[str, Any], Any]] = []
    group = _FakeGroup(1, 2, [False, True])  # rank 0 stops after epoch 2
    result = train_model(data, model_config, train_config, report=lambda m, d: reports.append((m, d)), group=group)
    assert [m["epoch"] for m in result.history] == [1, 2]
    assert all(directory is None for _, directory in reports)  # only rank 0 writes checkpoints
    assert not any(key.startswith("val_") for metrics, _ in reports for key in metrics)  # nor validates


def test_rank_0_validates_checkpoints_and_its_decision_is_asked_every_epoch(tmp_path: Path) -> None:
    data = make_training_data("classification", 2)
    model_config, train_config = _configs(data, max_epochs=3, patience=3)
    kept: list[set[str]] = []

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        assert directory is not None and "val_loss" in metrics
        kept.append({p.name for p in directory.iterdir()})

    group = _FakeGroup(0, 2, [False, False, False])
    train_model(data, model_config, train_config, report=report, group=group)
    assert group.asked == [False, False, False] and len(kept) == 3
    assert {METRICS_FILE, TRAINING_STATE_FILE} <= kept[0]


def test_in_a_group_a_diverged_step_does_not_end_the_epoch_early() -> None:
    from ml.train.loop import _train_one_epoch

    data = make_training_data("regression", 1)
    model_config, _ = _configs(data)
    from ml.models import build_model

    model = build_model(model_config)
    calls = []

    class Optimizer:
        def zero_grad(self, set_to_none: bool) -> None:
            calls.append("zero")

        def step(self) -> None:
            calls.append("step")

    X = torch.full((8, len(data.spec.feature_columns)), math.nan)
    batches = [(X[:4], torch.zeros(4)), (X[4:], torch.zeros(4))]
    loss, diverged = _train_one_epoch(model, model_config, Optimizer(), batches, "cpu", alone=False)
    assert diverged and math.isnan(loss) and calls.count("step") == 2  # every batch's all-reduce happens
    calls.clear()
    loss, diverged = _train_one_epoch(model, model_config, Optimizer(), batches, "cpu", alone=True)
    assert diverged and calls.count("step") == 0  # alone: stop at the first non-finite loss
