"""Shared by the tune tests: the settings, a search config, and fake Tune results (trials with kept checkpoints)."""

from __future__ import annotations

import secrets
from types import SimpleNamespace
from typing import Any

from ml.settings import KafkaSettings, LakeSettings, MlflowSettings, RaySettings
from ml.storage import S3Uri
from ml.tune.config import SearchConfig

LAKE = LakeSettings()
RAY = RaySettings(state_signing_key=secrets.token_urlsafe(32))
KAFKA = KafkaSettings("kafka.invalid:9092")
MLFLOW = MlflowSettings("http://mlflow.invalid:5000")
SPACE = {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}, "hidden_size": 16}
EXPERIMENT = S3Uri("lake", "tune/d/snap/run-1")
FEATURES = S3Uri("lake", "datasets/d/features/snap")


def make_config(**values: Any) -> SearchConfig:
    defaults: dict[str, Any] = {
        "dataset": "d",
        "snapshot_id": "snap",
        "run_name": "run-1",
        "search_space": SPACE,
        "num_samples": 3,
        "max_epochs": 3,
        "dag_run_id": "manual__1",
    }
    return SearchConfig(**{**defaults, **values})


def fake_trial(trial_id: str, scores: list[float], *, error: Exception | None = None, lr: float = 0.01) -> Any:
    """A Tune Result: the trial's kept checkpoints with the metrics they were saved with (epoch i+1: scores[i])."""
    checkpoints = [
        (
            SimpleNamespace(path=f"lake/tune/d/snap/run-1/trial_{trial_id}/checkpoint_{epoch:06d}"),
            {"epoch": epoch + 1, "val_loss": score, "val_r2": 1 - score, "train_loss": 2 * score, "trial_id": trial_id},
        )
        for epoch, score in enumerate(scores)
    ]
    last = checkpoints[-1][1] if checkpoints else {}
    return SimpleNamespace(
        error=error,
        best_checkpoints=checkpoints,
        metrics={**last, "trial_id": trial_id},
        config={"lr": lr, "hidden_size": 16, "max_epochs": 3, "seed": 0, "metric": "val_loss", "mode": "min"},
    )


class FakeResultGrid(list):
    """What Tuner.fit() returns, as far as summarise reads it."""

    def __init__(self, trials: list[Any], unfinished: int = 0) -> None:
        super().__init__(trials)
        self.num_errors = sum(1 for trial in trials if trial.error is not None)
        self.num_terminated = len(trials) - self.num_errors - unfinished
        self.errors = [trial.error for trial in trials if trial.error is not None]
