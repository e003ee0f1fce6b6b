"""ml.events.envelope: envelopes against their JSON Schemas (ml/schemas/, compiled with fastjsonschema), message keys,
and proof that the run-time validator is no laxer than the reference one (jsonschema) on corrupted envelopes."""

from __future__ import annotations

import copy
import json
import math
import re
import time
import uuid
from typing import Any

import numpy as np
import pytest

from ml.clock import utc_iso
from ml.events.envelope import (
    EventValidationError,
    load_schema,
    make_envelope,
    pipeline_event_key,
    producer_id,
    topic_by_name,
    training_metrics_key,
    validate_envelope,
)
from ml.topics import (
    ALL_TOPICS,
    DRIFT,
    MODEL_PROMOTED,
    PIPELINE_EVENTS,
    S3_EVENTS,
    SERVING_METRICS,
    TRAINING_METRICS,
    TRAINING_METRICS_V2,
    Topic,
)
from tests.unit.ml.events.samples import DRIFT as DRIFT_SAMPLE
from tests.unit.ml.events.samples import METRICS, METRICS_V2, PIPELINE, PROMOTED, SERVING, corrupted

PAYLOADS = {
    TRAINING_METRICS: METRICS,
    TRAINING_METRICS_V2: METRICS_V2,
    PIPELINE_EVENTS: PIPELINE,
    MODEL_PROMOTED: PROMOTED,
    SERVING_METRICS: SERVING,
    DRIFT: DRIFT_SAMPLE,
}


# --- schemas and envelopes -------------------------------------------------------------------------------------------


def test_every_topic_has_a_valid_json_schema() -> None:
    import jsonschema

    for topic in ALL_TOPICS:
        schema = load_schema(topic.schema)
        jsonschema.validators.validator_for(schema).check_schema(schema)
        assert schema["properties"]["schema"]["const"] == topic.schema
    notifications = load_schema(S3_EVENTS.schema)  # AWS's format, not an envelope (ml.events.s3_notifications)
    jsonschema.validators.validator_for(notifications).check_schema(notifications)
    routes = load_schema("event_routes")  # not an event: the routes file of event-driven runs (ml.events.routes)
    jsonschema.validators.validator_for(routes).check_schema(routes)
    with pytest.raises(
        EventValidationError, match=r"unknown event schema 'nope\.v9' \(known: aws_s3_event, drift\.v1, event_ro"
    ):
        load_schema("nope.v9")


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=lambda t: t.schema)
def test_make_envelope_is_valid_and_complete(topic: Topic) -> None:
    payload = PAYLOADS[topic]
    envelope = make_envelope(topic, payload, dag_run_id="manual__2026-01-01")
    assert list(envelope) == ["schema", "event_id", "event_time", "dag_run_id", "producer", "payload"]
    assert envelope["schema"] == topic.schema
    assert uuid.UUID(envelope["event_id"]).version == 4
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", envelope["event_time"])
    assert envelope["dag_run_id"] == "manual__2026-01-01"
    assert envelope["producer"] == producer_id() and re.fullmatch(r".+:\d+/.+", envelope["producer"])
    assert envelope["payload"] == payload and envelope["payload"] is not payload
    validate_envelope(json.loads(json.dumps(envelope)), topic)  # survives the JSON round trip


def test_the_event_time_is_the_one_given_or_now() -> None:
    envelope = make_envelope(PIPELINE_EVENTS, PIPELINE, event_time=1_767_225_600.5)
    assert envelope["event_time"] == "2026-01-01T00:00:00.500Z"
    before = utc_iso(time.time())
    assert before <= make_envelope(PIPELINE_EVENTS, PIPELINE)["event_time"] <= utc_iso(time.time())
    assert make_envelope(PIPELINE_EVENTS, PIPELINE)["dag_run_id"] is None


def test_event_ids_are_unique() -> None:
    assert len({make_envelope(PIPELINE_EVENTS, PIPELINE)["event_id"] for _ in range(50)}) == 50


@pytest.mark.parametrize(
    ("topic", "payload", "complaint"),
    [
        (TRAINING_METRICS, {**METRICS, "epoch": "3"}, "$.payload.epoch"),
        (TRAINING_METRICS, {**METRICS, "epoch": -1}, "$.payload.epoch"),
        (TRAINING_METRICS, {k: v for k, v in METRICS.items() if k != "trial_id"}, "trial_id"),
        (TRAINING_METRICS, {**METRICS, "metrics": {"loss": "low"}}, "$.payload.metrics.loss"),
        (TRAINING_METRICS, {**METRICS, "metrics": {}}, "$.payload.metrics"),
        (TRAINING_METRICS, {**METRICS, "extra": 1}, "extra"),
        (PIPELINE_EVENTS, {**PIPELINE, "event": "task_exploded"}, "$.payload.event"),
        (PIPELINE_EVENTS, {k: v for k, v in PIPELINE.items() if k != "task_id"}, "task_id"),
        (MODEL_PROMOTED, {**PROMOTED, "version": 3}, "$.payload.version"),
        (MODEL_PROMOTED, {**PROMOTED, "previous_version": "two"}, "$.payload.previous_version"),
        (MODEL_PROMOTED, {k: v for k, v in PROMOTED.items() if k != "reason"}, "reason"),
    ],
)
def test_bad_payloads_are_rejected_naming_the_field(topic: Topic, payload: dict[str, Any], complaint: str) -> None:
    with pytest.raises(EventValidationError, match=re.escape(complaint)):
        make_envelope(topic, payload)


def test_bad_envelopes_are_rejected() -> None:
    good = make_envelope(PIPELINE_EVENTS, PIPELINE)
    for field, value in [
        ("event_id", "not-a-uuid"),
        ("event_id", str(uuid.uuid1())),  # a uuid, but not a uuid4
        ("event_time", "2026-01-01 10:00"),
        ("event_time", "2026-01-01T10:00:00+02:00"),
        ("producer", ""),
        ("dag_run_id", 5),
    ]:
        with pytest.raises(EventValidationError, match=field):
            validate_envelope({**good, field: value})
    with pytest.raises(EventValidationError, match="unknown event schema"):
        validate_envelope({**good, "schema": "nope.v9"})
    with pytest.raises(EventValidationError, match=r"carries training_metrics\.v1"):
        validate_envelope(good, TRAINING_METRICS)
    with pytest.raises(EventValidationError, match=r"payload"):
        validate_envelope({k: v for k, v in good.items() if k != "payload"})
    with pytest.raises(EventValidationError, match="no 'schema' name"):
        validate_envelope({k: v for k, v in good.items() if k != "schema"})
    with pytest.raises(EventValidationError, match="is a JSON object, got list"):
        validate_envelope([good])  # type: ignore[arg-type]


def test_non_finite_and_numpy_values_become_json() -> None:
    payload = {
        **METRICS,
        "epoch": np.int64(2),
        "metrics": {"loss": float("nan"), "acc": np.float32(0.5), "big": math.inf},
    }
    envelope = make_envelope(TRAINING_METRICS, payload)
    assert envelope["payload"]["epoch"] == 2
    assert envelope["payload"]["metrics"] == {"loss": None, "acc": 0.5, "big": None}
    json.dumps(envelope, allow_nan=False)


def test_keys_make_redeliveries_recognisable() -> None:
    assert training_metrics_key("tune-1", "t0001", 3) == "tune-1:t0001:3"
    assert pipeline_event_key("dag", "run-1", "task", "task_failed") == "dag:run-1:task:task_failed"
    assert pipeline_event_key("dag", None, None, "run_failed") == "dag:-:-:run_failed"


def test_topics_are_found_by_name_or_schema() -> None:
    assert topic_by_name("mlops.model.promoted.v1") is MODEL_PROMOTED
    assert topic_by_name("training_metrics.v1") is TRAINING_METRICS
    assert topic_by_name("mlops.other") is None


# --- fastjsonschema (run time) refuses everything jsonschema (the reference) refuses ----------------------------------


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=lambda t: t.schema)
def test_the_run_time_validator_refuses_everything_the_reference_refuses(topic: Topic) -> None:
    import jsonschema

    reference = jsonschema.validators.validator_for(load_schema(topic.schema))(load_schema(topic.schema))
    base = make_envelope(topic, PAYLOADS[topic], dag_run_id="run-1")
    laxer, checked, refused = [], 0, 0
    for envelope in corrupted(copy.deepcopy(base)):
        checked += 1
        if reference.is_valid(envelope):
            continue
        refused += 1
        try:
            validate_envelope(envelope)
        except EventValidationError:
            continue
        laxer.append(envelope)
    assert laxer == [], f"fastjsonschema accepted {len(laxer)} envelopes that jsonschema refuses, e.g. {laxer[:2]}"
    assert refused > 0.5 * checked and checked > 500  # the corruptions exercise the schema
    reference.validate(base)  # and both accept the genuine envelope
    validate_envelope(base, topic)


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=lambda t: t.schema)
def test_the_reference_with_format_checks_agrees_on_what_the_run_time_validator_accepts(topic: Topic) -> None:
    """The other direction, where the two can be compared: everything fastjsonschema accepts is valid for jsonschema
    with its format checker (fastjsonschema checks formats; jsonschema checks them only when asked)."""
    import jsonschema

    schema = load_schema(topic.schema)
    checker = jsonschema.FormatChecker()
    reference = jsonschema.validators.validator_for(schema)(schema, format_checker=checker)
    accepted = []
    for envelope in corrupted(make_envelope(topic, PAYLOADS[topic], dag_run_id="run-1")):
        try:
            validate_envelope(envelope)
        except EventValidationError:
            continue
        accepted.append(envelope)
    stricter_reference = [envelope for envelope in accepted if not reference.is_valid(envelope)]
    assert stricter_reference == [], stricter_reference[:2]
    assert accepted  # some corruptions are still valid events (another number, another string)


def test_a_derived_event_id_is_a_uuid4_that_only_the_topic_and_key_decide() -> None:
    from ml.events.envelope import derived_event_id, drift_key

    key = drift_key("toy-classification", "3", "2026-12-03T10:00:00Z")
    assert key == "toy-classification:3:2026-12-03T10:00:00Z"
    first = derived_event_id(DRIFT, key)
    assert derived_event_id(DRIFT, key) == first  # a window sent again keeps its id
    assert uuid.UUID(first).version == 4
    assert derived_event_id(DRIFT, key + "x") != first and derived_event_id(SERVING_METRICS, key) != first
