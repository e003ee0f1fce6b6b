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
SERVING = {
    "request_id": "0123456789abcdef0123456789abcdef",
    "model_name": "penguins-classification",
    "model_version": "4",
    "task": "classification",
    "status": 200,
    "latency_ms": 3.25,
    "rows": 3,
    "prediction_summary": {"count": 3, "class_counts": {"Adelie": 2, "Gentoo": 1}},
    "rows_logged": 2,
    "inputs": {"bill_length_mm": [39.1, None], "island": ["Biscoe", "Dream"]},
}
DRIFT = {
    "model_name": "penguins-classification",
    "model_version": "4",
    "dataset": "penguins",
    "snapshot_id": "20261203T100000Z-abc",
    "window_start": "2026-12-03T10:00:00Z",
    "window_end": "2026-12-03T10:01:00Z",
    "rows": 120,
    "drifted": True,
    "drifted_features": ["bill_length_mm"],
    "thresholds": {"psi": 0.25, "min_rows": 50},
    "features": [
        {
            "name": "bill_length_mm",
            "kind": "numeric",
            "rows": 120,
            "missing_share": 0.0,
            "expected_missing_share": 0.01,
            "psi": 1.7,
            "test": "ks",
            "statistic": 0.61,
            "p_value": 1e-12,
            "drifted": True,
        },
        {
            "name": "island",
            "kind": "categorical",
            "rows": 120,
            "missing_share": None,
            "expected_missing_share": 0.0,
            "psi": None,
            "test": "chi_square",
            "statistic": None,
            "p_value": None,
            "drifted": False,
        },
    ],
}
