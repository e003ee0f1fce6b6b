"""ml.drift.stream: the query's Spark expressions on a batch of serving records (the streaming query runs the same
ones; tests/integration/ml/drift runs it against Kafka and S3), and what the driver makes of a closed window."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ml.drift.stream import (
    MonitorConfig,
    _publish_batch,
    drift_events,
    group_windows,
    parse_serving_events,
    window_counts,
)
from ml.drift.window import DriftThresholds
from ml.features.distributions import CategoricalDistribution, NumericDistribution, TrainingDistributions
from tests.support.serving_events import serving_event

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a whole minute
DISTRIBUTIONS = TrainingDistributions(
    dataset="toy",
    snapshot_id="snap",
    rows=100,
    numeric=[NumericDistribution("x", [1.0, 2.0], [0.3, 0.4, 0.3], count=100, missing=0.0)],
    categorical=[CategoricalDistribution("colour", ["red"], [0.9, 0.1], count=100, missing=0.0)],
)
CONFIG = MonitorConfig(checkpoint_uri="s3://lake/monitor/test", window="1 minute", watermark="10 seconds")


def records(spark: Any, events: list[Any]) -> Any:
    """Kafka source rows: the record value as bytes, as Spark's Kafka source gives it."""
    values = [(json.dumps(event).encode() if not isinstance(event, bytes) else event,) for event in events]
    return spark.createDataFrame(values, "value binary")


def test_sampled_answered_requests_become_one_row_per_value(spark: Any) -> None:
    events = [
        serving_event("m", "1", {"x": [1.5, None, "2.5"], "colour": ["red", "NA", 3.0]}, at=T0 + 1),
        serving_event("m", "1", None, at=T0 + 2),  # not sampled
        serving_event("m", "1", None, at=T0 + 3, status=422),  # refused: never has inputs
        {"schema": "training_metrics.v1", "payload": {"inputs": {"x": [9]}}},  # another topic's envelope
        b"not json at all",
    ]
    rows = parse_serving_events(records(spark, events)).collect()
    seen = sorted((r["feature"], str(r["value"])) for r in rows)
    # numbers keep their JSON text, nulls stay null
    assert seen == sorted(
        [("x", "1.5"), ("x", "None"), ("x", "2.5"), ("colour", "red"), ("colour", "NA"), ("colour", "3.0")]
    )
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("m", "1")}
    assert {r["event_time"].timestamp() for r in rows} == {T0 + 1}


def test_values_are_counted_per_window_and_version(spark: Any) -> None:
    events = [
        serving_event("m", "1", {"x": [1.5, 1.5]}, at=T0 + 5),
        serving_event("m", "1", {"x": [1.5]}, at=T0 + 59.9),
        serving_event("m", "1", {"x": [1.5]}, at=T0 + 60),  # the next window
        serving_event("m", "2", {"x": [1.5]}, at=T0 + 10),  # another version
    ]
    counted = window_counts(parse_serving_events(records(spark, events)), CONFIG).collect()
    windows = group_windows(counted)
    start, next_start = "2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z"
    assert windows == {
        ("m", "1", start, next_start): {"x": {"1.5": 3}},
        ("m", "1", next_start, "2027-01-15T08:02:00Z"): {"x": {"1.5": 1}},
        ("m", "2", start, next_start): {"x": {"1.5": 1}},
    }


def test_a_closed_window_is_published_with_its_verdict(spark: Any) -> None:
    shifted = {"x": [5.0] * 60, "colour": ["red"] * 54 + ["blue"] * 6}
    events = [serving_event("m", "1", shifted, at=T0 + 1)]
    batch = window_counts(parse_serving_events(records(spark, events)), CONFIG)
    published: list[dict[str, Any]] = []
    handle = _publish_batch(published.append, lambda name, version: DISTRIBUTIONS, DriftThresholds(min_rows=50))
    handle(batch, 0)
    (payload,) = published
    assert (payload["model_name"], payload["model_version"], payload["rows"]) == ("m", "1", 60)
    assert payload["window_start"] == "2027-01-15T08:00:00Z" and payload["window_end"] == "2027-01-15T08:01:00Z"
    assert payload["drifted_features"] == ["x"]  # all above the last edge; the colours are as in training


def test_a_version_without_training_distributions_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    windows = {
        ("m", "2", "2027-01-15T08:01:00Z", "2027-01-15T08:02:00Z"): {"x": {"1.5": 60}},
        ("m", "1", "2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z"): {"x": {"1.5": 60}},
        ("old", "1", "2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z"): {"x": {"1.5": 60}},
    }
    found = {("m", "1"): DISTRIBUTIONS, ("m", "2"): DISTRIBUTIONS}
    payloads = list(drift_events(windows, lambda n, v: found.get((n, v)), DriftThresholds()))
    assert [(p["model_name"], p["model_version"]) for p in payloads] == [("m", "1"), ("m", "2")]  # window order
    assert "no training distributions for old version 1" in caplog.text


def test_window_bounds_are_utc_whatever_the_machines_time_zone(spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyspark hands back timestamps in the Python process's local time: the bounds must not depend on it."""
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        events = [serving_event("m", "1", {"x": [1.5]}, at=T0 + 5)]
        counted = window_counts(parse_serving_events(records(spark, events)), CONFIG)
        assert list(group_windows(counted.collect())) == [("m", "1", "2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z")]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
