"""Valid payloads of each topic, shared by the events tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from ml.topics import ALL_TOPICS

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


# Values of every JSON type, edge cases of the schemas' rules included.
PROBES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    1.0,
    1.5,
    -0.0,
    "",
    "x",
    "3",
    "03",
    "3\n",
    "two",
    "champion",
    "task_succeeded",
    "task_succeeded ",
    "TASK_SUCCEEDED",
    [],
    ["x"],
    {},
    {"a": 1},
    {"": 1.0},
    {"a": "b"},
    {"a": None},
    {"a": True},
    {"a": 1.0},
    {"a": [1]},
    {"a": {"b": 1}},
    "2026-01-01T10:00:00Z",
    "2026-01-01T10:00:00.123456+00:00",
    "2026-01-01T10:00:00+02:00",
    "2026-13-45T25:61:61Z",
    "2026-01-01 10:00:00Z",
    "2026-01-01T10:00:00Z\n",
    str(uuid.uuid4()),
    str(uuid.uuid4()).upper(),
    str(uuid.uuid1()),
    "00000000-0000-4000-8000-00000000000",
    str(uuid.uuid4()) + "\n",
]
ENVELOPE_FIELDS = ("schema", "event_id", "event_time", "dag_run_id", "producer", "payload")


def corrupted(envelope: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The envelope with each field (and each payload field, and each value inside those) replaced by every probe,
    removed, or joined by an unknown field; and other topics' schema names."""
    for field in ENVELOPE_FIELDS:
        for probe in PROBES:
            yield {**envelope, field: probe}
        yield {k: v for k, v in envelope.items() if k != field}
    yield {**envelope, "extra": 1}
    for topic in ALL_TOPICS:
        yield {**envelope, "schema": topic.schema}
    payload = envelope["payload"]
    for key, value in payload.items():
        for probe in PROBES:
            yield {**envelope, "payload": {**payload, key: probe}}
        yield {**envelope, "payload": {k: v for k, v in payload.items() if k != key}}
        if isinstance(value, dict):
            for inner_key in [*value, "new"]:
                for probe in PROBES:
                    yield {**envelope, "payload": {**payload, key: {**value, inner_key: probe}}}
    yield {**envelope, "payload": {**payload, "extra": 1}}
