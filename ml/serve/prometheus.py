"""Prometheus metrics of the prediction service (`GET /metrics`, prometheus_client), one process or many.

  mlops_serve_requests_total{endpoint,status,model_version}               requests answered
  mlops_serve_request_latency_seconds{endpoint,status,model_version}      their latency (histogram)
  mlops_serve_predicted_rows_total{model_version}                         rows predicted
  mlops_serve_model_load_seconds                                          model loads: at start and each reload
  mlops_serve_kafka_events_total{outcome=delivered|failed|dropped}        the metrics messages' fate (Kafka)
  mlops_serve_kafka_events_pending                                        metrics messages buffered or in flight
  mlops_serve_kafka_publish_errors_total                                  messages that could not even be buffered

Labels stay bounded: `endpoint` is the route's rule (or "unmatched": a 404 never puts its path in a label), `status` an
HTTP status, `model_version` the versions this process served (one more per promotion).

Under gunicorn with several workers each worker is a process of its own and a scrape reaches one of them: with
PROMETHEUS_MULTIPROC_DIR set (`python -m ml serve` sets a private one, see ml.serve.cli and ml.serve.gunicorn_conf),
prometheus_client keeps every value in a file per process there and /metrics adds up all processes' files
(MultiProcessCollector). The env variable must be set before prometheus_client is imported: gunicorn's child gets it
from the command, so the workers import it with it.
"""

from __future__ import annotations

import math
import threading

from ml.events.publisher import PublishStats

REQUEST_LABELS = ("endpoint", "status", "model_version")
KAFKA_OUTCOMES = ("delivered", "failed", "dropped")
# After a request the publisher's counts are synced at most this often (a scrape always syncs): the counts cost ~9 us,
# which a request pays for nothing when the next scrape is seconds away.
PUBLISHER_SYNC_INTERVAL_S = 0.5
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServingMetrics:
    """The service's metrics, in a registry of its own (several apps in one process, as in tests, do not collide)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlops_serve_requests", "HTTP requests answered", REQUEST_LABELS, registry=self.registry
        )
        self.latency = Histogram(
            "mlops_serve_request_latency_seconds",
            "request latency in the service",
            REQUEST_LABELS,
            registry=self.registry,
        )
        self.rows = Counter("mlops_serve_predicted_rows", "rows predicted", ["model_version"], registry=self.registry)
        self.model_load = Histogram(
            "mlops_serve_model_load_seconds",
            "time to load a model version",
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self.kafka_events = Counter(
            "mlops_serve_kafka_events",
            "serving metrics messages by outcome: delivered (acknowledged), failed (refused by Kafka), dropped (the "
            "buffer was full, e.g. the broker down)",
            ["outcome"],
            registry=self.registry,
        )
        # livesum: the buffers of the live processes (a dead worker's buffer is gone: mark_process_dead drops it).
        self.kafka_pending = Gauge(
            "mlops_serve_kafka_events_pending",
            "serving metrics messages buffered or in flight",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.publish_errors = Counter(
            "mlops_serve_kafka_publish_errors",
            "serving metrics messages that could not be queued for publishing (a closed or broken publisher); a "
            'payload that fails to build is counted in mlops_serve_kafka_events_total{outcome="failed"}',
            registry=self.registry,
        )
        for outcome in KAFKA_OUTCOMES:  # the series exist (at 0) before the first message
            self.kafka_events.labels(outcome=outcome)
        self._seen = PublishStats(0, 0, 0, 0, 0)
        self._seen_errors = 0
        self._last_sync = -math.inf
        self._lock = threading.Lock()

    def observe_request(self, endpoint: str, status: int, model_version: str, latency_s: float, rows: int) -> None:
        labels = (endpoint, str(status), model_version)
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(latency_s)
        if rows:
            self.rows.labels(model_version).inc(rows)

    def observe_model_load(self, seconds: float) -> None:
        self.model_load.observe(seconds)

    def publisher_sync_due(self, now: float) -> bool:
        """Whether a request ending at `now` (monotonic seconds) should sync the publisher's counts; it then will."""
        with self._lock:
            if now - self._last_sync < PUBLISHER_SYNC_INTERVAL_S:
                return False
            self._last_sync = now
            return True

    def sync_publisher(self, stats: PublishStats | None, errors: int) -> None:
        """Bring the Kafka series up to this process's publisher's counts.

        Counters advanced by the difference since the last sync, not a custom collector reading `stats()` at scrape
        time: in multiprocess mode a scrape is answered by one worker, whose collector would report its own publisher
        only; counters are written to this process's file and summed over all processes (dead ones included, so totals
        never go back when gunicorn replaces a worker). Synced at every scrape, and after a request when
        `publisher_sync_due`: another worker's latest deliveries show once it answers a request after that interval."""
        with self._lock:
            if errors > self._seen_errors:
                self.publish_errors.inc(errors - self._seen_errors)
                self._seen_errors = errors
            if stats is None:
                return
            for outcome in KAFKA_OUTCOMES:
                delta = getattr(stats, outcome) - getattr(self._seen, outcome)
                if delta > 0:
                    self.kafka_events.labels(outcome=outcome).inc(delta)
            self.kafka_pending.set(stats.pending)
            self._seen = stats  # frozen: a snapshot

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every series (all processes' in multiprocess mode) and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST
