"""ml.serve.app with a stand-in model injected (no registry, no Kafka): predictions equal the offline path, every class
of bad request is a 4xx JSON error naming what is wrong, the service limits requests by default, and the promotion
watcher is started once per process when the app follows the registry."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from ml.models import load_model, predict
from ml.predictor import LoadedModel, TabularPredictor
from ml.serve.app import (
    DEFAULT_ALIAS_POLL_S,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    ServeSettings,
    build_app,
    serve_state,
)
from ml.settings import KafkaSettings, MlflowSettings
from tests.support.stand_in_model import make_checkpoint, make_spec, raw_rows

MLFLOW = MlflowSettings("http://mlflow.invalid:5000")
KAFKA = KafkaSettings("kafka.invalid:9092")
TAGS = {
    "test.accuracy": "0.82",
    "snapshot_id": "snap-a",
    "dag_run_id": "run-1",
    "code_version": "abc",
    "gate.decision": "first_model",
    "unrelated": "x",
}


def loaded_model(tmp_path: Path, task: str = "classification", quality: str = "medium", version: str = "7"):
    spec = make_spec(task)
    checkpoint = make_checkpoint(tmp_path / f"{task}-{quality}-{version}", spec, quality)
    return LoadedModel(f"standin-{task}", version, TabularPredictor(load_model(checkpoint), spec), dict(TAGS))


def app_for(loaded: LoadedModel, config: ServeSettings | None = None, **kwargs: Any) -> Any:
    return build_app(
        config or ServeSettings(max_rows=5, max_bytes=2000), mlflow=MLFLOW, kafka=KAFKA, loaded=loaded, **kwargs
    )


@pytest.fixture
def client(tmp_path: Path) -> Any:
    return app_for(loaded_model(tmp_path)).test_client()


def post(client: Any, body: Any, raw: bytes | None = None) -> Any:
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post("/predict", data=data, content_type="application/json")


# --- predictions -----------------------------------------------------------------------------------------------------


def test_predictions_equal_the_offline_path(client: Any, tmp_path: Path) -> None:
    rows = raw_rows(5, seed=3)
    response = post(client, {"rows": rows})
    assert response.status_code == 200, response.json
    spec = make_spec()
    outputs, probabilities = predict(
        load_model(make_checkpoint(tmp_path / "offline", spec, "medium")), spec.transform(rows)
    )
    body = response.json
    assert list(body) == ["model", "version", "predictions", "probabilities", "classes"]
    assert (body["model"], body["version"], body["classes"]) == ("standin-classification", "7", ["no", "yes"])
    assert body["predictions"] == spec.decode_labels(outputs)
    assert np.allclose(body["probabilities"], probabilities, atol=1e-7)


def test_regression_answers_values_without_probabilities(tmp_path: Path) -> None:
    client = app_for(loaded_model(tmp_path, "regression", "good")).test_client()
    rows = raw_rows(4, seed=1)
    body = post(client, {"rows": rows}).json
    spec = make_spec("regression")
    values, _ = predict(load_model(make_checkpoint(tmp_path / "offline", spec, "good")), spec.transform(rows))
    assert np.allclose(body["predictions"], values) and "probabilities" not in body and "classes" not in body


def test_a_non_finite_prediction_is_null_in_the_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = loaded_model(tmp_path, "regression")
    monkeypatch.setattr(model.predictor, "predict_rows", lambda rows: ([1.5, math.nan, math.inf], None))
    response = post(app_for(model).test_client(), {"rows": raw_rows(3)})
    assert response.status_code == 200 and response.json["predictions"] == [1.5, None, None]
    assert b"NaN" not in response.data and b"Infinity" not in response.data


def test_missing_values_are_imputed_not_refused(client: Any) -> None:
    response = post(client, {"rows": [{"x1": None, "x2": None, "color": None}, {"x1": 1, "x2": 2.5, "color": 3}]})
    assert response.status_code == 200 and len(response.json["predictions"]) == 2


# --- bad requests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "raw", "status", "names"),
    [
        (None, b'{"rows": [', 400, ["not valid JSON"]),
        (None, b"", 400, ["empty request body"]),
        (None, b"\xff\xfe", 400, ["JSON"]),
        ([1, 2], None, 400, ["JSON object", "array"]),
        ({"data": []}, None, 400, ["missing 'rows'", "data"]),
        ({"rows": [], "extra": 1}, None, 400, ["unknown top-level fields", "extra"]),
        ({"rows": {"x1": 1}}, None, 400, ["'rows' must be an array", "object"]),
        ({"rows": []}, None, 400, ["'rows' is empty"]),
        ({"rows": [5]}, None, 422, ["row 0", "object"]),
        ({"rows": [{"x1": 1.0, "color": "red"}]}, None, 422, ["row 0", "missing fields", "x2"]),
        (
            {"rows": [{"x1": 1.0, "x2": 1.0, "color": "red", "colour": "red"}]},
            None,
            422,
            ["row 0", "unknown fields", "colour"],
        ),
        (
            {"rows": [{"x1": 1.0, "x2": 1.0, "color": "red"}, {"x1": "high", "x2": 1.0, "color": "red"}]},
            None,
            422,
            ["row 1, column 'x1'", "expected a number", "string"],
        ),
        ({"rows": [{"x1": True, "x2": 1.0, "color": "red"}]}, None, 422, ["row 0, column 'x1'", "boolean"]),
        ({"rows": [{"x1": 1.0, "x2": [1], "color": "red"}]}, None, 422, ["row 0, column 'x2'", "array"]),
        ({"rows": [{"x1": 1.0, "x2": 1.0, "color": {"a": 1}}]}, None, 422, ["row 0, column 'color'", "object"]),
        ({"rows": [{"x1": 1.0, "x2": 1.0, "color": "red"}] * 6}, None, 413, ["too many rows", "6 > 5"]),
        ({"rows": [{"x1": 1.0, "x2": 1.0, "color": "r" * 3000}]}, None, 413, ["over 2000 bytes", "max_bytes"]),
        # Numbers the model cannot take and nesting the parser cannot take (issue 14): 400s that say where.
        (None, b'{"rows": [{"x1": 1' + b"0" * 400 + b', "x2": 1, "color": "red"}]}', 400, ["row 0, column 'x1'"]),
        (None, b'{"rows": [{"x1": 1e39, "x2": 1, "color": "red"}]}', 400, ["row 0, column 'x1'", "float32"]),
        (None, b'{"rows": [{"x1": 1e400, "x2": 1, "color": "red"}]}', 400, ["row 0, column 'x1'", "float32"]),
        (None, b'{"rows": [{"x1": NaN, "x2": 1, "color": "red"}]}', 400, ["row 0, column 'x1'", "NaN"]),
        (None, b'{"rows": [{"x1": 1, "x2": -Infinity, "color": "red"}]}', 400, ["row 0, column 'x2'", "-Infinity"]),
        (None, b'{"rows": [{"x1": ' + b"[" * 1500, 400, ["nested deeper than"]),
        (None, b'{"rows": [{"x1": ' + b"[" * 100 + b"]" * 100 + b"}]}", 400, ["nested deeper than", "row 0"]),
    ],
)
def test_bad_requests_are_4xx_json_errors_naming_the_problem(
    client: Any, body: Any, raw: bytes | None, status: int, names: list[str]
) -> None:
    response = post(client, body, raw)
    assert response.status_code == status, response.data
    assert response.is_json and set(response.json) == {"error"}
    for name in names:
        assert name in response.json["error"]
    assert post(client, {"rows": raw_rows(1)}).status_code == 200  # the worker is still fine


def test_errors_are_reported_for_several_rows_at_once(client: Any) -> None:
    rows = [{"x1": "a", "x2": 1.0, "color": "red"}, {"x2": 1.0, "color": "red"}, {"x1": 1, "x2": "b", "color": "x"}]
    error = post(client, {"rows": rows}).json["error"]
    assert "row 0, column 'x1'" in error and "row 1: missing fields ['x1']" in error and "row 2, column 'x2'" in error


def test_a_value_the_model_cannot_transform_is_a_422(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = serve_state(client.application).holder.current

    def predict_rows(rows: Any) -> Any:
        raise ValueError("row 0, column 'x1': not a number: 'NaN-ish'")

    monkeypatch.setattr(model.predictor, "predict_rows", predict_rows)
    response = post(client, {"rows": raw_rows(1)})
    assert response.status_code == 422 and response.json == {"error": "row 0, column 'x1': not a number: 'NaN-ish'"}


def test_other_routes_and_methods_answer_json(client: Any) -> None:
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").json


def test_an_unexpected_failure_is_a_500_json_and_the_worker_keeps_serving(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = serve_state(client.application).holder.current
    original: Callable[..., Any] = model.predictor.predict_rows
    monkeypatch.setattr(model.predictor, "predict_rows", lambda rows: (_ for _ in ()).throw(RuntimeError("boom")))
    response = post(client, {"rows": raw_rows(1)})
    assert response.status_code == 500 and response.json == {"error": "internal error: RuntimeError"}
    monkeypatch.setattr(model.predictor, "predict_rows", original)
    assert post(client, {"rows": raw_rows(1)}).status_code == 200


# --- what is served --------------------------------------------------------------------------------------------------


def test_health_and_model_describe_what_is_served(client: Any) -> None:
    health = client.get("/health").json
    assert health == {"status": "ok", "model": "standin-classification", "version": "7", "watcher": None}
    info = client.get("/model").json
    assert info["version"] == "7" and info["metrics"] == {"accuracy": 0.82}
    assert info["lineage"] == {"snapshot_id": "snap-a", "dag_run_id": "run-1", "code_version": "abc"}
    assert info["gate"] == {"decision": "first_model"} and info["input_columns"] == ["x1", "x2", "color"]
    assert (info["task"], info["classes"], info["reloads"], info["last_reload_error"]) == (
        "classification",
        ["no", "yes"],
        0,
        None,
    )


def test_reload_swaps_only_a_completely_loaded_model(tmp_path: Path) -> None:
    client = app_for(loaded_model(tmp_path)).test_client()
    holder = serve_state(client.application).holder
    newer = loaded_model(tmp_path, quality="good", version="8")

    def failing_loader(name: str, version: str) -> LoadedModel:
        raise OSError("artifact store unreachable")

    assert not holder.reload_champion(failing_loader, lambda name: "8")
    info = client.get("/model").json
    assert info["version"] == "7" and "unreachable" in info["last_reload_error"]
    assert not holder.reload_champion(lambda n, v: newer, lambda name: "7")  # already served: nothing to do
    assert holder.reload_champion(lambda n, v: newer, lambda name: "8")
    assert post(client, {"rows": raw_rows(1)}).json["version"] == "8"
    assert client.get("/model").json["reloads"] == 1 and client.get("/model").json["last_reload_error"] is None


# --- settings and the model to serve ---------------------------------------------------------------------------------


def test_the_app_needs_a_model_name() -> None:
    with pytest.raises(ValueError, match="MLOPS_SERVE_MODEL"):
        build_app(ServeSettings(), mlflow=MLFLOW, kafka=KAFKA)


def test_the_app_factory_reads_the_model_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.serve import create_app

    monkeypatch.delenv("MLOPS_SERVE_MODEL", raising=False)
    with pytest.raises(ValueError, match="MLOPS_SERVE_MODEL"):
        create_app()


def test_the_app_factory_passes_the_environments_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.serve import create_app

    built: list[tuple[ServeSettings, dict[str, Any]]] = []
    monkeypatch.setattr("ml.serve.app.build_app", lambda config, **kwargs: built.append((config, kwargs)) or "app")
    monkeypatch.setenv("MLOPS_SERVE_MODEL", "iris-classification")
    monkeypatch.setenv("MLOPS_SERVE_MAX_ROWS", "12")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    assert create_app() == "app"
    [(config, kwargs)] = built
    assert (config.model_name, config.max_rows) == ("iris-classification", 12)
    assert kwargs == {
        "mlflow": MlflowSettings("http://mlflow.example:5000"),
        "kafka": KafkaSettings("kafka.example:9092"),
    }


def test_serve_settings_from_the_environment() -> None:
    assert ServeSettings.from_env({}) == ServeSettings(None, DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES, DEFAULT_ALIAS_POLL_S)
    env = {
        "MLOPS_SERVE_MODEL": "iris-classification",
        "MLOPS_SERVE_MAX_ROWS": "10",
        "MLOPS_SERVE_MAX_BYTES": "4096",
        "MLOPS_SERVE_ALIAS_POLL_S": "2.5",
    }
    assert ServeSettings.from_env(env) == ServeSettings("iris-classification", 10, 4096, 2.5)
    assert ServeSettings.from_env({"MLOPS_SERVE_MODEL": ""}).model_name is None
    with pytest.raises(ValueError):
        ServeSettings.from_env({"MLOPS_SERVE_MAX_ROWS": "many"})


class FakeWatcher:
    started: ClassVar[list[FakeWatcher]] = []

    def __init__(self, holder: Any, kafka: KafkaSettings, loader: Any, resolve: Any, *, alias_poll_s: float) -> None:
        self.holder, self.kafka, self.loader, self.resolve, self.alias_poll_s = (
            holder,
            kafka,
            loader,
            resolve,
            alias_poll_s,
        )
        self.alive = True
        self.last_error = "cannot follow: fake"
        import threading

        self.ready = threading.Event()

    def start(self) -> None:
        FakeWatcher.started.append(self)


def test_an_app_that_loads_the_champion_follows_promotions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = loaded_model(tmp_path)
    loads: list[tuple[Any, ...]] = []

    def load_version(mlflow: MlflowSettings, name: str, version: str, require_gated: bool = False) -> LoadedModel:
        assert require_gated, "serving loads only versions that passed the promotion gate"
        loads.append((mlflow, name, version))
        return model

    FakeWatcher.started = []
    monkeypatch.setattr("ml.serve.app.load_version", load_version)
    monkeypatch.setattr("ml.serve.app.PromotionWatcher", FakeWatcher)
    app = build_app(ServeSettings("standin-classification", alias_poll_s=42.0), mlflow=MLFLOW, kafka=KAFKA)
    assert loads == [(MLFLOW, "standin-classification", "champion")]
    [watcher] = FakeWatcher.started
    assert (watcher.kafka, watcher.alias_poll_s, watcher.holder.current) == (KAFKA, 42.0, model)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/health").json["watcher"] == {
            "alive": True,
            "following": False,
            "last_error": "cannot follow: fake",
        }
    assert len(FakeWatcher.started) == 1  # once per process, not per request
    # The watcher's loader and resolver go to the app's MLflow.
    assert watcher.loader("standin-classification", "9") is model and loads[-1] == (
        MLFLOW,
        "standin-classification",
        "9",
    )


def test_a_forked_worker_starts_its_own_watcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeWatcher.started = []
    monkeypatch.setattr("ml.serve.app.PromotionWatcher", FakeWatcher)
    app = app_for(loaded_model(tmp_path), watch_promotions=True)
    assert len(FakeWatcher.started) == 1
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as if gunicorn had forked a worker: threads did not survive
    app.test_client().get("/health")
    assert len(FakeWatcher.started) == 2


def test_an_injected_model_is_not_watched_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeWatcher.started = []
    monkeypatch.setattr("ml.serve.app.PromotionWatcher", FakeWatcher)
    app = app_for(loaded_model(tmp_path))
    app.test_client().get("/health")
    assert FakeWatcher.started == [] and serve_state(app).watcher is None


# --- the prediction service limits requests by default (moved from tests/unit/test_security.py) ----------------------


def test_prediction_service_limits_body_size_and_rows_by_default(tmp_path: Path) -> None:
    assert (DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES) == (1000, 1024 * 1024)
    config = ServeSettings.from_env({})
    assert (config.max_rows, config.max_bytes) == (DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES)
    assert (ServeSettings().max_rows, ServeSettings().max_bytes) == (DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES)

    app = app_for(loaded_model(tmp_path, version="1"), ServeSettings())
    assert app.config["MAX_CONTENT_LENGTH"] == DEFAULT_MAX_BYTES
    assert serve_state(app).config.max_rows == DEFAULT_MAX_ROWS
    client = app.test_client()

    def post_raw(data: bytes) -> Any:
        return client.post("/predict", data=data, content_type="application/json")

    oversized = post_raw(b'{"rows": [], "pad": "' + b"x" * DEFAULT_MAX_BYTES + b'"}')
    assert oversized.status_code == 413 and "max_bytes" in oversized.json["error"]
    assert str(DEFAULT_MAX_BYTES) in oversized.json["error"]
    row = raw_rows(1, seed=1)[0]
    too_many = post_raw(json.dumps({"rows": [row] * (DEFAULT_MAX_ROWS + 1)}).encode())
    assert too_many.status_code == 413 and "too many rows" in too_many.json["error"]
    at_limit = post_raw(json.dumps({"rows": [row] * DEFAULT_MAX_ROWS}).encode())
    assert at_limit.status_code == 200 and len(at_limit.json["predictions"]) == DEFAULT_MAX_ROWS
