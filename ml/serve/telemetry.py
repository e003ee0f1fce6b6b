"""Run-time metrics of the prediction service: one `mlops.serving.metrics.v1` message per /predict request.

Each request gets a `RequestRecord` when it starts (its id, its start on the injected clock, the model that answers
it); the /predict view adds its validated rows and predictions; `ServingTelemetry.publish` (Flask's after_request, see
ml.serve.app) hands the finished record to an `ml.events.publisher.EventPublisher`, whose
`publish_later()` only queues it: the publisher's own thread builds the message, validates it and appends it to
librdkafka's bounded queue. Kafka never delays or fails a request.
While the broker is down the queue fills and then refuses new messages, and messages waiting longer than the delivery
timeout expire (both counted as dropped: `stats()`, shown on /metrics); the client reconnects by itself, so publishing
resumes when the broker returns.

The message carries what a drift monitor needs: a summary of the request's predictions (count per class, or
mean/min/max), and, for a sampled request only (`payload_sample_rate`, 0 by default: request data stays out of Kafka
unless asked), its validated raw inputs by input column, at most `max_logged_rows` rows (picked at random when the
request has more) with strings cut to MAX_LOGGED_STRING characters: a message stays well under Kafka's 1 MB.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from ml.clock import SYSTEM_CLOCK, Clock
from ml.events.envelope import serving_metrics_key
from ml.events.publisher import PublishStats
from ml.predictor import LoadedModel
from ml.topics import SERVING_METRICS, Topic

log = logging.getLogger(__name__)

MAX_LOGGED_ROWS_CAP = 1000  # the schema's maxItems: a setting above it would make every sampled message invalid
MAX_LOGGED_STRING = 256  # the schema's maxLength for a logged value


class Publisher(Protocol):
    """What telemetry needs of a publisher (`EventPublisher`; tests inject a fake)."""

    def publish_later(self, topic: Topic, build: Callable[[], Mapping[str, Any]], key: str) -> None: ...

    def stats(self) -> PublishStats: ...

    def close(self, timeout_s: float = ...) -> PublishStats: ...


class Sampler(Protocol):
    """The randomness of payload sampling (`random.Random` fits; tests inject a seeded or scripted one)."""

    def random(self) -> float: ...

    def sample(self, population: Sequence[int], k: int) -> list[int]: ...


@dataclass
class RequestRecord:
    """What one request leaves for its metrics message: set at its start, completed by the /predict view."""

    request_id: str
    started: float  # the clock's monotonic seconds
    model: LoadedModel  # the model that answers it (taken once, even if a reload swaps it meanwhile)
    rows: Sequence[dict[str, Any]] | None = None  # validated inputs (a JSON body's rows, or ml.serve.arrow_body's)
    outputs: list[Any] | None = field(default=None, repr=False)  # the predictions, once made


def prediction_summary(task: str, outputs: Sequence[Any]) -> dict[str, Any] | None:
    """Classification: rows per class; regression: mean/min/max of the finite predictions. None without predictions."""
    if not outputs:
        return None
    if task == "classification":
        return {"count": len(outputs), "class_counts": dict(Counter(str(label) for label in outputs))}
    values = [float(v) for v in outputs]
    finite = [v for v in values if math.isfinite(v)]
    return {
        "count": len(values),
        "mean": math.fsum(finite) / len(finite) if finite else None,
        "min": min(finite) if finite else None,
        "max": max(finite) if finite else None,
        "non_finite": len(values) - len(finite),
    }


def logged_inputs(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], max_rows: int, sampler: Sampler
) -> dict[str, list[Any]]:
    """The rows' raw values by input column: all rows up to `max_rows`, else `max_rows` of them at random (in request
    order), so that a client sending sorted batches does not bias what the drift monitor sees."""
    if len(rows) > max_rows:
        rows = [rows[i] for i in sorted(sampler.sample(range(len(rows)), max_rows))]
    return {column: [_bounded(row.get(column)) for row in rows] for column in columns}


def _bounded(value: Any) -> Any:
    return value[:MAX_LOGGED_STRING] if isinstance(value, str) else value


class ServingTelemetry:
    """Builds each /predict request's message and publishes it through one publisher per process.

    The publisher (its thread, its connection) is created on the first message of a process, not with the app: gunicorn
    forks its workers after importing, and threads do not survive a fork (hence the pid check, as for the promotion
    watcher). It is closed at the process's exit, delivering what it can within `close_timeout_s`."""

    close_timeout_s = 5.0  # gunicorn's graceful timeout is 30 s: a worker exiting with the broker down must not hang

    def __init__(
        self,
        publisher_factory: Callable[[], Publisher] | None,
        *,
        sample_rate: float = 0.0,
        max_logged_rows: int = 100,
        sampler: Sampler | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.publisher_factory = publisher_factory  # None: publishing is off
        self.sample_rate = sample_rate
        self.max_logged_rows = max_logged_rows
        # SystemRandom by default: os.urandom, so forked workers do not draw the same samples.
        self.sampler: Sampler = sampler if sampler is not None else random.SystemRandom()
        self.clock = clock
        # Messages that could not be queued (a publisher closed or broken): never the request's. A payload that
        # fails to build does so on the publisher's thread and is counted there, as `failed`.
        self.errors = 0
        self._publisher: Publisher | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.publisher_factory is not None

    def start(self, model: LoadedModel) -> RequestRecord:
        return RequestRecord(uuid.uuid4().hex, self.clock.monotonic(), model)

    def latency_s(self, record: RequestRecord) -> float:
        return max(self.clock.monotonic() - record.started, 0.0)

    def publisher(self) -> Publisher | None:
        """This process's publisher, created on first use (None when publishing is off)."""
        if self.publisher_factory is None:
            return None
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # A publisher inherited through fork has no thread here: leave it, start this process's own.
                    self._publisher = self.publisher_factory()
                    self._pid = os.getpid()
                    atexit.register(self.close)
        return self._publisher

    def payload(self, record: RequestRecord, model_name: str, status: int, latency_s: float) -> dict[str, Any]:
        """The request's message (schema ml/schemas/serving_metrics.v1.json)."""
        spec = record.model.spec
        answered = status < 400 and record.outputs is not None
        inputs = None
        if answered and record.rows and self.sample_rate > 0 and self.sampler.random() < self.sample_rate:
            inputs = logged_inputs(record.rows, spec.input_columns, self.max_logged_rows, self.sampler)
        return {
            "request_id": record.request_id,
            "model_name": model_name,
            "model_version": record.model.version,
            "task": spec.task,
            "status": status,
            "latency_ms": round(latency_s * 1000.0, 3),
            "rows": len(record.outputs) if answered and record.outputs is not None else 0,
            "prediction_summary": prediction_summary(spec.task, record.outputs)
            if answered and record.outputs
            else None,
            "rows_logged": len(next(iter(inputs.values()))) if inputs else 0,
            "inputs": inputs,
        }

    def publish(self, record: RequestRecord, model_name: str, status: int, latency_s: float) -> None:
        """Buffer the request's message; any failure is counted and logged, never raised into the request."""
        try:
            publisher = self.publisher()
            if publisher is None:
                return
            # The payload is built off the request thread (the publisher's), from the finished record.
            build = partial(self.payload, record, model_name, status, latency_s)
            publisher.publish_later(SERVING_METRICS, build, serving_metrics_key(model_name, record.request_id))
        except Exception:
            with self._lock:
                self.errors += 1
                errors = self.errors
            if errors == 1 or errors % 1000 == 0:  # a broken publisher would otherwise log every request
                log.exception("serving metrics: a message could not be published (%d so far)", errors)

    def stats(self) -> PublishStats | None:
        """This process's publisher's counts (None before its first message, or with publishing off)."""
        publisher = self._publisher if self._pid == os.getpid() else None
        return publisher.stats() if publisher is not None else None

    def close(self) -> None:
        """Deliver what is buffered (at most close_timeout_s) and stop this process's publisher."""
        with self._lock:
            publisher = self._publisher if self._pid == os.getpid() else None
            self._publisher, self._pid = None, None
        atexit.unregister(self.close)
        if publisher is not None:
            publisher.close(self.close_timeout_s)
