"""Training: the loop (`train_model`: seeded, per-epoch validation, early stopping, a checkpoint per epoch,
resumable, data-parallel in a worker group), its configuration, its checkpoint state, and the Ray Tune trial.

A checkpoint directory holds the model checkpoint of `ml.models` (`model_state.pt`, `model_config.json`) plus
`training_state.pt` and `metrics.json` (ml.train.state), so a resumed trial continues exactly where it stopped.
"""

from ml.train.config import (
    DEFAULT_METRIC,
    DEFAULT_MODE,
    HPARAMS,
    MODEL_HPARAMS,
    TRAIN_HPARAMS,
    TrainConfig,
    configs_from_trial,
    target_stats,
    trial_params,
)
from ml.train.loop import (
    SINGLE,
    ReportFn,
    SingleWorker,
    TrainResult,
    WorkerGroup,
    evaluate_split,
    seed_everything,
    train_model,
)
from ml.train.state import METRICS_FILE, TRAINING_STATE_FILE
from ml.train.trial import train_trial, tune_trainable

__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_MODE",
    "HPARAMS",
    "METRICS_FILE",
    "MODEL_HPARAMS",
    "SINGLE",
    "TRAINING_STATE_FILE",
    "TRAIN_HPARAMS",
    "ReportFn",
    "SingleWorker",
    "TrainConfig",
    "TrainResult",
    "WorkerGroup",
    "configs_from_trial",
    "evaluate_split",
    "seed_everything",
    "target_stats",
    "train_model",
    "train_trial",
    "trial_params",
    "tune_trainable",
]
