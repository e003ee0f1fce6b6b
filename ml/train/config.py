"""What a training run is asked to do: the hyper-parameters a search may name, the optimiser's settings
(`TrainConfig`), and the split of a flat trial config into the model's and the optimiser's configs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ml.data import StreamingData, TrainingData
from ml.features import FeatureSpec
from ml.json_values import json_safe
from ml.models import CLASSIFICATION, ModelConfig

# Hyper-parameters a search space may name, split by what they configure.
MODEL_HPARAMS = ("num_layers", "hidden_size", "dropout", "norm", "activation")
TRAIN_HPARAMS = ("lr", "weight_decay", "batch_size")
HPARAMS = MODEL_HPARAMS + TRAIN_HPARAMS

# The default objective per task: the validation loss (cross-entropy, or the MSE of standardised values). Smooth and
# defined from the first epoch, which suits ASHA's early comparisons better than accuracy on a small validation split.
DEFAULT_METRIC = "val_loss"
DEFAULT_MODE = "min"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one run (`metric`/`mode` drive early stopping)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 20
    patience: int = 5
    min_delta: float = 0.0
    seed: int = 0
    metric: str = DEFAULT_METRIC
    mode: str = DEFAULT_MODE
    threads: int | None = None  # torch intra-op threads; None leaves torch's default

    def __post_init__(self) -> None:
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError(
                f"batch_size, max_epochs and patience must be >= 1, got {self.batch_size}, "
                f"{self.max_epochs}, {self.patience}"
            )
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")


def configs_from_trial(
    config: Mapping[str, Any],
    spec: FeatureSpec | None = None,
    *,
    input_dim: int | None = None,
    output_dim: int | None = None,
    task: str | None = None,
    target_mean: float = 0.0,
    target_std: float = 1.0,
) -> tuple[ModelConfig, TrainConfig]:
    """Split a flat trial config (hyper-parameters + constants) into the model's and the optimiser's configs."""
    if spec is not None:
        input_dim = input_dim or len(spec.feature_columns)
        output_dim = output_dim or spec.num_outputs
        task = task or spec.task
    if input_dim is None or output_dim is None or task is None:
        raise ValueError("configs_from_trial needs a feature spec or input_dim, output_dim and task")
    model_keys = {f.name for f in fields(ModelConfig)} - {"input_dim", "output_dim", "task"}
    train_keys = {f.name for f in fields(TrainConfig)}
    model_config = ModelConfig.from_dict(
        {
            "input_dim": input_dim,
            "output_dim": output_dim,
            "task": task,
            "target_mean": target_mean,
            "target_std": target_std,
            **{k: v for k, v in config.items() if k in model_keys},
        }
    )
    train_values = {k: v for k, v in config.items() if k in train_keys}
    for key in ("batch_size", "max_epochs", "patience", "seed"):
        if key in train_values:
            train_values[key] = int(train_values[key])
    for key in ("lr", "weight_decay", "min_delta"):
        if key in train_values:
            train_values[key] = float(train_values[key])
    return model_config, TrainConfig(**train_values)


def target_stats(spec: FeatureSpec, y: np.ndarray) -> tuple[float, float]:
    """Regression: the training labels' mean and std (std 1 when constant); classification: identity."""
    if spec.task == CLASSIFICATION or len(y) == 0:
        return 0.0, 1.0
    return _standardisation(float(np.mean(y, dtype=np.float64)), float(np.std(y, dtype=np.float64)))


def training_target_stats(data: TrainingData | StreamingData) -> tuple[float, float]:
    """`target_stats` of a trial's training labels, in memory or streamed (the driver's moments of them)."""
    if isinstance(data, StreamingData):
        if data.spec.task == CLASSIFICATION:
            return 0.0, 1.0
        return _standardisation(data.target_mean, data.target_std)
    return target_stats(data.spec, data.train.y)


def _standardisation(mean: float, std: float) -> tuple[float, float]:
    return mean, (std if std > 0 and math.isfinite(std) else 1.0)


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of a trial config (what MLflow and Kafka record as params)."""
    return {k: json_safe(config[k]) for k in HPARAMS if k in config}
