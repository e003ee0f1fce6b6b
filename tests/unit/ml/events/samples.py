"""Valid payloads of each topic, shared by the events tests."""

from __future__ import annotations

METRICS = {
    "run_name": "tune-1",
    "trial_id": "t0001",
    "epoch": 3,
    "metrics": {"val_loss": 0.25, "val_accuracy": 0.9},
    "params": {"lr": 0.001, "hidden_size": 64},
}
METRICS_V2 = {
    **METRICS,
    "dataset": "penguins",
    "snapshot_id": "5f1c0e7a9b2d4c6e",
    "task": "classification",
    "model_name": "penguins-classification",
}
PIPELINE = {"dag_id": "mlops_training", "task_id": "tune_models", "event": "task_succeeded", "details": {"s": 12.5}}
PROMOTED = {
    "model_name": "iris-classification",
    "version": "3",
    "alias": "champion",
    "previous_version": "2",
    "metric": "accuracy",
    "value": 0.97,
    "previous_value": 0.95,
    "reason": "better by 0.02",
}
