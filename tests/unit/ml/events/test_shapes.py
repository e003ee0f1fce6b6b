"""ml.events.shapes: a payload the shape check accepts is valid for the reference validator (jsonschema, formats
checked) and JSON-safe as it is; the service's usual messages are accepted (they skip the generic path), and what the
check does not accept still gets the generic path's conversion or its error."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest

from ml.events import envelope as envelope_module
from ml.events.envelope import EventValidationError, load_schema, make_envelope
from ml.events.shapes import SHAPE_CHECKS, serving_metrics_payload
from ml.json_values import json_safe
from ml.topics import SERVING_METRICS
from tests.unit.ml.events.samples import SERVING, corrupted

CLASSIFICATION = {**SERVING, "rows_logged": 0, "inputs": None}
REGRESSION = {
    **CLASSIFICATION,
    "task": "regression",
    "prediction_summary": {"count": 3, "mean": 2.5, "min": 1.0, "max": 4, "non_finite": 0},
}
REFUSED = {**CLASSIFICATION, "status": 422, "rows": 0, "prediction_summary": None}
TYPICAL = [CLASSIFICATION, REGRESSION, REFUSED]


def reference_validator() -> Any:
    import jsonschema

    schema = load_schema(SERVING_METRICS.schema)
    return jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())


def test_only_the_serving_metrics_have_a_shape_check() -> None:
    assert set(SHAPE_CHECKS) == {SERVING_METRICS.schema}


@pytest.mark.parametrize("payload", TYPICAL, ids=["classification", "regression", "refused"])
def test_what_the_service_sends_takes_the_shape_check_and_no_generic_validation(
    payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert serving_metrics_payload(payload)

    def generic(*_: Any) -> None:
        raise AssertionError("the generic validator ran")

    monkeypatch.setattr(envelope_module, "validate_envelope", generic)
    envelope = make_envelope(SERVING_METRICS, payload)
    assert envelope["payload"] == payload and envelope["payload"] is not payload
    reference_validator().validate(envelope)


@pytest.mark.parametrize("payload", TYPICAL, ids=["classification", "regression", "refused"])
def test_every_corrupted_payload_the_check_accepts_is_valid_and_json_safe(payload: dict[str, Any]) -> None:
    reference = reference_validator()
    base = make_envelope(SERVING_METRICS, payload)
    accepted, wrong = 0, []
    for envelope in corrupted(copy.deepcopy(base)):
        candidate = envelope.get("payload")
        if not isinstance(candidate, dict) or not serving_metrics_payload(candidate):
            continue
        accepted += 1
        safe = json_safe(candidate)
        same_types = json.dumps(safe, allow_nan=False) == json.dumps(candidate, allow_nan=False)
        if not (reference.is_valid({**base, "payload": candidate}) and same_types):
            wrong.append(candidate)
    assert wrong == [], f"the shape check accepted {len(wrong)} payloads it must not, e.g. {wrong[:2]}"
    assert accepted > 20  # the probes include valid variations, and the check takes them


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("status", True),  # a bool is no status, though Python counts it as an int
        ("rows", np.int64(3)),  # valid once converted: the generic path converts it
        ("latency_ms", math.nan),
        ("latency_ms", -1.0),
        ("request_id", "0123456789ABCDEF0123456789ABCDEF"),
        ("model_version", ""),
        ("task", "ranking"),
        ("rows_logged", 1),
        ("prediction_summary", {"count": 1, "class_counts": {"": 1}}),
        ("prediction_summary", {"count": 1, "class_counts": {"a": np.int64(1)}}),
        ("prediction_summary", {"count": 0, "class_counts": {}}),
        ("prediction_summary", {"count": 1, "mean": math.inf, "min": None, "max": None, "non_finite": 0}),
        ("prediction_summary", {"count": 1, "mean": 1.0, "min": 1.0, "max": 1.0}),
        ("prediction_summary", {"count": 1, "class_counts": {"a": 1}, "mean": 1.0}),
    ],
)
def test_what_the_check_cannot_prove_goes_the_generic_way(change: str, value: Any) -> None:
    payload = {**CLASSIFICATION, change: value}
    assert not serving_metrics_payload(payload)
    reference = reference_validator()
    try:
        envelope = make_envelope(SERVING_METRICS, payload)
    except EventValidationError:
        assert not reference.is_valid({**make_envelope(SERVING_METRICS, CLASSIFICATION), "payload": json_safe(payload)})
        return
    reference.validate(envelope)  # accepted by the generic path: converted to JSON values first
    json.dumps(envelope, allow_nan=False)


def test_a_sampled_request_with_inputs_goes_the_generic_way() -> None:
    assert not serving_metrics_payload(SERVING)
    envelope = make_envelope(SERVING_METRICS, {**SERVING, "inputs": {"bill_length_mm": [math.nan, 1.0]}})
    assert envelope["payload"]["inputs"] == {"bill_length_mm": [None, 1.0]}  # json_safe's conversion
