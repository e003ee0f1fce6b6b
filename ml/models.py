"""The model family for tabular features, its losses and metric names, and checkpoints that never unpickle code.

The metrics themselves are computed in `ml.metrics`.

An MLP: `num_layers` hidden blocks of Linear -> normalisation -> activation -> dropout, then a Linear head.
  classification: `output_dim` logits (two for a binary task), cross-entropy loss.
  regression:     one output in the target's own units; the head's output passes through a fixed affine map fitted on
                  the training labels (`target_mean`, `target_std`), so that the network learns a standardised target
                  and serving needs no extra step. The loss is the MSE of standardised values.

A checkpoint is a directory: `model_state.pt` (`torch.save(model.state_dict())`) and `model_config.json`.
`load_model` reads it with `torch.load(..., weights_only=True)`: tensors only, never pickled code.

torch is imported inside functions (and at class-definition time inside `_module_classes`) so that importing this
module stays cheap for the CLI and the DAG processor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
NORMS = ("none", "batch", "layer")
ACTIVATIONS = ("relu", "gelu", "silu")

MODEL_STATE_FILE = "model_state.pt"
MODEL_CONFIG_FILE = "model_config.json"

# Metric names per task (without a split prefix such as "val_" or "test_"). "loss" is the training objective.
CLASSIFICATION_METRICS = ("loss", "accuracy", "f1_macro", "roc_auc", "log_loss")
REGRESSION_METRICS = ("loss", "rmse", "mae", "r2")
_HIGHER_IS_BETTER = {
    "accuracy": True,
    "f1_macro": True,
    "roc_auc": True,
    "r2": True,
    "loss": False,
    "log_loss": False,
    "rmse": False,
    "mae": False,
}
_SPLIT_PREFIXES = ("train_", "val_", "validation_", "test_", "baseline_test_")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: shapes, task and architecture hyper-parameters."""

    input_dim: int
    output_dim: int
    task: str
    num_layers: int = 2  # hidden blocks; 0 gives a linear (logistic) model
    hidden_size: int = 64
    dropout: float = 0.0
    norm: str = "none"
    activation: str = "relu"
    target_mean: float = 0.0  # regression: the training labels' mean and std (identity for classification)
    target_std: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {TASKS}")
        if self.input_dim < 1:
            problems.append(f"input_dim must be >= 1, got {self.input_dim}")
        if self.task == CLASSIFICATION and self.output_dim < 2:
            problems.append(f"classification needs output_dim >= 2 (one logit per class), got {self.output_dim}")
        if self.task == REGRESSION and self.output_dim != 1:
            problems.append(f"regression needs output_dim 1, got {self.output_dim}")
        if self.num_layers < 0:
            problems.append(f"num_layers must be >= 0, got {self.num_layers}")
        if self.hidden_size < 1:
            problems.append(f"hidden_size must be >= 1, got {self.hidden_size}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            problems.append(f"norm {self.norm!r} is not one of {NORMS}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if not (math.isfinite(self.target_std) and self.target_std > 0):
            problems.append(f"target_std must be a positive number, got {self.target_std}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a dict; unknown keys are an error (they would be silently lost otherwise)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        typed: dict[str, Any] = {}
        for key, value in data.items():
            # JSON and Tune hand back numpy scalars or floats for ints; normalise so equality and hashing work.
            if key in ("input_dim", "output_dim", "num_layers", "hidden_size"):
                typed[key] = int(value)
            elif key in ("dropout", "target_mean", "target_std"):
                typed[key] = float(value)
            else:
                typed[key] = value
        return cls(**typed)


@cache
def _module_classes() -> dict[str, Any]:
    """Define the nn.Module classes on first use, so that importing ml.models does not import torch."""
    import torch
    from torch import nn

    class TabularMLP(nn.Module):
        def __init__(self, config: ModelConfig) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            width = config.input_dim
            for _ in range(config.num_layers):
                layers.append(nn.Linear(width, config.hidden_size))
                if config.norm == "batch":
                    layers.append(nn.BatchNorm1d(config.hidden_size))
                elif config.norm == "layer":
                    layers.append(nn.LayerNorm(config.hidden_size))
                layers.append({"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[config.activation]())
                if config.dropout > 0:
                    layers.append(nn.Dropout(config.dropout))
                width = config.hidden_size
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(width, config.output_dim)
            self.task = config.task
            # Buffers, not parameters: saved in the state dict, never trained.
            self.register_buffer("target_mean", torch.tensor(float(config.target_mean)))
            self.register_buffer("target_std", torch.tensor(float(config.target_std)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.head(self.body(x))
            if self.task == REGRESSION:
                return out.squeeze(-1) * self.target_std + self.target_mean
            return out

    return {"TabularMLP": TabularMLP}


def build_model(config: ModelConfig) -> nn.Module:
    """A fresh, randomly initialised model (seed torch first for a reproducible initialisation)."""
    model: nn.Module = _module_classes()["TabularMLP"](config)
    return model


def loss_fn(config: ModelConfig, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training objective: cross-entropy on logits, or the MSE of standardised regression values."""
    from torch.nn import functional

    if config.task == CLASSIFICATION:
        return functional.cross_entropy(output, target.long())
    # (out - y) / std: the same gradients as training on a standardised target, whatever the label's units.
    return functional.mse_loss(output / config.target_std, target / config.target_std)


def predict(
    model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 65536
) -> tuple[np.ndarray, np.ndarray | None]:
    """Inference in eval mode: (class indices, float64 class probabilities) or (float64 values, None). Batched, each
    batch's outputs written into the result, so that memory holds the result and one batch."""
    import torch

    features = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
    rows = features.shape[0]
    task = getattr(model, "task", None)
    result: np.ndarray | None = None
    # Toggle the mode only when it must change: `train()`/`eval()` walk every submodule (~50 us a call for a small
    # MLP, a quarter of a single-row request's time in the service, whose model stays in eval mode).
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, rows, batch_size):
                out = model(features[start : start + batch_size])
                if result is None:
                    task = task or (REGRESSION if out.ndim == 1 else CLASSIFICATION)
                    result = np.empty((rows, *out.shape[1:]) if task == CLASSIFICATION else rows, np.float64)
                if task == CLASSIFICATION:
                    out = torch.softmax(out, dim=-1)
                result[start : start + out.shape[0]] = out.numpy()
    finally:
        if was_training:
            model.train()
    if task == CLASSIFICATION and result is not None:
        return result.argmax(axis=1), result
    return (np.empty(0) if result is None else result), None


def metric_names(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == CLASSIFICATION else REGRESSION_METRICS


def base_metric_name(name: str) -> str:
    """'val_accuracy' -> 'accuracy' (drops a split prefix)."""
    for prefix in _SPLIT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of this metric (with or without a split prefix) is better; unknown names raise."""
    base = base_metric_name(metric)
    if base not in _HIGHER_IS_BETTER:
        raise ValueError(
            f"unknown metric {metric!r}: expected one of {sorted(_HIGHER_IS_BETTER)} with an optional "
            f"prefix {_SPLIT_PREFIXES}"
        )
    return _HIGHER_IS_BETTER[base]


def metric_mode(metric: str) -> str:
    """Ray Tune's mode for a metric: 'max' or 'min'."""
    return "max" if higher_is_better(metric) else "min"


def is_improvement(new: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """True when `new` beats `best` by more than `min_delta` in the given mode (NaN never improves)."""
    if new is None or not math.isfinite(new):
        return False
    if best is None or not math.isfinite(best):
        return True
    return new > best + min_delta if mode == "max" else new < best - min_delta


def save_checkpoint(model: nn.Module, config: ModelConfig, directory: str | Path) -> Path:
    """Write `model_state.pt` and `model_config.json` into `directory` (created if missing)."""
    import torch

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / MODEL_STATE_FILE)
    (path / MODEL_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    return path


def load_model_config(directory: str | Path) -> ModelConfig:
    return ModelConfig.from_dict(json.loads((Path(directory) / MODEL_CONFIG_FILE).read_text()))


def load_model(directory: str | Path) -> nn.Module:
    """Rebuild the model from a checkpoint directory, in eval mode. Loads tensors only (`weights_only=True`)."""
    import torch

    path = Path(directory)
    config = load_model_config(path)
    model = build_model(config)
    state = torch.load(path / MODEL_STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model
