"""ml.serve.telemetry: every /predict request, answered or refused, becomes one mlops.serving.metrics.v1 message (valid
for its schema) with its latency, rows, model, version, status and prediction summary; inputs only for a sampled
request, capped; publishing never fails a request and is off when asked. A fake publisher, a fake clock and a scripted
sampler: no Kafka, no sleeps. (Against the stack's broker: tests/integration/ml/serve/test_serving_metrics.py.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ml.events.envelope import EventValidationError, make_envelope
from ml.serve.app import ServeSettings, build_app, serve_state
from ml.serve.telemetry import MAX_LOGGED_STRING, ServingTelemetry, logged_inputs, prediction_summary
from ml.topics import SERVING_METRICS
from tests.support.fake_clock import FakeClock
from tests.support.stand_in_model import raw_rows
from tests.unit.ml.events.samples import SERVING
from tests.unit.ml.serve.fakes import FakePublisher, ScriptedSampler
from tests.unit.ml.serve.test_app import KAFKA, MLFLOW, loaded_model, post

# --- the message's schema --------------------------------------------------------------------------------------------

REGRESSION = {
    **SERVING,
    "task": "regression",
    "prediction_summary": {"count": 3, "mean": 2.5, "min": 1.0, "max": None, "non_finite": 1},
}
REFUSED = {**SERVING, "status": 422, "rows": 0, "prediction_summary": None, "rows_logged": 0, "inputs": None}


@pytest.mark.parametrize("payload", [SERVING, REGRESSION, REFUSED], ids=["classification", "regression", "refused"])
def test_valid_messages_pass_the_schema(payload: dict[str, Any]) -> None:
    assert make_envelope(SERVING_METRICS, payload)["payload"] == payload


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"status": 99}, "status"),
        ({"status": "200"}, "status"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"request_id": "not-hex"}, "request_id"),
        ({"task": "ranking"}, "task"),
        ({"rows_logged": 1001}, "rows_logged"),
        ({"inputs": {"x1": [0.5] * 1001}}, "inputs"),
        ({"inputs": {"color": ["c" * (MAX_LOGGED_STRING + 1)]}}, "inputs"),
        ({"inputs": {"x1": [[1]]}}, "inputs"),
        ({"inputs": {}}, "inputs"),
        ({"prediction_summary": {"count": 3, "class_counts": {"a": 3}, "mean": 1.0}}, "prediction_summary"),
        ({"prediction_summary": {"count": 0, "class_counts": {}}}, "prediction_summary"),
        ({"prediction_summary": {"count": 2, "class_counts": {"a": -1}}}, "prediction_summary"),
        ({"user_agent": "curl"}, "user_agent"),
    ],
)
def test_the_schema_refuses_what_a_consumer_could_not_rely_on(change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(EventValidationError, match=complaint):
        make_envelope(SERVING_METRICS, {**SERVING, **change})


# --- the pieces ------------------------------------------------------------------------------------------------------


def test_prediction_summaries() -> None:
    assert prediction_summary("classification", ["yes", "no", "yes"]) == {
        "count": 3,
        "class_counts": {"yes": 2, "no": 1},
    }
    assert prediction_summary("regression", [1.0, 3.0, float("nan"), 2.0]) == {
        "count": 4,
        "mean": 2.0,
        "min": 1.0,
        "max": 3.0,
        "non_finite": 1,
    }
    assert prediction_summary("regression", [float("inf")]) == {
        "count": 1,
        "mean": None,
        "min": None,
        "max": None,
        "non_finite": 1,
    }
    assert prediction_summary("classification", []) is None


def test_logged_inputs_are_by_column_capped_at_random_and_in_request_order() -> None:
    rows = [{"x1": i, "x2": None, "color": "c" * 300 if i == 4 else "red"} for i in range(5)]
    sampler = ScriptedSampler()
    assert logged_inputs(rows[:2], ["x1", "x2", "color"], 3, sampler) == {
        "x1": [0, 1],
        "x2": [None, None],
        "color": ["red", "red"],
    }
    assert sampler.samples == []  # all rows fit: no draw
    capped = logged_inputs(rows, ["x1", "x2", "color"], 3, sampler)
    assert sampler.samples == [(5, 3)] and capped["x1"] == [2, 3, 4]  # the sampler's picks, back in order
    assert capped["color"][-1] == "c" * MAX_LOGGED_STRING


# --- the app ---------------------------------------------------------------------------------------------------------


def metrics_app(
    tmp_path: Path, config: ServeSettings | None = None, task: str = "classification", sampler: Any = None
) -> tuple[Any, FakePublisher, FakeClock]:
    publisher, clock = FakePublisher(), FakeClock()
    app = build_app(
        config or ServeSettings(max_rows=5, max_bytes=2000),
        mlflow=MLFLOW,
        kafka=KAFKA,
        loaded=loaded_model(tmp_path, task),
        publisher_factory=lambda: publisher,
        sampler=sampler if sampler is not None else ScriptedSampler(),
        clock=clock,
    )
    return app, publisher, clock


def slow_predictions(app: Any, clock: FakeClock, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's predict_rows takes `seconds` on the fake clock."""
    predictor = serve_state(app).holder.current.predictor
    original = predictor.predict_rows

    def predict_rows(rows: Any) -> Any:
        clock.advance(seconds)
        return original(rows)

    monkeypatch.setattr(predictor, "predict_rows", predict_rows)


def test_each_predict_request_is_one_message_with_its_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, publisher, clock = metrics_app(tmp_path)
    slow_predictions(app, clock, 0.0125, monkeypatch)
    client = app.test_client()
    rows = raw_rows(3, seed=5)
    response = post(client, {"rows": rows})
    assert response.status_code == 200
    client.get("/health"), client.get("/model"), client.get("/metrics")  # not prediction requests: no message
    [(topic, payload, key)] = publisher.messages
    request_id = response.headers["X-Request-Id"]
    assert topic is SERVING_METRICS and key == f"standin-classification:{request_id}"
    assert payload == {
        "request_id": request_id,
        "model_name": "standin-classification",
        "model_version": "7",
        "task": "classification",
        "status": 200,
        "latency_ms": 12.5,
        "rows": 3,
        "prediction_summary": {"count": 3, "class_counts": _counts(response.json["predictions"])},
        "rows_logged": 0,
        "inputs": None,
    }
    assert publisher.envelopes[0]["dag_run_id"] is None


def _counts(labels: list[str]) -> dict[str, int]:
    return {label: labels.count(label) for label in dict.fromkeys(labels)}


def test_refused_and_failed_requests_are_published_with_their_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, publisher, _ = metrics_app(tmp_path)
    client = app.test_client()
    assert post(client, None, b"{not json").status_code == 400
    assert post(client, {"rows": [{"x1": "a", "x2": 1.0, "color": "red"}]}).status_code == 422
    assert post(client, {"rows": raw_rows(6)}).status_code == 413
    predictor = serve_state(app).holder.current.predictor
    monkeypatch.setattr(predictor, "predict_rows", lambda rows: (_ for _ in ()).throw(RuntimeError("boom")))
    assert post(client, {"rows": raw_rows(1)}).status_code == 500
    assert [p["status"] for p in publisher.payloads] == [400, 422, 413, 500]
    for payload in publisher.payloads:
        assert (payload["rows"], payload["prediction_summary"], payload["inputs"], payload["rows_logged"]) == (
            0,
            None,
            None,
            0,
        )


def test_regression_requests_summarise_their_values(tmp_path: Path) -> None:
    app, publisher, _ = metrics_app(tmp_path, task="regression")
    body = post(app.test_client(), {"rows": raw_rows(4, seed=2)}).json
    values = body["predictions"]
    summary = publisher.payloads[0]["prediction_summary"]
    assert summary == pytest.approx(
        {"count": 4, "mean": sum(values) / 4, "min": min(values), "max": max(values), "non_finite": 0}
    )
    assert publisher.payloads[0]["task"] == "regression"


def test_inputs_are_logged_only_for_sampled_requests_and_capped(tmp_path: Path) -> None:
    sampler = ScriptedSampler([0.1, 0.9, 0.2])  # rate 0.5: the first and third requests are sampled
    config = ServeSettings(max_rows=5, max_bytes=2000, payload_sample_rate=0.5, max_logged_rows=2)
    app, publisher, _ = metrics_app(tmp_path, config, sampler=sampler)
    client = app.test_client()
    one, five = raw_rows(1, seed=1), raw_rows(5, seed=2)
    for rows in (one, one, five):
        assert post(client, {"rows": rows}).status_code == 200
    first, second, third = publisher.payloads
    assert first["inputs"] == {column: [one[0][column]] for column in ("x1", "x2", "color")}
    assert first["rows_logged"] == 1
    assert (second["inputs"], second["rows_logged"]) == (None, 0)
    assert third["rows"] == 5 and third["rows_logged"] == 2, "capped at max_logged_rows"
    assert third["inputs"] == {column: [five[3][column], five[4][column]] for column in ("x1", "x2", "color")}
    assert third["prediction_summary"]["count"] == 5, "the summary covers every row"
    assert sampler.values == [] and sampler.samples == [(5, 2)]


def test_sampling_is_off_by_default_and_never_draws(tmp_path: Path) -> None:
    assert ServeSettings().payload_sample_rate == 0.0
    app, publisher, _ = metrics_app(tmp_path, sampler=ScriptedSampler([]))  # a draw would fail: no value scripted
    assert post(app.test_client(), {"rows": raw_rows(2)}).status_code == 200
    assert publisher.payloads[0]["inputs"] is None and serve_state(app).telemetry.errors == 0


def test_publishing_off_publishes_nothing_and_serves(tmp_path: Path) -> None:
    made: list[FakePublisher] = []
    app = build_app(
        ServeSettings(metrics_enabled=False),
        mlflow=MLFLOW,
        kafka=KAFKA,
        loaded=loaded_model(tmp_path),
        publisher_factory=lambda: made.append(FakePublisher()) or made[-1],
    )
    assert post(app.test_client(), {"rows": raw_rows(2)}).status_code == 200
    assert made == [] and not serve_state(app).telemetry.enabled


def test_a_failing_publisher_never_fails_the_request(tmp_path: Path) -> None:
    app, publisher, _ = metrics_app(tmp_path)
    publisher.close()  # publish() now raises
    client = app.test_client()
    for _ in range(3):
        assert post(client, {"rows": raw_rows(1)}).status_code == 200
    assert serve_state(app).telemetry.errors == 3 and publisher.messages == []


def test_one_publisher_per_process_created_on_first_use_and_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[FakePublisher] = []
    app = build_app(
        ServeSettings(),
        mlflow=MLFLOW,
        kafka=KAFKA,
        loaded=loaded_model(tmp_path),
        publisher_factory=lambda: made.append(FakePublisher()) or made[-1],
    )
    client = app.test_client()
    assert made == [], "nothing is started before the first request (gunicorn forks after loading)"
    for _ in range(3):
        post(client, {"rows": raw_rows(1)})
    assert len(made) == 1 and len(made[0].messages) == 3
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)  # as if gunicorn had forked a worker
    post(client, {"rows": raw_rows(1)})
    assert len(made) == 2 and len(made[1].messages) == 1 and not made[0].closed
    serve_state(app).telemetry.close()
    assert made[1].closed and serve_state(app).telemetry.stats() is None


def test_telemetry_close_without_a_publisher_is_harmless() -> None:
    telemetry = ServingTelemetry(lambda: FakePublisher())
    telemetry.close()
    assert telemetry.stats() is None


def test_metrics_settings_from_the_environment() -> None:
    config = ServeSettings.from_env({})
    assert (config.metrics_enabled, config.metrics_buffer, config.payload_sample_rate, config.max_logged_rows) == (
        True,
        10000,
        0.0,
        100,
    )
    assert config.prometheus_multiproc_dir is None
    env = {
        "MLOPS_SERVE_METRICS": "0",
        "MLOPS_SERVE_METRICS_BUFFER": "50",
        "MLOPS_SERVE_PAYLOAD_SAMPLE_RATE": "0.25",
        "MLOPS_SERVE_PAYLOAD_MAX_ROWS": "20",
        "PROMETHEUS_MULTIPROC_DIR": "/tmp/x",
    }
    assert ServeSettings.from_env(env) == ServeSettings(
        metrics_enabled=False,
        metrics_buffer=50,
        payload_sample_rate=0.25,
        max_logged_rows=20,
        prometheus_multiproc_dir="/tmp/x",
    )
    assert ServeSettings.from_env({"MLOPS_SERVE_METRICS": "true"}).metrics_enabled
    for bad in (
        {"MLOPS_SERVE_METRICS": "maybe"},
        {"MLOPS_SERVE_METRICS_BUFFER": "0"},
        {"MLOPS_SERVE_PAYLOAD_SAMPLE_RATE": "1.5"},
        {"MLOPS_SERVE_PAYLOAD_MAX_ROWS": "1001"},
        {"MLOPS_SERVE_PAYLOAD_MAX_ROWS": "0"},
    ):
        with pytest.raises(ValueError):
            ServeSettings.from_env(bad)
