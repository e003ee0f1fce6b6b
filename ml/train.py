"""The training loop: seeded, per-epoch validation, early stopping, a checkpoint per epoch, resumable.

`train_model` is a plain function (evaluation, tests and benchmarks call it directly); `tune_trainable` wraps it as a
Ray Tune function trainable that reports each epoch's metrics with a checkpoint (`ray.tune.report(metrics,
checkpoint=ray.tune.Checkpoint.from_directory(dir))`) and resumes from `ray.tune.get_checkpoint()` after a restore.

A checkpoint directory holds the model checkpoint of `ml.models` (`model_state.pt`, `model_config.json`) plus
`training_state.pt` (optimizer, epoch, early-stopping counters, RNG states: tensors and numbers only, loaded with
`weights_only=True`) and `metrics.json` (that epoch's metrics), so a resumed trial continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.data import SplitArrays, TensorBatches, TrainingData, to_tensors
from ml.features import FeatureSpec
from ml.json_values import json_safe
from ml.models import (
    CLASSIFICATION,
    ModelConfig,
    build_model,
    compute_metrics,
    is_improvement,
    load_model_config,
    loss_fn,
    metric_names,
    save_checkpoint,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

TRAINING_STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.json"

# Hyper-parameters a search space may name, split by what they configure.
MODEL_HPARAMS = ("num_layers", "hidden_size", "dropout", "norm", "activation")
TRAIN_HPARAMS = ("lr", "weight_decay", "batch_size")
HPARAMS = MODEL_HPARAMS + TRAIN_HPARAMS

# The default objective per task: the validation loss (cross-entropy, or the MSE of standardised values). Smooth and
# defined from the first epoch, which suits ASHA's early comparisons better than accuracy on a small validation split.
DEFAULT_METRIC = "val_loss"
DEFAULT_MODE = "min"

ReportFn = Callable[[dict[str, Any], Path], None]


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


@dataclass
class TrainResult:
    """The outcome of `train_model`: the best epoch's weights loaded into `model`, and every epoch's metrics."""

    model: Any  # nn.Module
    model_config: ModelConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    diverged: bool = False


def seed_everything(seed: int) -> None:
    """Seed every RNG a trial touches (Python, numpy, torch), so that a trial is reproducible."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    mean = float(np.mean(y, dtype=np.float64))
    std = float(np.std(y, dtype=np.float64))
    return mean, (std if std > 0 and math.isfinite(std) else 1.0)


def evaluate_split(
    model: nn.Module, config: ModelConfig, split: SplitArrays, prefix: str = "val_", batch_size: int = 65536
) -> dict[str, float]:
    """Loss and task metrics on a split, in eval mode, names prefixed (e.g. `val_loss`, `val_accuracy`)."""
    import torch

    X, y = to_tensors(split)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = torch.cat([model(X[s : s + batch_size]) for s in range(0, X.shape[0], batch_size)])
            loss = float(loss_fn(config, out, y))
    finally:
        model.train(was_training)
    if not bool(torch.isfinite(out).all()):
        # A diverged model's outputs are no predictions (scikit-learn refuses NaN): every task metric is undefined,
        # so the epoch never counts as an improvement and the loop stops on the diverged loss or on patience.
        undefined = {f"{prefix}{name}": math.nan for name in metric_names(config.task) if name != "loss"}
        return {f"{prefix}loss": loss, **undefined}
    if config.task == CLASSIFICATION:
        probabilities = torch.softmax(out, dim=-1).double().numpy()
        metrics = compute_metrics(
            config.task, split.y, probabilities.argmax(axis=1), probabilities, num_classes=config.output_dim
        )
    else:
        metrics = compute_metrics(config.task, split.y, out.double().numpy())
    return {f"{prefix}loss": loss, **{f"{prefix}{name}": value for name, value in metrics.items()}}


def train_model(
    data: TrainingData,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    report: ReportFn | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train with per-epoch validation and early stopping on `train_config.metric`.

    `report(metrics, checkpoint_dir)` is called after every epoch with a directory holding that epoch's checkpoint
    (valid only during the call). `resume_from` is such a directory: training continues after its epoch with the
    same optimizer, RNG and early-stopping state.
    """
    import torch

    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    seed_everything(train_config.seed)
    model = build_model(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    shuffle = torch.Generator().manual_seed(train_config.seed)

    X, y = to_tensors(data.train)
    batches = TensorBatches(X, y, train_config.batch_size, generator=shuffle)
    state = _LoopState()
    if resume_from is not None:
        state = _load_training_state(Path(resume_from), model, optimizer, shuffle, model_config)
        log.info(
            "resuming after epoch %d (best %s=%s at epoch %d)",
            state.epoch,
            train_config.metric,
            state.best_score,
            state.best_epoch,
        )

    result = TrainResult(model=model, model_config=model_config, history=list(state.history))
    best_weights: dict[str, torch.Tensor] | None = None
    for epoch in range(state.epoch + 1, train_config.max_epochs + 1):
        started = time.perf_counter()
        train_loss, diverged = _train_one_epoch(model, model_config, optimizer, batches)
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        metrics.update(evaluate_split(model, model_config, data.validation))
        metrics["epoch_time_s"] = time.perf_counter() - started

        score = metrics.get(train_config.metric, math.nan)
        if is_improvement(score, state.best_score, train_config.mode, train_config.min_delta):
            state.best_score, state.best_epoch, state.bad_epochs = float(score), epoch, 0
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        state.history.append(metrics)
        stop = diverged or state.bad_epochs >= train_config.patience

        if report is not None:
            with tempfile.TemporaryDirectory(prefix="ckpt-") as directory:
                _save_training_state(Path(directory), model, model_config, optimizer, shuffle, state, metrics)
                report(metrics, Path(directory))
        if stop:
            result.stopped_early = not diverged
            result.diverged = diverged
            log.info(
                "stopping after epoch %d: %s",
                epoch,
                "loss is not finite"
                if diverged
                else f"no improvement of {train_config.metric} for {state.bad_epochs} epochs",
            )
            break

    if best_weights is not None:
        model.load_state_dict(best_weights)
    model.eval()
    result.history = state.history
    result.best_epoch = state.best_epoch
    result.best_metrics = next((m for m in state.history if m["epoch"] == state.best_epoch), {})
    return result


def _train_one_epoch(
    model: nn.Module, config: ModelConfig, optimizer: Any, batches: TensorBatches
) -> tuple[float, bool]:
    """One pass over the shuffled batches; returns the mean training loss and whether it diverged."""
    model.train()
    total, rows = 0.0, 0
    for xb, yb in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(config, model(xb), yb)
        value = float(loss.detach())
        if not math.isfinite(value):
            return math.nan, True
        loss.backward()
        optimizer.step()
        total += value * xb.shape[0]
        rows += xb.shape[0]
    return (total / rows if rows else math.nan), False


@dataclass
class _LoopState:
    epoch: int = 0
    best_score: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _save_training_state(
    directory: Path,
    model: nn.Module,
    config: ModelConfig,
    optimizer: Any,
    shuffle: torch.Generator,
    state: _LoopState,
    metrics: dict[str, Any],
) -> None:
    import torch

    save_checkpoint(model, config, directory)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "epoch": state.epoch,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": shuffle.get_state(),
        },
        directory / TRAINING_STATE_FILE,
    )
    (directory / METRICS_FILE).write_text(
        json.dumps({"metrics": json_safe(metrics), "history": json_safe(state.history)}, indent=2, sort_keys=True)
    )


def _load_training_state(
    directory: Path, model: nn.Module, optimizer: Any, shuffle: torch.Generator, config: ModelConfig
) -> _LoopState:
    import torch

    from ml.models import MODEL_STATE_FILE

    saved_config = load_model_config(directory)
    if saved_config != config:
        raise ValueError(f"{directory}: checkpoint is for {saved_config}, not {config}")
    model.load_state_dict(torch.load(directory / MODEL_STATE_FILE, map_location="cpu", weights_only=True))
    saved = torch.load(directory / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    shuffle.set_state(saved["shuffle_rng"])
    history: list[dict[str, Any]] = []
    metrics_file = directory / METRICS_FILE
    if metrics_file.exists():
        history = json.loads(metrics_file.read_text()).get("history", [])
    return _LoopState(
        epoch=int(saved["epoch"]),
        best_score=saved["best_score"],
        best_epoch=int(saved["best_epoch"]),
        bad_epochs=int(saved["bad_epochs"]),
        history=history,
    )


def tune_trainable(config: dict[str, Any], data: TrainingData) -> None:
    """Ray Tune function trainable: one trial. `data` arrives through `tune.with_parameters` (object store)."""
    from ray import tune

    # Ray Train logs "Checkpoint successfully created" at INFO for every epoch; forwarded to the driver's stderr it
    # shows as an ERROR line in an Airflow task log. Warnings and errors still come through.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    mean, std = target_stats(data.spec, data.train.y)
    model_config, train_config = configs_from_trial(config, data.spec, target_mean=mean, target_std=std)

    def report(metrics: dict[str, Any], directory: Path) -> None:
        # Tune copies the directory to the run's storage (S3) inside report(), before the directory is removed.
        tune.report(
            {k: v for k, v in metrics.items() if isinstance(v, int | float)},
            checkpoint=tune.Checkpoint.from_directory(str(directory)),
        )

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train_model(data, model_config, train_config, report=report)
        return
    with tempfile.TemporaryDirectory(prefix="resume-") as local:
        # as_directory() downloads from storage (or shares a local copy): take our own copy of the few small files.
        with checkpoint.as_directory() as directory:
            for item in Path(directory).iterdir():
                if item.is_file():
                    (Path(local) / item.name).write_bytes(item.read_bytes())
        train_model(data, model_config, train_config, report=report, resume_from=local)


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of a trial config (what MLflow and Kafka record as params)."""
    return {k: json_safe(config[k]) for k in HPARAMS if k in config}
