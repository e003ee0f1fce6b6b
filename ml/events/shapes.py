"""Checks written to a schema's shape: a payload they accept is valid under the topic's JSON Schema and JSON-safe as
it is (exact Python types: no numpy scalar, NaN, tuple or non-string key), so `make_envelope` can skip the generic
conversion and validation. They are sufficient, not exact: a payload they do not accept goes the generic way, which
either accepts it after all (a numpy count, say) or names what is wrong. tests/unit/ml/events/test_shapes.py checks
each one against its schema on generated payloads, valid and broken ones.

Only the serving metrics have one: a message per served request, where the generic path (~35 us, the schema's
`oneOf` alternatives raising and catching exceptions in fastjsonschema) was most of the service's publishing cost.
A sampled request's logged inputs (off by default) take the generic path.
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
_CLASSIFICATION_SUMMARY = frozenset(("count", "class_counts"))
_REGRESSION_SUMMARY = frozenset(("count", "mean", "min", "max", "non_finite"))


def _count(value: Any, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def _name(value: Any) -> bool:
    return type(value) is str and value != ""


def _number(value: Any) -> bool:
    return (type(value) is float and math.isfinite(value)) or type(value) is int


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


SHAPE_CHECKS: dict[str, Callable[[Mapping[str, Any]], bool]] = {"serving_metrics.v1": serving_metrics_payload}
