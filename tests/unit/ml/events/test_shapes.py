"""ml.events.shapes: a payload a shape check accepts is valid for the reference validator (jsonschema, formats
checked) and JSON-safe as it is; the usual messages (the service's, the search's) are accepted (they skip the generic
path), and what a check does not accept still gets the generic path's conversion or its error."""

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
from ml.topics import SERVING_METRICS, TRAINING_METRICS, TRAINING_METRICS_V2, Topic
from tests.unit.ml.events.samples import METRICS, METRICS_V2, SERVING, corrupted

CLASSIFICATION = {**SERVING, "rows_logged": 0, "inputs": None}
REGRESSION = {
    **CLASSIFICATION,
    "task": "regression",
    "prediction_summary": {"count": 3, "mean": 2.5, "min": 1.0, "max": 4, "non_finite": 0},
}
REFUSED = {**CLASSIFICATION, "status": 422, "rows": 0, "prediction_summary": None}
# What the search's metrics callback sends: Tune's results as Python numbers, a trial's config with nested values.
TRIAL_PARAMS = {"lr": 0.001, "hidden_sizes": [64, 32], "optimizer": {"name": "adam", "betas": [0.9, 0.999]}}
EPOCH = {**METRICS, "params": TRIAL_PARAMS, "metrics": {"val_loss": 0.25, "val_accuracy": 0.9, "epoch_s": 1}}
EPOCH_V2 = {**METRICS_V2, "params": TRIAL_PARAMS, "metrics": {"val_rmse": 1.5, "val_r2": None}, "task": "regression"}

TYPICAL: list[tuple[Topic, dict[str, Any]]] = [
    (SERVING_METRICS, CLASSIFICATION),
    (SERVING_METRICS, REGRESSION),
    (SERVING_METRICS, REFUSED),
    (TRAINING_METRICS, METRICS),
    (TRAINING_METRICS, EPOCH),
    (TRAINING_METRICS_V2, METRICS_V2),
    (TRAINING_METRICS_V2, EPOCH_V2),
]
TYPICAL_IDS = ["serving-classification", "serving-regression", "serving-refused", "v1", "v1-nested", "v2", "v2-nested"]


def reference_validator(topic: Topic) -> Any:
    import jsonschema

    schema = load_schema(topic.schema)
    return jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())


def test_the_serving_and_training_metrics_have_shape_checks() -> None:
    assert set(SHAPE_CHECKS) == {SERVING_METRICS.schema, TRAINING_METRICS.schema, TRAINING_METRICS_V2.schema}


@pytest.mark.parametrize("dag_run_id", [None, "manual__2026-12-06T05:00:00+00:00"])
@pytest.mark.parametrize(("topic", "payload"), TYPICAL, ids=TYPICAL_IDS)
def test_what_the_service_and_the_search_send_take_the_shape_check_and_no_generic_validation(
    topic: Topic, payload: dict[str, Any], dag_run_id: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SHAPE_CHECKS[topic.schema](payload)

    def generic(*_: Any) -> None:
        raise AssertionError("the generic validator ran")

    monkeypatch.setattr(envelope_module, "validate_envelope", generic)
    envelope = make_envelope(topic, payload, dag_run_id)
    assert envelope["payload"] == payload and envelope["payload"] is not payload
    assert envelope["dag_run_id"] == dag_run_id
    reference_validator(topic).validate(envelope)


@pytest.mark.parametrize(("topic", "payload"), TYPICAL, ids=TYPICAL_IDS)
def test_every_corrupted_payload_a_check_accepts_is_valid_and_json_safe(topic: Topic, payload: dict[str, Any]) -> None:
    reference = reference_validator(topic)
    check = SHAPE_CHECKS[topic.schema]
    base = make_envelope(topic, payload)
    accepted, wrong = 0, []
    for envelope in corrupted(copy.deepcopy(base)):
        candidate = envelope.get("payload")
        if not isinstance(candidate, dict) or not check(candidate):
            continue
        accepted += 1
        safe = json_safe(candidate)
        same_types = json.dumps(safe, allow_nan=False) == json.dumps(candidate, allow_nan=False)
        if not (reference.is_valid({**base, "payload": candidate}) and same_types):
            wrong.append(candidate)
    assert wrong == [], f"the shape check accepted {len(wrong)} payloads it must not, e.g. {wrong[:2]}"
    assert accepted > 20  # the probes include valid variations, and the check takes them


def test_a_dag_run_id_that_is_not_a_string_goes_the_generic_way() -> None:
    with pytest.raises(EventValidationError, match="dag_run_id"):
        make_envelope(TRAINING_METRICS, METRICS, 7)  # type: ignore[arg-type]


def assert_generic_way(topic: Topic, payload: dict[str, Any], valid: dict[str, Any]) -> None:
    """`payload` is not proven by the check; the generic path converts and accepts it, or refuses it as the reference
    validator does."""
    assert not SHAPE_CHECKS[topic.schema](payload)
    reference = reference_validator(topic)
    try:
        envelope = make_envelope(topic, payload)
    except EventValidationError:
        assert not reference.is_valid({**make_envelope(topic, valid), "payload": json_safe(payload)})
        return
    reference.validate(envelope)  # accepted by the generic path: converted to JSON values first
    json.dumps(envelope, allow_nan=False)


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
    assert_generic_way(SERVING_METRICS, {**CLASSIFICATION, change: value}, CLASSIFICATION)


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("epoch", True),
        ("epoch", -1),
        ("epoch", np.int64(2)),  # valid once converted
        ("trial_id", ""),
        ("metrics", {}),
        ("metrics", {"val_loss": math.nan}),  # NaN becomes null: valid once converted
        ("metrics", {"val_loss": np.float32(0.5)}),
        ("metrics", {"val_loss": True}),
        ("metrics", {"": 1.0}),
        ("metrics", {"val_loss": "0.5"}),
        ("params", {"hidden_sizes": (64, 32)}),  # a tuple becomes a list
        ("params", {"lr": np.float64(0.01)}),
        ("params", {"lr": math.inf}),
        ("params", {"layers": {1: 64}}),  # a key becomes a string
        ("params", {"nested": [{"deep": {"x": math.nan}}]}),
        ("params", {"activation": object()}),  # becomes its str()
        ("params", ["lr", 0.01]),
    ],
)
@pytest.mark.parametrize(
    ("topic", "valid"), [(TRAINING_METRICS, EPOCH), (TRAINING_METRICS_V2, EPOCH_V2)], ids=["v1", "v2"]
)
def test_training_values_the_check_cannot_prove_go_the_generic_way(
    topic: Topic, valid: dict[str, Any], change: str, value: Any
) -> None:
    assert_generic_way(topic, {**valid, change: value}, valid)


@pytest.mark.parametrize(
    ("change", "value"),
    [("task", "ranking"), ("dataset", ""), ("snapshot_id", 3), ("model_name", None), ("task", ["classification"])],
)
def test_v2_fields_the_check_cannot_prove_go_the_generic_way(change: str, value: Any) -> None:
    assert_generic_way(TRAINING_METRICS_V2, {**EPOCH_V2, change: value}, EPOCH_V2)


def test_a_sampled_request_with_inputs_goes_the_generic_way() -> None:
    assert not serving_metrics_payload(SERVING)
    envelope = make_envelope(SERVING_METRICS, {**SERVING, "inputs": {"bill_length_mm": [math.nan, 1.0]}})
    assert envelope["payload"]["inputs"] == {"bill_length_mm": [None, 1.0]}  # json_safe's conversion
