"""ml.models: shapes per task and hyper-parameters, metric names, checkpoints that load tensors only."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.models import (
    ModelConfig,
    base_metric_name,
    build_model,
    higher_is_better,
    is_improvement,
    load_model,
    load_model_config,
    loss_fn,
    metric_mode,
    metric_names,
    predict,
    save_checkpoint,
)


@pytest.mark.parametrize("task,output_dim", [("classification", 2), ("classification", 3), ("regression", 1)])
@pytest.mark.parametrize("num_layers", [0, 1, 3])
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_output_shapes(task: str, output_dim: int, num_layers: int, norm: str, activation: str) -> None:
    config = ModelConfig(
        input_dim=7,
        output_dim=output_dim,
        task=task,
        num_layers=num_layers,
        hidden_size=16,
        dropout=0.1,
        norm=norm,
        activation=activation,
    )
    model = build_model(config)
    out = model(torch.randn(5, 7))
    assert out.shape == ((5, output_dim) if task == "classification" else (5,))
    loss = loss_fn(config, out, torch.zeros(5) if task == "regression" else torch.zeros(5, dtype=torch.long))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_architecture_follows_hyper_parameters() -> None:
    config = ModelConfig(
        input_dim=4,
        output_dim=3,
        task="classification",
        num_layers=2,
        hidden_size=8,
        dropout=0.2,
        norm="layer",
        activation="gelu",
    )
    kinds = [type(m).__name__ for m in build_model(config).body]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Dropout"] * 2
    linear = ModelConfig(input_dim=4, output_dim=2, task="classification", num_layers=0)
    assert sum(p.numel() for p in build_model(linear).parameters()) == 4 * 2 + 2


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"task": "ranking"}, "task"),
        ({"output_dim": 1}, "output_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"norm": "group"}, "norm"),
        ({"activation": "tanh"}, "activation"),
        ({"num_layers": -1}, "num_layers"),
        ({"hidden_size": 0}, "hidden_size"),
    ],
)
def test_invalid_config_names_the_field(changes: dict, fragment: str) -> None:
    values = {"input_dim": 3, "output_dim": 2, "task": "classification", **changes}
    with pytest.raises(ValueError, match=fragment):
        ModelConfig(**values)


def test_config_round_trip_and_unknown_keys() -> None:
    config = ModelConfig(input_dim=3, output_dim=1, task="regression", num_layers=1, target_mean=5.0, target_std=2.0)
    assert ModelConfig.from_dict(config.to_dict()) == config
    # Tune and JSON hand back floats / numpy scalars for integers.
    assert ModelConfig.from_dict({**config.to_dict(), "hidden_size": np.int64(64), "num_layers": 1.0}) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**config.to_dict(), "depth": 3})


def test_higher_is_better_and_modes() -> None:
    assert higher_is_better("val_accuracy") and higher_is_better("test_roc_auc") and higher_is_better("r2")
    assert not higher_is_better("val_loss") and not higher_is_better("rmse") and not higher_is_better("test_log_loss")
    assert metric_mode("val_f1_macro") == "max" and metric_mode("val_mae") == "min"
    with pytest.raises(ValueError, match="unknown metric"):
        higher_is_better("val_banana")
    assert is_improvement(0.5, None, "min") and is_improvement(0.4, 0.5, "min") and not is_improvement(0.5, 0.5, "min")
    assert is_improvement(0.6, 0.5, "max") and not is_improvement(math.nan, 0.5, "max")
    assert not is_improvement(0.51, 0.5, "max", min_delta=0.05)


def test_metric_names_per_task_and_split_prefixes() -> None:
    assert metric_names("classification") == ("loss", "accuracy", "f1_macro", "roc_auc", "log_loss")
    assert metric_names("regression") == ("loss", "rmse", "mae", "r2")
    for name in ("val_rmse", "validation_rmse", "test_rmse", "baseline_test_rmse", "train_rmse", "rmse"):
        assert base_metric_name(name) == "rmse", name
    assert base_metric_name("baseline_test_accuracy") == "accuracy"  # the longer prefix, not "test_"


def test_predict_returns_labels_and_probabilities() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_dim=4, output_dim=3, task="classification", norm="batch", dropout=0.5))
    X = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    labels, probabilities = predict(model, X)
    assert labels.shape == (10,) and probabilities is not None and probabilities.shape == (10, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (labels == probabilities.argmax(axis=1)).all()
    # Eval mode: dropout off and batch norm on running statistics, so a prediction is deterministic.
    assert np.array_equal(predict(model, X)[1], probabilities)
    assert model.training  # predict restores the mode it found


def test_predict_leaves_a_model_in_eval_mode_without_walking_its_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's model stays in eval mode: predict must not toggle it per request (train() walks every module)."""
    model = build_model(ModelConfig(input_dim=4, output_dim=3, task="classification", dropout=0.5)).eval()
    calls: list[bool] = []
    monkeypatch.setattr(type(model), "train", lambda self, mode=True: calls.append(mode) or self)
    predict(model, np.zeros((2, 4), np.float32))
    assert calls == [] and not model.training


def test_regression_output_is_in_target_units() -> None:
    config = ModelConfig(input_dim=2, output_dim=1, task="regression", num_layers=0, target_mean=100.0, target_std=20.0)
    model = build_model(config)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(0.5)
    values, probabilities = predict(model, np.zeros((3, 2), dtype=np.float32))
    assert probabilities is None
    assert np.allclose(values, 100.0 + 20.0 * 0.5)
    # The loss is on standardised values: an error of one std costs 1.
    assert float(loss_fn(config, torch.tensor([120.0]), torch.tensor([100.0]))) == pytest.approx(1.0)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = ModelConfig(input_dim=5, output_dim=2, task="classification", num_layers=2, norm="batch")
    model = build_model(config)
    model(torch.randn(16, 5))  # moves the batch-norm running statistics away from their defaults
    save_checkpoint(model, config, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model_config.json", "model_state.pt"]
    loaded = load_model(tmp_path / "ckpt")
    assert not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    X = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32)
    assert np.array_equal(predict(model, X)[1], predict(loaded, X)[1])
    assert load_model_config(tmp_path / "ckpt") == config


def test_predict_on_no_rows() -> None:
    model = build_model(ModelConfig(input_dim=3, output_dim=1, task="regression", num_layers=1))
    values, probabilities = predict(model, np.zeros((0, 3), dtype=np.float32))
    assert values.shape == (0,) and probabilities is None


class _Payload:
    """An object whose unpickling would run code: a checkpoint must never be able to do that."""

    def __reduce__(self) -> tuple:
        return (print, ("unpickled code ran",))


def test_load_model_refuses_pickled_code(tmp_path: Path) -> None:
    config = ModelConfig(input_dim=2, output_dim=2, task="classification", num_layers=0)
    save_checkpoint(build_model(config), config, tmp_path)
    state = torch.load(tmp_path / "model_state.pt", weights_only=True)
    state["extra"] = _Payload()
    torch.save(state, tmp_path / "model_state.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_model(tmp_path)
