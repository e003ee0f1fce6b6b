"""ml.drift.retraining: drift.v1 envelopes -> signals of drifted windows -> one retraining run per dataset whose route
says retrain (the drift as its `event`), at most one per dataset and hour of drifted windows; alerts and unknown
datasets start nothing."""

from __future__ import annotations

import pytest

from ml.drift.retraining import DriftSignal, drift_signal, plan_drift_runs
from ml.events.envelope import EventValidationError, make_envelope
from ml.events.routes import parse_routes
from ml.topics import DRIFT
from tests.unit.ml.events.samples import DRIFT as DRIFT_SAMPLE

ROUTES = parse_routes(
    {
        "version": 1,
        "datasets": [
            {"prefix": "s3://raw/p/", "dataset": "p", "target": "y", "task": "classification", "on_drift": "retrain"},
            {"prefix": "s3://raw/c/", "dataset": "c", "target": "y", "task": "regression", "on_drift": "alert"},
            {"prefix": "s3://raw/q/", "dataset": "q", "target": "y", "task": "regression", "params": {"max_epochs": 5}},
        ],
    },
    "routes.yaml",
)


def signal(dataset: str, start: str, event_id: str, features: tuple[str, ...] = ("x",)) -> DriftSignal:
    return DriftSignal(event_id, f"{dataset}-m", "4", dataset, start, start.replace(":00Z", ":59Z"), features)


def test_a_drifted_window_is_a_signal_and_a_quiet_one_is_not() -> None:
    envelope = make_envelope(DRIFT, DRIFT_SAMPLE)
    found = drift_signal(envelope)
    assert found == DriftSignal(
        envelope["event_id"],
        "penguins-classification",
        "4",
        "penguins",
        "2026-12-03T10:00:00Z",
        "2026-12-03T10:01:00Z",
        ("bill_length_mm",),
    )
    assert DriftSignal.from_dict(found.as_dict()) == found
    quiet = make_envelope(DRIFT, {**DRIFT_SAMPLE, "drifted": False, "drifted_features": []})
    assert drift_signal(quiet) is None


@pytest.mark.parametrize("bad", [{"schema": "drift.v1"}, {"schema": "serving_metrics.v1"}, [], "text"])
def test_what_is_not_a_drift_envelope_is_refused(bad: object) -> None:
    with pytest.raises(EventValidationError):
        drift_signal(bad)


def test_one_run_per_dataset_that_retrains_with_the_drift_as_its_event() -> None:
    signals = [
        signal("p", "2026-12-03T10:05:00Z", "e2", ("b",)),
        signal("p", "2026-12-03T10:04:00Z", "e1", ("a", "b")),
        signal("c", "2026-12-03T10:04:00Z", "e3"),  # alert only
        signal("q", "2026-12-03T10:04:00Z", "e4"),  # no on_drift: alert only
        signal("unknown", "2026-12-03T10:04:00Z", "e5"),
    ]
    runs, not_run = plan_drift_runs(signals, ROUTES)
    [run] = runs
    assert run.run_id == "drift__p__20261203T10"
    assert run.conf == {
        "raw_uri": "s3://raw/p/",
        "dataset": "p",
        "target": "y",
        "task": "classification",
        "event": {
            "source": "drift",
            "model_name": "p-m",
            "model_version": "4",
            "drifted_features": ["a", "b"],
            "window_count": 2,
            "windows": ["2026-12-03T10:04:00Z", "2026-12-03T10:05:00Z"],
            "drift_event_ids": ["e1", "e2"],
        },
    }
    assert not_run["c"].endswith("alert only (on_drift: alert)") and "drift in c-m v4 (x)" in not_run["c"]
    assert not_run["q"].endswith("alert only (on_drift: alert)")
    assert "no route names dataset 'unknown'" in not_run["unknown"]


def test_the_same_hour_of_drift_names_the_same_run() -> None:
    """A later event of the same hour (or a redelivered one) plans the run that exists: the DAG skips it."""
    first, _ = plan_drift_runs([signal("p", "2026-12-03T10:04:00Z", "e1")], ROUTES)
    again, _ = plan_drift_runs([signal("p", "2026-12-03T10:59:00Z", "e9")], ROUTES)
    later, _ = plan_drift_runs([signal("p", "2026-12-03T11:00:00Z", "e10")], ROUTES)
    assert first[0].run_id == again[0].run_id != later[0].run_id


def test_a_batch_over_several_hours_starts_the_latest_hours_run() -> None:
    """An older hour's run may exist already (the demo's drift, say): the newer drift in the same batch must not be
    folded into it and skipped."""
    signals = [signal("p", "2026-12-03T19:08:00Z", "e1"), signal("p", "2031-01-01T01:10:00Z", "e2")]
    [run], _ = plan_drift_runs(signals, ROUTES)
    assert run.run_id == "drift__p__20310101T01" and run.conf["event"]["window_count"] == 2
