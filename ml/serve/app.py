"""The Flask prediction service: validation, prediction, and hot reload of the champion.

Endpoints
  POST /predict  {"rows": [{feature: value, ...}, ...]}, or an Arrow IPC stream of the input columns
                 (Content-Type application/vnd.apache.arrow.stream: ml.serve.arrow_body)
                 -> {"model", "version", "predictions": [...], "probabilities": [[...]], "classes": [...]}
                 (probabilities and classes for classification only)
  GET  /health   liveness plus the version served and the watcher's state
  GET  /model    version, test metrics, lineage tags, gate decision of the model served
  GET  /metrics  Prometheus text format (ml.serve.prometheus): requests and latency by endpoint, status and model
                 version, model load time, the Kafka metrics messages' delivered/failed/dropped counts

Every response carries an X-Request-Id header. Every /predict request, answered or refused, is published to
`mlops.serving.metrics.v1` (ml.serve.telemetry: latency, rows, model and version, status, a prediction summary, and
the validated inputs of a sampled fraction of requests) from Flask's after_request, through a bounded buffer that never
blocks: with the broker down requests keep their latency, messages are dropped and counted, and publishing resumes
when it returns.

Every bad request is a 4xx JSON {"error": "..."} naming what is wrong; an unexpected failure is a 500 JSON and the
worker keeps serving. Predictions are `FeatureSpec.transform` + `ml.models.predict` on the raw rows, the same code
offline evaluation runs (`ml.predictor.TabularPredictor`).

Hot reload of the champion: ml.serve.reload. Settings: `ServeSettings` (the model, limits, alias poll period,
metrics) plus the MLflow and Kafka slices; `ml.serve.create_app()` reads them from the environment (MLOPS_SERVE_MODEL,
MLOPS_SERVE_MAX_ROWS (1000), MLOPS_SERVE_MAX_BYTES (1 MiB), MLOPS_SERVE_ALIAS_POLL_S (300), MLOPS_SERVE_METRICS (1:
publish to Kafka; 0: /metrics only), MLOPS_SERVE_METRICS_BUFFER (10000 messages), MLOPS_SERVE_PAYLOAD_SAMPLE_RATE
(0.0: no inputs logged), MLOPS_SERVE_PAYLOAD_MAX_ROWS (100), PROMETHEUS_MULTIPROC_DIR (set by `python -m ml serve`),
KAFKA_BOOTSTRAP_SERVERS, MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ml.clock import SYSTEM_CLOCK, Clock
from ml.predictor import LoadedModel, answer_fields, load_version, resolve_version
from ml.registry.conventions import CHAMPION
from ml.serve.arrow_body import ARROW_STREAM, read_arrow_rows
from ml.serve.prometheus import ServingMetrics
from ml.serve.reload import ModelHolder, PromotionWatcher
from ml.serve.telemetry import MAX_LOGGED_ROWS_CAP, Publisher, RequestRecord, Sampler, ServingTelemetry
from ml.serve.validation import RequestError, parse_body, validate_rows
from ml.settings import KafkaSettings, MlflowSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_ALIAS_POLL_S = 300.0
DEFAULT_METRICS_BUFFER = 10000
DEFAULT_MAX_LOGGED_ROWS = 100
_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class ServeSettings:
    """The service's own settings: which model, its limits, and its run-time metrics."""

    model_name: str | None = None
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES
    alias_poll_s: float = DEFAULT_ALIAS_POLL_S
    metrics_enabled: bool = True  # publish each /predict request to mlops.serving.metrics.v1 (/metrics is always on)
    metrics_buffer: int = DEFAULT_METRICS_BUFFER  # messages waiting for Kafka; a full queue drops new ones
    payload_sample_rate: float = 0.0  # the fraction of requests whose validated inputs go into their message
    max_logged_rows: int = DEFAULT_MAX_LOGGED_ROWS  # rows of a sampled request logged, at most
    prometheus_multiproc_dir: str | None = None  # gunicorn's workers share their metrics there (ml.serve.prometheus)

    def __post_init__(self) -> None:
        if self.metrics_buffer < 1:
            raise ValueError(f"metrics_buffer must be at least 1, got {self.metrics_buffer}")
        if not 0.0 <= self.payload_sample_rate <= 1.0:
            raise ValueError(f"payload_sample_rate must be within [0, 1], got {self.payload_sample_rate}")
        if not 1 <= self.max_logged_rows <= MAX_LOGGED_ROWS_CAP:
            raise ValueError(f"max_logged_rows must be within [1, {MAX_LOGGED_ROWS_CAP}], got {self.max_logged_rows}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServeSettings:
        flag = env.get("MLOPS_SERVE_METRICS", "1").strip().lower()
        if flag not in _FLAGS:
            raise ValueError(f"MLOPS_SERVE_METRICS must be 1 or 0 (true/false), got {flag!r}")
        return cls(
            model_name=env.get("MLOPS_SERVE_MODEL") or None,
            max_rows=int(env.get("MLOPS_SERVE_MAX_ROWS", DEFAULT_MAX_ROWS)),
            max_bytes=int(env.get("MLOPS_SERVE_MAX_BYTES", DEFAULT_MAX_BYTES)),
            alias_poll_s=float(env.get("MLOPS_SERVE_ALIAS_POLL_S", DEFAULT_ALIAS_POLL_S)),
            metrics_enabled=_FLAGS[flag],
            metrics_buffer=int(env.get("MLOPS_SERVE_METRICS_BUFFER", DEFAULT_METRICS_BUFFER)),
            payload_sample_rate=float(env.get("MLOPS_SERVE_PAYLOAD_SAMPLE_RATE", 0.0)),
            max_logged_rows=int(env.get("MLOPS_SERVE_PAYLOAD_MAX_ROWS", DEFAULT_MAX_LOGGED_ROWS)),
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        )


class ServeState:
    """What the app holds: the model, the settings, the (per-process) promotion watcher and the run-time metrics."""

    def __init__(
        self,
        holder: ModelHolder,
        config: ServeSettings,
        watch: bool,
        *,
        mlflow: MlflowSettings,
        kafka: KafkaSettings,
        telemetry: ServingTelemetry,
        metrics: ServingMetrics,
    ) -> None:
        self.holder = holder
        self.config = config
        self.watch = watch
        self.mlflow = mlflow
        self.kafka = kafka
        self.telemetry = telemetry
        self.metrics = metrics
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
    publisher_factory: Callable[[], Publisher] | None = None,
    sampler: Sampler | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Flask:
    """The Flask app serving `config.model_name`'s champion (loaded from MLflow unless `loaded` injects one, as tests
    do). The promotion watcher runs by default only when the app loads its model from the registry itself.
    `publisher_factory` (default: an EventPublisher to `kafka`), `sampler` and `clock` are the metrics' (tests
    inject them); with `config.metrics_enabled` off nothing is published."""
    name = config.model_name or (loaded.name if loaded else None)
    if not name:
        raise ValueError("no model to serve: set the model name (MLOPS_SERVE_MODEL, e.g. DATASET-classification)")
    watch = (loaded is None) if watch_promotions is None else watch_promotions
    metrics = ServingMetrics(config.prometheus_multiproc_dir)
    if loaded is None:
        started = time.perf_counter()
        loaded = load_version(mlflow, name, CHAMPION, require_gated=True)
        metrics.observe_model_load(time.perf_counter() - started)
        log.info("%s: serving champion v%s", name, loaded.version)
    if publisher_factory is None:
        publisher_factory = _event_publisher(kafka, config.metrics_buffer)
    telemetry = ServingTelemetry(
        publisher_factory if config.metrics_enabled else None,
        sample_rate=config.payload_sample_rate,
        max_logged_rows=config.max_logged_rows,
        sampler=sampler,
        clock=clock,
    )
    holder = ModelHolder(name, loaded)
    holder.load_observer = metrics.observe_model_load
    state = ServeState(holder, config, watch, mlflow=mlflow, kafka=kafka, telemetry=telemetry, metrics=metrics)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["mlops_serve"] = state

    @app.before_request
    def _start_request() -> None:
        # The record first: every request, even one refused before its view runs, gets its metrics.
        g.serve_request = telemetry.start(state.holder.current)
        state.ensure_watcher()

    @app.after_request
    def _record_request(response: Response) -> Response:
        record: RequestRecord | None = g.get("serve_request")
        if record is not None:
            response.headers["X-Request-Id"] = record.request_id
            _record_metrics(state, record, response.status_code)
        return response

    @app.post("/predict")
    def predict() -> Response:
        record: RequestRecord = g.serve_request
        model = record.model  # one model for the whole request, even if a reload swaps it meanwhile
        raw = request.get_data(cache=False)
        if request.mimetype == ARROW_STREAM:
            columns = read_arrow_rows(raw, model.spec, config.max_rows)
            record.rows = columns
            predicting = partial(model.predictor.predict_columns, columns.numeric, columns.categorical)
        else:
            record.rows = validate_rows(parse_body(raw), model.spec, config.max_rows)
            predicting = partial(model.predictor.predict_rows, record.rows)
        try:
            outputs, probabilities = predicting()
        except ValueError as error:  # a value the spec cannot transform: the client's data, not a server fault
            raise RequestError(str(error), 422) from None
        record.outputs = outputs
        body: dict[str, Any] = {"model": state.holder.name, "version": model.version}
        body.update(answer_fields(outputs, probabilities, model.predictor.classes))
        # msgspec: the same JSON values as json.dumps (shortest round-trip floats), ~8x faster on a 1000-row answer.
        return Response(_json_encoder().encode(body), mimetype="application/json")

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

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        metrics.sync_publisher(telemetry.stats(), telemetry.errors)
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

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


SERVING_LINGER_MS = 100


@cache
def _json_encoder() -> Any:
    import msgspec

    return msgspec.json.Encoder()


def _event_publisher(kafka: KafkaSettings, buffer_size: int) -> Callable[[], Publisher]:
    def factory() -> Publisher:
        from ml.events.publisher import EventPublisher

        # Batches of up to 100 ms: a request's metrics may wait that long, and the broker takes a few requests a
        # second instead of one per 20 ms, on the machine that may also run the service (B10, bench/README.md).
        return EventPublisher(kafka, buffer_size=buffer_size, client_id="mlops-serve", linger_ms=SERVING_LINGER_MS)

    return factory


def _record_metrics(state: ServeState, record: RequestRecord, status: int) -> None:
    """Prometheus for every request, a Kafka message for /predict. Never raises: metrics must not fail a request."""
    try:
        latency_s = state.telemetry.latency_s(record)
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        rows = len(record.outputs) if record.outputs is not None and status < 400 else 0
        state.metrics.observe_request(endpoint, status, record.model.version, latency_s, rows)
        if endpoint == "/predict":
            state.telemetry.publish(record, state.holder.name, status, latency_s)
        if state.metrics.publisher_sync_due(state.telemetry.clock.monotonic()):
            state.metrics.sync_publisher(state.telemetry.stats(), state.telemetry.errors)
    except Exception:
        log.exception("recording the metrics of %s %s failed (the request is answered)", request.method, request.path)


def serve_state(app: Flask) -> ServeState:
    """The app's model holder, config and watcher (for tests and operators)."""
    state: ServeState = app.extensions["mlops_serve"]
    return state
