"""Serving-metrics events as the prediction service sends them (ml.serve.telemetry's payload, in its envelope), with
the event time a test chooses: what the drift monitor reads, without a prediction service in between."""

from __future__ import annotations

import uuid
from typing import Any

from ml.events.envelope import make_envelope
from ml.topics import SERVING_METRICS


def serving_event(
    model_name: str,
    model_version: str,
    inputs: dict[str, list[Any]] | None,
    *,
    at: float,
    status: int = 200,
    task: str = "classification",
) -> dict[str, Any]:
    """One request's serving_metrics.v1 envelope at epoch second `at`: `inputs` the sampled rows by column (None: not
    sampled), predictions summarised as one class per row."""
    rows = len(next(iter(inputs.values()))) if inputs else 3
    answered = status < 400
    payload = {
        "request_id": uuid.uuid4().hex,
        "model_name": model_name,
        "model_version": model_version,
        "task": task,
        "status": status,
        "latency_ms": 1.5,
        "rows": rows if answered else 0,
        "prediction_summary": {"count": rows, "class_counts": {"a": rows}} if answered else None,
        "rows_logged": rows if inputs else 0,
        "inputs": inputs,
    }
    return make_envelope(SERVING_METRICS, payload, event_time=at)
