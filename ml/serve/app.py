"""The Flask prediction service: validation, prediction, and hot reload of the champion.

Endpoints
  POST /predict  {"rows": [{feature: value, ...}, ...]}
                 -> {"model", "version", "predictions": [...], "probabilities": [[...]], "classes": [...]}
                 (probabilities and classes for classification only)
  GET  /health   liveness plus the version served and the watcher's state
  GET  /model    version, test metrics, lineage tags, gate decision of the model served

Every bad request is a 4xx JSON {"error": "..."} naming what is wrong; an unexpected failure is a 500 JSON and the
worker keeps serving. Predictions are `FeatureSpec.transform` + `ml.models.predict` on the raw rows, the same code
offline evaluation runs (`ml.predictor.TabularPredictor`).

Hot reload of the champion: ml.serve.reload. Settings: `ServeSettings` (the model, limits, alias poll period) plus the
MLflow and Kafka slices; `ml.serve.create_app()` reads them from the environment (MLOPS_SERVE_MODEL,
MLOPS_SERVE_MAX_ROWS (1000), MLOPS_SERVE_MAX_BYTES (1 MiB), MLOPS_SERVE_ALIAS_POLL_S (300), KAFKA_BOOTSTRAP_SERVERS,
MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ml.json_values import json_safe
from ml.predictor import LoadedModel, load_version, resolve_version
from ml.registry.conventions import CHAMPION
from ml.serve.reload import ModelHolder, PromotionWatcher
from ml.serve.validation import RequestError, parse_body, validate_rows
from ml.settings import KafkaSettings, MlflowSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_ALIAS_POLL_S = 300.0


@dataclass(frozen=True)
class ServeSettings:
    """The service's own settings: which model, and its limits."""

    model_name: str | None = None
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES
    alias_poll_s: float = DEFAULT_ALIAS_POLL_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServeSettings:
        return cls(
            model_name=env.get("MLOPS_SERVE_MODEL") or None,
            max_rows=int(env.get("MLOPS_SERVE_MAX_ROWS", DEFAULT_MAX_ROWS)),
            max_bytes=int(env.get("MLOPS_SERVE_MAX_BYTES", DEFAULT_MAX_BYTES)),
            alias_poll_s=float(env.get("MLOPS_SERVE_ALIAS_POLL_S", DEFAULT_ALIAS_POLL_S)),
        )


class ServeState:
    """What the app holds: the model, the settings and the (per-process) promotion watcher."""

    def __init__(
        self, holder: ModelHolder, config: ServeSettings, watch: bool, *, mlflow: MlflowSettings, kafka: KafkaSettings
    ) -> None:
        self.holder = holder
        self.config = config
        self.watch = watch
        self.mlflow = mlflow
        self.kafka = kafka
        self.watcher: PromotionWatcher | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def ensure_watcher(self) -> None:
        """Start the watcher in this process (threads do not survive gunicorn's fork, hence the pid check)."""
        if not self.watch or self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self.watcher = PromotionWatcher(
                self.holder,
                self.kafka,
                loader=lambda name, version: load_version(self.mlflow, name, version, require_gated=True),
                resolve=self._champion_version,
                alias_poll_s=self.config.alias_poll_s,
            )
            self.watcher.start()
            self._pid = os.getpid()

    def _champion_version(self, name: str) -> str:
        from ml.clients import mlflow_client

        return str(resolve_version(mlflow_client(self.mlflow), name, CHAMPION).version)


def build_app(
    config: ServeSettings,
    *,
    mlflow: MlflowSettings,
    kafka: KafkaSettings,
    loaded: LoadedModel | None = None,
    watch_promotions: bool | None = None,
) -> Flask:
    """The Flask app serving `config.model_name`'s champion (loaded from MLflow unless `loaded` injects one, as tests
    do). The promotion watcher runs by default only when the app loads its model from the registry itself."""
    name = config.model_name or (loaded.name if loaded else None)
    if not name:
        raise ValueError("no model to serve: set the model name (MLOPS_SERVE_MODEL, e.g. DATASET-classification)")
    watch = (loaded is None) if watch_promotions is None else watch_promotions
    if loaded is None:
        loaded = load_version(mlflow, name, CHAMPION, require_gated=True)
        log.info("%s: serving champion v%s", name, loaded.version)
    state = ServeState(ModelHolder(name, loaded), config, watch, mlflow=mlflow, kafka=kafka)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["mlops_serve"] = state

    @app.before_request
    def _start_watcher() -> None:
        state.ensure_watcher()

    @app.post("/predict")
    def predict() -> Response:
        model = state.holder.current  # one model for the whole request, even if a reload swaps it meanwhile
        rows = validate_rows(parse_body(request.get_data(cache=False)), model.spec, config.max_rows)
        try:
            outputs, probabilities = model.predictor.predict_rows(rows)
        except ValueError as error:  # a value the spec cannot transform: the client's data, not a server fault
            raise RequestError(str(error), 422) from None
        body: dict[str, Any] = {"model": state.holder.name, "version": model.version, "predictions": outputs}
        if probabilities is not None:
            body["probabilities"] = [[float(p) for p in row] for row in probabilities]
            body["classes"] = model.predictor.classes
        else:
            body["predictions"] = json_safe([float(v) for v in outputs])
        return jsonify(body)

    @app.get("/health")
    def health() -> Response:
        model = state.holder.current
        watcher = state.watcher
        return jsonify(
            {
                "status": "ok",
                "model": state.holder.name,
                "version": model.version,
                "watcher": None
                if watcher is None
                else {"alive": watcher.alive, "following": watcher.ready.is_set(), "last_error": watcher.last_error},
            }
        )

    @app.get("/model")
    def model_info() -> Response:
        model = state.holder.current
        return jsonify(
            {
                "model": state.holder.name,
                "version": model.version,
                "aliases": model.aliases,
                "loaded_at": model.loaded_at,
                "reloads": state.holder.reloads,
                "last_reload_error": state.holder.last_reload_error,
                "task": model.spec.task,
                "classes": model.predictor.classes,
                "input_columns": model.spec.input_columns,
                "metrics": model.test_metrics,
                "lineage": model.lineage,
                "gate": {k.removeprefix("gate."): v for k, v in model.tags.items() if k.startswith("gate.")},
            }
        )

    @app.errorhandler(RequestError)
    def _request_error(error: RequestError) -> tuple[Response, int]:
        return jsonify({"error": error.message}), error.status

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[Response, int]:
        message = error.description or error.name
        if error.code == 413:
            message = f"request body over {config.max_bytes} bytes (the service's max_bytes)"
        return jsonify({"error": message}), error.code or 500

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> tuple[Response, int]:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return jsonify({"error": f"internal error: {type(error).__name__}"}), 500

    state.ensure_watcher()
    return app


def serve_state(app: Flask) -> ServeState:
    """The app's model holder, config and watcher (for tests and operators)."""
    state: ServeState = app.extensions["mlops_serve"]
    return state
