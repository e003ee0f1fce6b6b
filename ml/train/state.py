"""A training checkpoint beyond the model's own files: `training_state.pt` (optimizer, epoch, early-stopping
counters, RNG states: tensors and numbers only, loaded with `weights_only=True`) and `metrics.json` (that epoch's
metrics and the history so far), so that a resumed run continues exactly where it stopped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.json_values import json_safe
from ml.models import ModelConfig, load_model_config, save_checkpoint

if TYPE_CHECKING:
    import torch
    from torch import nn

TRAINING_STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.json"


@dataclass
class LoopState:
    epoch: int = 0
    best_score: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def save_training_state(
    directory: Path,
    model: nn.Module,
    config: ModelConfig,
    optimizer: Any,
    shuffle: torch.Generator,
    state: LoopState,
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


def load_training_state(
    directory: Path, model: nn.Module, optimizer: Any, shuffle: torch.Generator, config: ModelConfig
) -> LoopState:
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
    return LoopState(
        epoch=int(saved["epoch"]),
        best_score=saved["best_score"],
        best_epoch=int(saved["best_epoch"]),
        bad_epochs=int(saved["bad_epochs"]),
        history=history,
    )
