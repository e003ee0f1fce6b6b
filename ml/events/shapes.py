"""Checks written to a schema's shape: a payload they accept is valid under the topic's JSON Schema and JSON-safe as
it is (exact Python types: no numpy scalar, NaN, tuple or non-string key), so `make_envelope` can skip the generic
conversion and validation. They are sufficient, not exact: a payload they do not accept goes the generic way, which
either accepts it after all (a numpy count, say) or names what is wrong. tests/unit/ml/events/test_shapes.py checks
each one against its schema on generated payloads, valid and broken ones.

The serving metrics have one: a message per served request, where the generic path (~35 us, the schema's `oneOf`
alternatives raising and catching exceptions in fastjsonschema) was most of the service's publishing cost. A sampled
request's logged inputs (off by default) take the generic path. The training metrics (v1 and v2, a message each per
trial-epoch) have one too: the generic path's recursive conversion and validation was a third of the publisher's
per-message cost (B5a).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
_SERVING_FIELDS = frozenset(
    (
        "request_id",
        "model_name",
        "model_version",
        "task",
        "status",
        "latency_ms",
        "rows",
        "prediction_summary",
        "rows_logged",
        "inputs",
    )
)
_TRAINING_V1_FIELDS = frozenset(("run_name", "trial_id", "epoch", "metrics", "params"))
_TRAINING_V2_FIELDS = _TRAINING_V1_FIELDS | {"dataset", "snapshot_id", "task", "model_name"}
_CLASSIFICATION_SUMMARY = frozenset(("count", "class_counts"))
_REGRESSION_SUMMARY = frozenset(("count", "mean", "min", "max", "non_finite"))


def _count(value: Any, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def _name(value: Any) -> bool:
    return type(value) is str and value != ""


def _number(value: Any) -> bool:
    return (type(value) is float and math.isfinite(value)) or type(value) is int


def _json_value(value: Any) -> bool:
    """A JSON value as it is: exact str/int/bool/None, a finite float, lists of them, objects with string keys."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_json_value(item) for item in value)
    if kind is dict:
        return all(type(key) is str and _json_value(item) for key, item in value.items())
    return False


def _summary(summary: Any) -> bool:
    if summary is None:
        return True
    if type(summary) is not dict or not _count(summary.get("count"), 1):
        return False
    if summary.keys() == _CLASSIFICATION_SUMMARY:
        counts = summary["class_counts"]
        return type(counts) is dict and all(_name(label) and _count(n) for label, n in counts.items())
    if summary.keys() == _REGRESSION_SUMMARY:
        return _count(summary["non_finite"]) and all(
            summary[stat] is None or _number(summary[stat]) for stat in ("mean", "min", "max")
        )
    return False


def serving_metrics_payload(payload: Mapping[str, Any]) -> bool:
    """Whether `payload` is a valid serving_metrics.v1 payload without logged inputs, JSON-safe as it is."""
    return (
        type(payload) is dict
        and payload.keys() == _SERVING_FIELDS
        and payload["inputs"] is None
        and payload["rows_logged"] == 0
        and type(payload["rows_logged"]) is int
        and type(payload["request_id"]) is str
        and _REQUEST_ID.fullmatch(payload["request_id"]) is not None
        and _name(payload["model_name"])
        and _name(payload["model_version"])
        and payload["task"] in ("classification", "regression")
        and type(payload["status"]) is int
        and 100 <= payload["status"] <= 599
        and _number(payload["latency_ms"])
        and payload["latency_ms"] >= 0
        and _count(payload["rows"])
        and _summary(payload["prediction_summary"])
    )


def _training_metrics(payload: Mapping[str, Any]) -> bool:
    metrics = payload["metrics"]
    return (
        _name(payload["run_name"])
        and _name(payload["trial_id"])
        and _count(payload["epoch"])
        and type(metrics) is dict
        and len(metrics) > 0
        and all(_name(name) and (value is None or _number(value)) for name, value in metrics.items())
        and type(payload["params"]) is dict
        and _json_value(payload["params"])
    )


def training_metrics_v1_payload(payload: Mapping[str, Any]) -> bool:
    """Whether `payload` is a valid training_metrics.v1 payload, JSON-safe as it is."""
    return type(payload) is dict and payload.keys() == _TRAINING_V1_FIELDS and _training_metrics(payload)


def training_metrics_v2_payload(payload: Mapping[str, Any]) -> bool:
    """Whether `payload` is a valid training_metrics.v2 payload, JSON-safe as it is."""
    return (
        type(payload) is dict
        and payload.keys() == _TRAINING_V2_FIELDS
        and _training_metrics(payload)
        and _name(payload["dataset"])
        and _name(payload["snapshot_id"])
        and payload["task"] in ("classification", "regression")
        and _name(payload["model_name"])
    )


SHAPE_CHECKS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "serving_metrics.v1": serving_metrics_payload,
    "training_metrics.v1": training_metrics_v1_payload,
    "training_metrics.v2": training_metrics_v2_payload,
}
