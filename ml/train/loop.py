"""The training loop: seeded, per-epoch validation, early stopping, a checkpoint per epoch, resumable, and the same
loop on every worker of a data-parallel group.

A group (`WorkerGroup`) says where this process sits: rank 0 of 1 for a plain run (`SINGLE`), or one worker of a
DDP group (ml.tune.parallel). Every worker trains on its own shard of each epoch's rows; rank 0 alone validates,
decides whether to stop, and writes the checkpoint; the others follow its decision (`agree`), so that every worker
runs the same number of epochs and batches (a DDP group whose workers disagree waits forever in an all-reduce).
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ml.data import SplitArrays, StreamedBatches, StreamingData, TensorBatches, TrainingData, to_tensors
from ml.metrics import compute_metrics
from ml.models import CLASSIFICATION, ModelConfig, build_model, is_improvement, loss_fn, metric_names
from ml.train.config import TrainConfig
from ml.train.state import LoopState, load_training_state, save_training_state

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# metrics, and the directory of that epoch's checkpoint (None on the workers other than rank 0, which write none).
ReportFn = Callable[[dict[str, Any], Path | None], None]


class WorkerGroup(Protocol):
    """This process's place in a data-parallel group."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def device(self) -> str: ...

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the optimiser steps through (DistributedDataParallel in a group; the model itself alone)."""
        ...

    def agree(self, stop: bool) -> bool:
        """Rank 0's decision, on every worker."""
        ...


@dataclass(frozen=True)
class SingleWorker:
    """A plain, single-process run: rank 0 of 1."""

    device: str = "cpu"
    rank: int = 0
    world_size: int = 1

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def agree(self, stop: bool) -> bool:
        return stop


SINGLE = SingleWorker()


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


def evaluate_split(
    model: nn.Module,
    config: ModelConfig,
    split: SplitArrays | Iterable[SplitArrays],
    prefix: str = "val_",
    batch_size: int = 65536,
    device: str = "cpu",
) -> dict[str, float]:
    """Loss and task metrics on a split (in memory, or its blocks in order), in eval mode, names prefixed (e.g.
    `val_loss`, `val_accuracy`). Only the model's outputs and the labels are kept, never the features."""
    import torch

    blocks = [split] if isinstance(split, SplitArrays) else split
    outputs: list[torch.Tensor] = []
    labels: list[np.ndarray] = []
    loss_sum, rows = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for block in blocks:
                X, y = to_tensors(block)
                for start in range(0, X.shape[0], batch_size):
                    out = model(X[start : start + batch_size].to(device)).cpu()
                    target = y[start : start + batch_size]
                    loss_sum += float(loss_fn(config, out, target)) * out.shape[0]
                    rows += out.shape[0]
                    outputs.append(out)
                labels.append(block.y)
    finally:
        model.train(was_training)
    out = torch.cat(outputs) if outputs else torch.empty(0, config.output_dim)
    y_true = np.concatenate(labels) if labels else np.empty(0)
    loss = loss_sum / rows if rows else math.nan
    if not bool(torch.isfinite(out).all()):
        # A diverged model's outputs are no predictions (the metrics refuse NaN): every task metric is undefined,
        # so the epoch never counts as an improvement and the loop stops on the diverged loss or on patience.
        undefined = {f"{prefix}{name}": math.nan for name in metric_names(config.task) if name != "loss"}
        return {f"{prefix}loss": loss, **undefined}
    if config.task == CLASSIFICATION:
        probabilities = torch.softmax(out, dim=-1).double().numpy()
        metrics = compute_metrics(
            config.task, y_true, probabilities.argmax(axis=1), probabilities, num_classes=config.output_dim
        )
    else:
        metrics = compute_metrics(config.task, y_true, out.double().numpy())
    return {f"{prefix}loss": loss, **{f"{prefix}{name}": value for name, value in metrics.items()}}


def train_model(
    data: TrainingData | StreamingData,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    report: ReportFn | None = None,
    resume_from: str | Path | None = None,
    group: WorkerGroup = SINGLE,
) -> TrainResult:
    """Train with per-epoch validation and early stopping on `train_config.metric`.

    `report(metrics, checkpoint_dir)` is called after every epoch with a directory holding that epoch's checkpoint
    (valid only during the call; None on workers other than rank 0). `resume_from` is such a directory: training
    continues after its epoch with the same optimizer, RNG and early-stopping state.
    """
    import torch

    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    seed_everything(train_config.seed)
    model = build_model(model_config).to(group.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    # The same seed on every worker: each epoch's permutation is shared, and each worker takes its own part of it.
    shuffle = torch.Generator().manual_seed(train_config.seed)
    batches = _training_batches(data, train_config, shuffle, group)
    state = LoopState()
    if resume_from is not None:
        state = load_training_state(Path(resume_from), model, optimizer, shuffle, model_config)
        log.info(
            "resuming after epoch %d (best %s=%s at epoch %d)",
            state.epoch,
            train_config.metric,
            state.best_score,
            state.best_epoch,
        )
    trained = group.wrap(model)
    validates = group.rank == 0

    result = TrainResult(model=model, model_config=model_config, history=list(state.history))
    best_weights: dict[str, torch.Tensor] | None = None
    for epoch in range(state.epoch + 1, train_config.max_epochs + 1):
        started = time.perf_counter()
        train_loss, diverged = _train_one_epoch(
            trained, model_config, optimizer, batches.epoch(epoch), group.device, alone=group.world_size == 1
        )
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        if validates:
            metrics.update(evaluate_split(model, model_config, _validation(data), device=group.device))
        metrics["epoch_time_s"] = time.perf_counter() - started

        score = metrics.get(train_config.metric, math.nan)
        if is_improvement(score, state.best_score, train_config.mode, train_config.min_delta):
            state.best_score, state.best_epoch, state.bad_epochs = float(score), epoch, 0
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        state.history.append(metrics)
        stop = group.agree(diverged or state.bad_epochs >= train_config.patience)

        if report is not None:
            if validates:
                with tempfile.TemporaryDirectory(prefix="ckpt-") as directory:
                    save_training_state(Path(directory), model, model_config, optimizer, shuffle, state, metrics)
                    report(metrics, Path(directory))
            else:
                report(metrics, None)
        if stop:
            result.stopped_early = not diverged
            result.diverged = diverged
            if validates:
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


def _training_batches(
    data: TrainingData | StreamingData, train_config: TrainConfig, shuffle: torch.Generator, group: WorkerGroup
) -> TensorBatches | StreamedBatches:
    """This worker's batches: sliced from the arrays in memory, or read block by block from S3."""
    if isinstance(data, StreamingData):
        return StreamedBatches(
            data.train,
            data.filesystem,
            train_config.batch_size,
            seed=train_config.seed,
            rank=group.rank,
            world_size=group.world_size,
        )
    X, y = to_tensors(data.train)
    return TensorBatches(X, y, train_config.batch_size, generator=shuffle, rank=group.rank, world_size=group.world_size)


def _validation(data: TrainingData | StreamingData) -> SplitArrays | Iterable[SplitArrays]:
    return data.validation.blocks(data.filesystem) if isinstance(data, StreamingData) else data.validation


def _train_one_epoch(
    model: nn.Module,
    config: ModelConfig,
    optimizer: Any,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str,
    *,
    alone: bool,
) -> tuple[float, bool]:
    """One pass over this worker's shuffled batches; returns the mean training loss and whether it diverged.

    Alone, a non-finite loss ends the epoch at once. In a group every worker must take part in every step's
    all-reduce, so the epoch runs to its end and the group stops after it (rank 0's weights are not finite either).
    """
    model.train()
    total, rows, diverged = 0.0, 0, False
    for xb, yb in batches:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(config, model(xb), yb)
        value = float(loss.detach())
        if not math.isfinite(value):
            if alone:
                return math.nan, True
            diverged = True
        loss.backward()
        optimizer.step()
        total += value * xb.shape[0]
        rows += xb.shape[0]
    if diverged:
        return math.nan, True
    return (total / rows if rows else math.nan), False
