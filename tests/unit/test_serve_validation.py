"""The prediction service with a stand-in model injected (no registry, no Kafka): predictions equal the offline
path, and every class of bad request is a 4xx JSON error naming what is wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.registry import LoadedModel, TabularPredictor
from ml.serve import create_app
from tests.support.stand_in_model import make_checkpoint, make_spec, raw_rows

pytestmark = pytest.mark.unit

TAGS = {
    "test.accuracy": "0.82",
    "snapshot_id": "snap-a",
    "dag_run_id": "run-1",
    "code_version": "abc",
    "gate.decision": "first_model",
    "unrelated": "x",
}


def loaded_model(tmp_path: Path, task: str = "classification", quality: str = "medium") -> LoadedModel:
    from ml.models import load_model

    spec = make_spec(task)
    checkpoint = make_checkpoint(tmp_path / f"{task}-{quality}", spec, quality)
    return LoadedModel(f"standin-{task}", "7", TabularPredictor(load_model(checkpoint), spec), dict(TAGS))


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MLOPS_SERVE_MAX_ROWS", "5")
    monkeypatch.setenv("MLOPS_SERVE_MAX_BYTES", "2000")
    app = create_app(loaded=loaded_model(tmp_path))
    return app.test_client()


def post(client: Any, body: Any, raw: bytes | None = None) -> Any:
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post("/predict", data=data, content_type="application/json")


def test_predictions_equal_the_offline_path(client: Any, tmp_path: Path) -> None:
    from ml.models import load_model, predict

    rows = raw_rows(5, seed=3)
    response = post(client, {"rows": rows})
    assert response.status_code == 200, response.json
    spec = make_spec()
    outputs, probabilities = predict(
        load_model(make_checkpoint(tmp_path / "offline", spec, "medium")), spec.transform(rows)
    )
    body = response.json
    assert (body["model"], body["version"], body["classes"]) == ("standin-classification", "7", ["no", "yes"])
    assert body["predictions"] == spec.decode_labels(outputs)
    assert np.allclose(body["probabilities"], probabilities, atol=1e-7)


def test_regression_answers_values_without_probabilities(tmp_path: Path) -> None:
    from ml.models import load_model, predict

    client = create_app(loaded=loaded_model(tmp_path, "regression", "good")).test_client()
    rows = raw_rows(4, seed=1)
    body = post(client, {"rows": rows}).json
    spec = make_spec("regression")
    values, _ = predict(load_model(make_checkpoint(tmp_path / "offline", spec, "good")), spec.transform(rows))
    assert np.allclose(body["predictions"], values) and "probabilities" not in body and "classes" not in body


def test_missing_values_are_imputed_not_refused(client: Any) -> None:
    response = post(client, {"rows": [{"x1": None, "x2": None, "color": None}, {"x1": 1, "x2": 2.5, "color": 3}]})
    assert response.status_code == 200 and len(response.json["predictions"]) == 2


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
        ({"rows": [{"x1": 1.0, "x2": 1.0, "color": "r" * 3000}]}, None, 413, ["over 2000 bytes"]),
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


def test_other_routes_and_methods_answer_json(client: Any) -> None:
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").json


def test_an_unexpected_failure_is_a_500_json_and_the_worker_keeps_serving(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml.serve.app import serve_state

    model = serve_state(client.application).holder.current
    original: Callable[..., Any] = model.predictor.predict_rows
    monkeypatch.setattr(model.predictor, "predict_rows", lambda rows: (_ for _ in ()).throw(RuntimeError("boom")))
    response = post(client, {"rows": raw_rows(1)})
    assert response.status_code == 500 and response.json == {"error": "internal error: RuntimeError"}
    monkeypatch.setattr(model.predictor, "predict_rows", original)
    assert post(client, {"rows": raw_rows(1)}).status_code == 200


def test_health_and_model_describe_what_is_served(client: Any) -> None:
    health = client.get("/health").json
    assert health["status"] == "ok" and health["version"] == "7" and health["watcher"] is None
    info = client.get("/model").json
    assert info["version"] == "7" and info["metrics"] == {"accuracy": 0.82}
    assert info["lineage"] == {"snapshot_id": "snap-a", "dag_run_id": "run-1", "code_version": "abc"}
    assert info["gate"] == {"decision": "first_model"} and info["input_columns"] == ["x1", "x2", "color"]


def test_reload_swaps_only_a_completely_loaded_model(tmp_path: Path) -> None:
    from ml.serve.app import serve_state

    client = create_app(loaded=loaded_model(tmp_path)).test_client()
    holder = serve_state(client.application).holder
    newer = loaded_model(tmp_path, quality="good")
    newer.version = "8"

    def failing_loader(name: str, version: str) -> LoadedModel:
        raise OSError("artifact store unreachable")

    assert not holder.reload_champion(failing_loader, lambda name: "8")
    assert (
        client.get("/model").json["version"] == "7" and "unreachable" in client.get("/model").json["last_reload_error"]
    )
    assert not holder.reload_champion(lambda n, v: newer, lambda name: "7")  # already served: nothing to do
    assert holder.reload_champion(lambda n, v: newer, lambda name: "8")
    assert post(client, {"rows": raw_rows(1)}).json["version"] == "8"


def test_the_app_needs_a_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_SERVE_MODEL", raising=False)
    with pytest.raises(ValueError, match="MLOPS_SERVE_MODEL"):
        create_app()
