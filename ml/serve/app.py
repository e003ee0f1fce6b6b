"""The Flask prediction service: validation, prediction, and hot reload of the champion.

Endpoints
  POST /predict  {"rows": [{feature: value, ...}, ...]}
                 -> {"model", "version", "predictions": [...], "probabilities": [[...]], "classes": [...]}
                 (probabilities and classes for classification only)
  GET  /health   liveness plus the version served and the watcher's state
  GET  /model    version, test metrics, lineage tags, gate decision of the model served

Every bad request is a 4xx JSON {"error": "..."} naming what is wrong; an unexpected failure is a 500 JSON and the
worker keeps serving. Predictions are `FeatureSpec.transform` + `ml.models.predict` on the raw rows, the same code
offline evaluation runs (`ml.registry.TabularPredictor`).

Hot reload: a background thread follows `mlops.model.promoted.v1` from its end (the latest offset). It reads the topic
with manual partition assignment and no consumer group: every serving process must see every event (a shared group
would hand each event to one process only), and it needs no committed offsets, so a group per process would only leave
dead groups behind on the broker. On an event for this model it resolves the `champion` alias (so events that arrive
out of order cannot load a stale version), loads that version in the background, and swaps it in with one reference
assignment: requests keep using the old model until the new one is completely loaded. The same thread also re-checks
the alias every MLOPS_SERVE_ALIAS_POLL_S seconds (default 300), so a promotion made while Kafka was down is picked up.

Settings (environment): MLOPS_SERVE_MODEL, MLOPS_SERVE_MAX_ROWS (1000), MLOPS_SERVE_MAX_BYTES (1 MiB),
MLOPS_SERVE_ALIAS_POLL_S (300), KAFKA_BOOTSTRAP_SERVERS, MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ml.features import FeatureSpec
from ml.registry import CHAMPION, LoadedModel, load_version, resolve_version
from ml.settings import Settings
from ml.topics import MODEL_PROMOTED

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_ALIAS_POLL_S = 300.0
MAX_ERRORS_REPORTED = 10


class RequestError(Exception):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class ServeConfig:
    max_rows: int
    max_bytes: int
    alias_poll_s: float

    @classmethod
    def from_env(cls) -> ServeConfig:
        env = os.environ
        return cls(
            max_rows=int(env.get("MLOPS_SERVE_MAX_ROWS", DEFAULT_MAX_ROWS)),
            max_bytes=int(env.get("MLOPS_SERVE_MAX_BYTES", DEFAULT_MAX_BYTES)),
            alias_poll_s=float(env.get("MLOPS_SERVE_ALIAS_POLL_S", DEFAULT_ALIAS_POLL_S)),
        )


# ---------------------------------------------------------------------------------------------------------------------
# Request validation (a pure function: unit-tested without a server)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def parse_body(raw: bytes) -> Any:
    if not raw.strip():
        raise RequestError('empty request body: send JSON {"rows": [{feature: value, ...}, ...]}')
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise RequestError("request body is not UTF-8 JSON") from None
    except ValueError as error:
        raise RequestError(f"request body is not valid JSON: {error}") from None


def validate_rows(body: Any, spec: FeatureSpec, max_rows: int) -> list[dict[str, Any]]:
    """The request's rows, or RequestError naming the rows, columns and reasons of what is wrong.

    Every raw input column must be present in every row (null means missing and is imputed like in training);
    numeric columns take numbers or null; categorical columns take strings, numbers or null; other fields are refused
    so that a misspelt column cannot silently become a missing value."""
    if not isinstance(body, dict):
        raise RequestError(f'the body must be a JSON object {{"rows": [...]}}, got {_type_name(body)}')
    if "rows" not in body:
        raise RequestError(f"missing 'rows' (the body has {sorted(body)})")
    unexpected = sorted(set(body) - {"rows"})
    if unexpected:
        raise RequestError(f'unknown top-level fields {unexpected}: the body is {{"rows": [...]}}')
    rows = body["rows"]
    if not isinstance(rows, list):
        raise RequestError(f"'rows' must be an array of objects, got {_type_name(rows)}")
    if not rows:
        raise RequestError("'rows' is empty: send at least one row")
    if len(rows) > max_rows:
        raise RequestError(f"too many rows: {len(rows)} > {max_rows} (MLOPS_SERVE_MAX_ROWS); split the request", 413)

    numeric = [f.name for f in spec.numeric]
    categorical = [f.name for f in spec.categorical]
    expected = set(numeric) | set(categorical)
    problems: list[str] = []
    for index, row in enumerate(rows):
        if len(problems) >= MAX_ERRORS_REPORTED:
            break
        if not isinstance(row, dict):
            problems.append(f"row {index}: must be an object of feature values, got {_type_name(row)}")
            continue
        missing = [name for name in spec.input_columns if name not in row]
        unknown = sorted(set(row) - expected)
        if missing:
            problems.append(f"row {index}: missing fields {missing}")
        if unknown:
            problems.append(f"row {index}: unknown fields {unknown} (expected {spec.input_columns})")
        for name in numeric:
            value = row.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                problems.append(
                    f"row {index}, column {name!r}: expected a number or null, got {_type_name(value)} {_short(value)}"
                )
        for name in categorical:
            value = row.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
                problems.append(
                    f"row {index}, column {name!r}: expected a string, number or null, got "
                    f"{_type_name(value)} {_short(value)}"
                )
    if problems:
        more = " (first errors only)" if len(problems) >= MAX_ERRORS_REPORTED else ""
        raise RequestError("invalid rows" + more + ": " + "; ".join(problems[:MAX_ERRORS_REPORTED]), 422)
    return rows


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------------------------
# The model served and its hot reload


class ModelHolder:
    """The model being served. Readers take `current` once per request; a reload replaces it in one assignment."""

    def __init__(self, name: str, loaded: LoadedModel) -> None:
        self.name = name
        self.current = loaded
        self.reloads = 0
        self.last_reload_error: str | None = None
        self._reload_lock = threading.Lock()

    def reload_champion(self, loader: Callable[[str, str], LoadedModel], resolve: Callable[[str], str]) -> bool:
        """Load the version the `champion` alias names, if it is not the one served; True if it was swapped in."""
        with self._reload_lock:  # one reload at a time; requests never wait on this lock
            try:
                target = resolve(self.name)
                if target == self.current.version:
                    return False
                log.info("%s: loading champion v%s (serving v%s meanwhile)", self.name, target, self.current.version)
                started = time.monotonic()
                loaded = loader(self.name, target)
            except Exception as error:
                self.last_reload_error = f"{type(error).__name__}: {error}"
                log.exception("%s: reloading the champion failed; still serving v%s", self.name, self.current.version)
                return False
            previous = self.current.version
            self.current = loaded  # the atomic swap
            self.reloads += 1
            self.last_reload_error = None
            log.info(
                "%s: now serving v%s (was v%s; loaded in %.1f s)",
                self.name,
                loaded.version,
                previous,
                time.monotonic() - started,
            )
            return True


class PromotionWatcher:
    """Background thread: model-promoted events (and a periodic alias check) trigger `ModelHolder.reload_champion`."""

    connect_backoff_s = (1.0, 30.0)

    def __init__(
        self,
        holder: ModelHolder,
        *,
        bootstrap_servers: str | None = None,
        alias_poll_s: float = DEFAULT_ALIAS_POLL_S,
        loader: Callable[[str, str], LoadedModel] | None = None,
        resolve: Callable[[str], str] | None = None,
    ) -> None:
        self.holder = holder
        self.bootstrap_servers = bootstrap_servers or Settings.from_env().kafka_bootstrap_servers
        self.alias_poll_s = alias_poll_s
        self.loader = loader or (lambda name, version: load_version(name, version))
        self.resolve = resolve or (lambda name: str(resolve_version(name, CHAMPION).version))
        self.ready = threading.Event()  # set once the consumer sits at the end of the topic
        self.events_seen = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"promotion-watcher-{self.holder.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _connect(self) -> Any:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers.split(","),
            client_id=f"mlops-serve-{os.getpid()}",
            group_id=None,
            enable_auto_commit=False,
            bootstrap_timeout_ms=5000,
            request_timeout_ms=15000,
        )
        try:
            partitions = consumer.partitions_for_topic(MODEL_PROMOTED.name)
            if not partitions:
                raise LookupError(f"topic {MODEL_PROMOTED.name} does not exist on {self.bootstrap_servers}")
            assigned = [TopicPartition(MODEL_PROMOTED.name, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            consumer.seek_to_end(*assigned)
            for partition in assigned:  # resolve "the end" now, so that nothing published after ready is missed
                consumer.position(partition)
        except Exception:
            consumer.close()
            raise
        return consumer

    def _run(self) -> None:
        consumer: Any = None
        backoff = self.connect_backoff_s[0]
        next_alias_check = time.monotonic() + self.alias_poll_s
        while not self._stop.is_set():
            if time.monotonic() >= next_alias_check:
                self.holder.reload_champion(self.loader, self.resolve)
                next_alias_check = time.monotonic() + self.alias_poll_s
            if consumer is None:
                try:
                    consumer = self._connect()
                except Exception as error:
                    self._note_error(f"cannot follow {MODEL_PROMOTED.name} at {self.bootstrap_servers}: {error}")
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.connect_backoff_s[1])
                    continue
                backoff = self.connect_backoff_s[0]
                self.last_error = None
                self.ready.set()
                log.info("%s: following %s for promotions", self.holder.name, MODEL_PROMOTED.name)
            try:
                records = consumer.poll(timeout_ms=1000)
            except Exception as error:
                self._note_error(f"polling {MODEL_PROMOTED.name} failed: {error}")
                _close_quietly(consumer)
                consumer = None
                self.ready.clear()
                continue
            if any(self._is_for_us(record.value) for batch in records.values() for record in batch):
                self.holder.reload_champion(self.loader, self.resolve)
        if consumer is not None:
            _close_quietly(consumer)

    def _is_for_us(self, value: bytes) -> bool:
        from ml.events import EventValidationError, validate_envelope

        self.events_seen += 1
        try:
            envelope = json.loads(value)
            validate_envelope(envelope, MODEL_PROMOTED)
        except (ValueError, EventValidationError) as error:
            log.warning("ignoring an invalid event on %s: %s", MODEL_PROMOTED.name, error)
            return False
        payload = envelope["payload"]
        if payload["model_name"] != self.holder.name or payload["alias"] != CHAMPION:
            return False
        log.info("%s: promotion event: v%s is champion (%s)", self.holder.name, payload["version"], payload["reason"])
        return True

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s (serving continues; retrying)", text)
        self.last_error = text


def _close_quietly(consumer: Any) -> None:
    try:
        consumer.close()
    except Exception as error:
        log.debug("closing the consumer: %s", error)


class ServeState:
    """What the app holds: the model, the config and the (per-process) promotion watcher."""

    def __init__(self, holder: ModelHolder, config: ServeConfig, watch: bool) -> None:
        self.holder = holder
        self.config = config
        self.watch = watch
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
            self.watcher = PromotionWatcher(self.holder, alias_poll_s=self.config.alias_poll_s)
            self.watcher.start()
            self._pid = os.getpid()


# ---------------------------------------------------------------------------------------------------------------------
# The app


def build_app(
    model_name: str | None = None, *, loaded: LoadedModel | None = None, watch_promotions: bool | None = None
) -> Flask:
    """See ml.serve.create_app."""
    name = model_name or os.environ.get("MLOPS_SERVE_MODEL") or (loaded.name if loaded else None)
    if not name:
        raise ValueError("no model to serve: pass model_name or set MLOPS_SERVE_MODEL (e.g. DATASET-classification)")
    watch = (loaded is None) if watch_promotions is None else watch_promotions
    if loaded is None:
        loaded = load_version(name, CHAMPION)
        log.info("%s: serving champion v%s", name, loaded.version)
    config = ServeConfig.from_env()
    state = ServeState(ModelHolder(name, loaded), config, watch)

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
            body["predictions"] = [_finite_or_none(float(v)) for v in outputs]
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
            message = f"request body over {config.max_bytes} bytes (MLOPS_SERVE_MAX_BYTES)"
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
