"""ml.train, ml.data batching, ml.tune configuration pieces and callbacks, ml.evaluate's baseline: no services."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from ml.data import SplitArrays, TensorBatches, to_tensors
from ml.evaluate import baseline_predictions, primary_metric
from ml.models import compute_metrics
from ml.train import TrainConfig, configs_from_trial, target_stats, train_model
from ml.tune import (
    SearchConfig,
    load_search_space,
    result_metrics,
    sanitize_run_name,
    search_space_hash,
    to_tune_space,
    validate_search_space,
)
from tests.support.synthetic_features import make_training_data

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _configs(data: Any, **overrides: Any) -> tuple[Any, TrainConfig]:
    mean, std = target_stats(data.spec, data.train.y)
    trial = {"num_layers": 1, "hidden_size": 16, "lr": 1e-2, "batch_size": 64, "max_epochs": 5, **overrides}
    return configs_from_trial(trial, data.spec, target_mean=mean, target_std=std)


# -- batching


def test_batches_cover_every_row_once_per_epoch_and_are_seeded() -> None:
    X = torch.arange(23, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(23)
    batches = TensorBatches(X, y, batch_size=5, generator=torch.Generator().manual_seed(3))
    first = [b for b in batches]
    assert len(first) == len(batches) == 5
    rows = torch.cat([xb[:, 0] for xb, _ in first]).long()
    assert sorted(rows.tolist()) == list(range(23))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in first)  # X and y stay aligned
    second = torch.cat([xb[:, 0] for xb, _ in batches])
    assert not torch.equal(rows.float(), second)  # a new permutation each epoch
    again = TensorBatches(X, y, batch_size=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([xb for xb, _ in again]), torch.cat([xb for xb, _ in first]))


def test_a_trailing_single_row_is_dropped() -> None:
    batches = TensorBatches(torch.zeros(11, 2), torch.zeros(11), batch_size=5, shuffle=False)
    assert [xb.shape[0] for xb, _ in batches] == [5, 5] and len(batches) == 2
    keep = TensorBatches(torch.zeros(11, 2), torch.zeros(11), batch_size=5, shuffle=False, drop_singleton=False)
    assert [xb.shape[0] for xb, _ in keep] == [5, 5, 1] and len(keep) == 3


def test_tensors_share_memory_with_read_only_arrays() -> None:
    X = np.ones((4, 3), dtype=np.float32)
    X.setflags(write=False)  # as arrays from Ray's object store are
    tensor, _ = to_tensors(SplitArrays("train", X, np.zeros(4, dtype=np.int64)))
    assert tensor.data_ptr() == X.ctypes.data


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


# -- search spaces


@pytest.mark.parametrize("name", ["default.json", "small.json"])
def test_shipped_search_spaces_parse(name: str) -> None:
    space = load_search_space(REPO / "ml" / "search_spaces" / name)
    domains = to_tune_space(space)
    assert set(domains) == set(space)


def test_search_space_to_tune_domains() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    domains = to_tune_space(
        {
            "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
            "hidden_size": {"type": "choice", "values": [32, 64, 128]},
            "num_layers": {"type": "randint", "low": 1, "high": 4},
            "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
            "activation": "gelu",
        }
    )
    assert isinstance(domains["lr"], Float) and isinstance(domains["dropout"], Float)
    assert isinstance(domains["hidden_size"], Categorical) and domains["hidden_size"].categories == [32, 64, 128]
    assert isinstance(domains["num_layers"], Integer)
    assert (domains["num_layers"].lower, domains["num_layers"].upper) == (1, 4)
    assert domains["activation"] == "gelu"


@pytest.mark.parametrize(
    "space,key,fragment",
    [
        ({"learning_rate": {"type": "uniform", "low": 0, "high": 1}}, "learning_rate", "not a hyper-parameter"),
        ({"lr": {"type": "normal", "low": 0.1, "high": 1}}, "lr", "type 'normal'"),
        ({"lr": {"type": "loguniform", "low": 0.1}}, "lr", "missing \\['high'\\]"),
        ({"lr": {"type": "loguniform", "low": 0.1, "high": 1, "base": 2}}, "lr", "unexpected \\['base'\\]"),
        ({"lr": {"type": "loguniform", "low": 0.0, "high": 1}}, "lr", "must be > 0"),
        ({"dropout": {"type": "uniform", "low": 0.5, "high": 0.1}}, "dropout", "must be below high"),
        ({"dropout": {"type": "uniform", "low": 0.0, "high": 1.5}}, "dropout", "1.5"),
        ({"hidden_size": {"type": "choice", "values": []}}, "hidden_size", "non-empty list"),
        ({"hidden_size": {"type": "uniform", "low": 8, "high": 64}}, "hidden_size", "integer hyper-parameter"),
        ({"hidden_size": {"type": "choice", "values": [32, "64"]}}, "hidden_size", "'64'"),
        ({"norm": {"type": "choice", "values": ["batch", "group"]}}, "norm", "'group'"),
        ({"activation": {"type": "uniform", "low": 0, "high": 1}}, "activation", "categorical"),
        ({"num_layers": {"type": "randint", "low": 1.5, "high": 4}}, "num_layers", "1.5"),
        ({"lr": "fast"}, "lr", "'fast'"),
    ],
)
def test_bad_search_space_entries_name_the_key(space: dict, key: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as caught:
        validate_search_space(space)
    assert repr(key) in str(caught.value)


def test_search_space_must_be_a_mapping() -> None:
    for bad in ([], {}, "lr"):
        with pytest.raises(ValueError, match="non-empty mapping"):
            validate_search_space(bad)


def test_search_space_from_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text("lr:\n  type: loguniform\n  low: 0.001\n  high: 0.1\nnum_layers: 2\n")
    (tmp_path / "space.json").write_text(
        json.dumps({"num_layers": 2, "lr": {"type": "loguniform", "low": 0.001, "high": 0.1}})
    )
    from_yaml = load_search_space(tmp_path / "space.yaml")
    assert from_yaml == {"lr": {"type": "loguniform", "low": 0.001, "high": 0.1}, "num_layers": 2}
    # Key order and bare constants do not change the fingerprint; a different range does.
    assert search_space_hash(from_yaml) == search_space_hash(load_search_space(tmp_path / "space.json"))
    assert search_space_hash(from_yaml) != search_space_hash({**from_yaml, "num_layers": 3})
    (tmp_path / "bad.yaml").write_text("lr:\n  type: loguniform\n  low: -1\n  high: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: search space 'lr'"):
        load_search_space(tmp_path / "bad.yaml")


def test_search_space_from_any_param_form(tmp_path: Path) -> None:
    from ml.tune import default_search_space, resolve_search_space

    default = default_search_space()
    assert resolve_search_space(None) == resolve_search_space("null") == resolve_search_space("default") == default
    assert resolve_search_space({"lr": 0.01}) == {"lr": 0.01}
    assert resolve_search_space('{"num_layers": {"type": "randint", "low": 1, "high": 3}}') == {
        "num_layers": {"type": "randint", "low": 1, "high": 3}
    }
    assert set(resolve_search_space("small")) >= {"lr", "hidden_size"}
    (tmp_path / "s.yaml").write_text("dropout: 0.1\n")
    assert resolve_search_space(str(tmp_path / "s.yaml")) == {"dropout": 0.1}
    with pytest.raises(ValueError, match="neither JSON"):
        resolve_search_space("no-such-space")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_search_space("{lr: 1}")
    config = SearchConfig.create(dataset="d", snapshot_id="s", run_name="r", search_space=None, num_samples=3)
    assert config.search_space == default and config.num_samples == 3


def test_run_names_are_sanitised() -> None:
    assert sanitize_run_name("manual__2024-05-01T10:00:00+00:00") == "manual__2024-05-01T10-00-00-00-00"
    assert sanitize_run_name("scheduled__x/y z") == "scheduled__x-y-z"
    with pytest.raises(ValueError):
        sanitize_run_name("::")


def test_search_config_objective_defaults_and_checks() -> None:
    config = SearchConfig(dataset="d", snapshot_id="s", run_name="manual__a:b", search_space={"lr": 0.01})
    assert config.run_name == "manual__a-b"
    assert config.objective("classification") == ("val_loss", "min")
    assert config.objective("regression") == ("val_loss", "min")
    assert SearchConfig("d", "s", "r", {"lr": 0.01}, metric="val_accuracy").objective("classification") == (
        "val_accuracy",
        "max",
    )
    with pytest.raises(ValueError, match="val_accuracy"):
        SearchConfig("d", "s", "r", {"lr": 0.01}, metric="val_accuracy").objective("regression")
    with pytest.raises(ValueError, match="num_samples"):
        SearchConfig("d", "s", "r", {"lr": 0.01}, num_samples=0)
    assert SearchConfig("d", "s", "r", {"lr": 0.01}, max_epochs=12).resolved_grace_period == 3
    assert str(config.experiment_uri).endswith("/tune/d/s/manual__a-b")


# -- Tune callbacks


class FakePublisher:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict, str]] = []
        self.closed = False

    def publish(self, topic: Any, payload: dict, key: str) -> None:
        self.messages.append((topic.name, payload, key))

    def close(self, timeout_s: float = 30.0) -> dict:
        self.closed = True
        return {"sent": len(self.messages)}


def test_kafka_metrics_callback_publishes_one_message_per_trial_epoch() -> None:
    from ml.topics import TRAINING_METRICS
    from ml.tune import KafkaMetricsCallback

    publisher = FakePublisher()
    callback = KafkaMetricsCallback("run-1", dag_run_id="dag-1", publisher_factory=lambda servers, dag: publisher)
    callback.setup()
    trial = SimpleNamespace(
        trial_id="abc123", config={"lr": 0.01, "hidden_size": 32, "metric": "val_loss", "max_epochs": 3}
    )
    for epoch in (1, 2):
        result = {
            "epoch": epoch,
            "train_loss": 0.5,
            "val_loss": float("nan"),
            "val_accuracy": 0.9,
            "pid": 123,
            "time_total_s": 1.0,
            "training_iteration": epoch,
            "done": False,
        }
        callback.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result=result)
    callback.on_experiment_end(trials=[trial])

    assert publisher.closed
    assert [key for _, _, key in publisher.messages] == ["run-1:abc123:1", "run-1:abc123:2"]
    topic, payload, _ = publisher.messages[0]
    assert topic == TRAINING_METRICS.name
    assert payload == {
        "run_name": "run-1",
        "trial_id": "abc123",
        "epoch": 1,
        "metrics": {"train_loss": 0.5, "val_loss": None, "val_accuracy": 0.9},
        "params": {"lr": 0.01, "hidden_size": 32},
    }
    # Tune pickles callbacks into the experiment: the live publisher must not travel with it.
    saved = KafkaMetricsCallback("run-1", dag_run_id="dag-1")
    saved._publisher = FakePublisher()  # as after setup()
    restored = pickle.loads(pickle.dumps(saved))
    assert type(restored) is KafkaMetricsCallback and restored._publisher is None and restored.run_name == "run-1"


def test_kafka_payload_matches_the_topic_schema() -> None:
    from ml.events import make_envelope, validate_envelope
    from ml.topics import TRAINING_METRICS
    from ml.tune import KafkaMetricsCallback

    callback = KafkaMetricsCallback("run-1")
    trial = SimpleNamespace(trial_id="abc123", config={"lr": 0.01, "norm": "batch"})
    payload, key = callback.message(trial, {"epoch": 2, "val_loss": 0.3, "val_r2": float("inf")})
    validate_envelope(make_envelope(TRAINING_METRICS, payload, "dag-1"), TRAINING_METRICS)
    assert key == "run-1:abc123:2"


def test_result_metrics_keeps_our_metrics_only() -> None:
    assert result_metrics(
        {
            "train_loss": 1,
            "val_rmse": 2.5,
            "epoch_time_s": 0.1,
            "time_total_s": 3.0,
            "pid": 1,
            "val_flag": True,
            "hostname": "h",
        }
    ) == {"train_loss": 1.0, "val_rmse": 2.5, "epoch_time_s": 0.1}


# -- evaluation helpers


def test_baselines_use_training_labels_only() -> None:
    predictions, probabilities = baseline_predictions("classification", np.array([0, 2, 2, 1, 2]), 3, num_classes=3)
    assert predictions.tolist() == [2, 2, 2]
    assert probabilities is not None and np.allclose(probabilities[0], [0.2, 0.2, 0.6])
    values, none = baseline_predictions("regression", np.array([1.0, 2.0, 6.0]), 2)
    assert values.tolist() == [3.0, 3.0] and none is None


def test_primary_metric_follows_the_objective() -> None:
    assert primary_metric("classification", "val_loss") == "log_loss"
    assert primary_metric("regression", "val_loss") == "rmse"
    assert primary_metric("classification", "val_accuracy") == "accuracy"


def test_ray_and_optuna_logs_go_through_the_logging_tree() -> None:
    """Under Airflow a line on stderr is an ERROR in the task log: library logs must keep their levels instead."""
    import logging

    import optuna

    from ml.tune import route_library_logs

    ray_logger = logging.getLogger("ray")
    before, propagated = list(ray_logger.handlers), ray_logger.propagate
    ray_logger.addHandler(logging.StreamHandler())  # what `import ray` installs (an earlier search may have removed it)
    ray_logger.propagate = False
    route_library_logs()
    try:
        assert ray_logger.propagate and not any(
            isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in ray_logger.handlers
        )
        optuna_logger = logging.getLogger("optuna")
        assert optuna_logger.propagate and not optuna_logger.handlers
    finally:
        ray_logger.handlers[:] = before
        ray_logger.propagate = propagated
        optuna.logging.enable_default_handler()
        optuna.logging.disable_propagation()
