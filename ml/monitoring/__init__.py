"""The monitoring page (issue 16): drift per feature over time and serving latency per minute, per model version,
read from the topics the drift monitor and the prediction service publish (mlops.drift.v1, mlops.serving.metrics.v1).

`monitoring_page` reads both topics for the last hours (bounded: a message cap and a deadline per topic), aggregates
(ml.monitoring.aggregate) and renders (ml.monitoring.render). The Airflow plugin serves it at /mlops/monitoring.
"""

from __future__ import annotations

from collections.abc import Callable

from ml.clock import SYSTEM_CLOCK, Clock
from ml.monitoring.aggregate import drift_series, latency_by_minute, models_seen
from ml.monitoring.read import TopicRead, read_since
from ml.monitoring.render import render_page
from ml.settings import KafkaSettings
from ml.topics import DRIFT, SERVING_METRICS

MAX_HOURS = 48
# One drift message per model version and minute: 5,000 is 48 h of 1-minute windows for one version and more. One
# serving message per request: 50,000 holds a few hours of a busy service; the page says when the cap cut the data.
DRIFT_CAP = 5_000
SERVING_CAP = 50_000
READ_TIMEOUT_S = 10.0  # per topic: the page answers within about twice this

__all__ = ["DRIFT_CAP", "MAX_HOURS", "SERVING_CAP", "monitoring_page"]


def monitoring_page(
    kafka: KafkaSettings,
    *,
    model: str | None = None,
    hours: int = 6,
    clock: Clock = SYSTEM_CLOCK,
    read: Callable[..., TopicRead] = read_since,
) -> str:
    """The page for the last `hours` (1..MAX_HOURS), of `model` only when given (all models otherwise)."""
    if not 1 <= hours <= MAX_HOURS:
        raise ValueError(f"hours must be 1..{MAX_HOURS}, got {hours}")
    now = clock.time()
    since = now - hours * 3600
    drift_read = read(kafka, DRIFT, since, max_messages=DRIFT_CAP, timeout_s=READ_TIMEOUT_S, clock=clock)
    serving_read = read(kafka, SERVING_METRICS, since, max_messages=SERVING_CAP, timeout_s=READ_TIMEOUT_S, clock=clock)
    # Messages are picked by Kafka's timestamps; the charts by event time: keep only the period's events.
    drift_events = [e for e in drift_read.events if e.time >= since]
    serving_events = [e for e in serving_read.events if e.time >= since]
    models = models_seen(
        (e.payload["model_name"] for e in drift_events), (e.payload["model_name"] for e in serving_events)
    )
    return render_page(
        model=model or None,
        hours=hours,
        now=now,
        models=models,
        drift=drift_series(drift_events, model or None),
        latency=latency_by_minute(serving_events, model or None),
        reads=[(drift_read, DRIFT_CAP), (serving_read, SERVING_CAP)],
    )
