"""ml.monitoring against the real broker: drift and serving events published to the pipeline's topics are read back
by the monitoring page's reading (offsets by time, end offsets, every partition) and show in its aggregations and its
page. The events belong to a model name no one else uses, so other traffic on the shared topics does not matter."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

from ml.clock import utc_iso
from ml.events.envelope import drift_key, serving_metrics_key
from ml.events.publisher import publish_event
from ml.monitoring import monitoring_page
from ml.monitoring.aggregate import drift_series, latency_by_minute
from ml.monitoring.read import read_since
from ml.topics import DRIFT, SERVING_METRICS
from tests.unit.ml.events.samples import DRIFT as DRIFT_SAMPLE
from tests.unit.ml.events.samples import SERVING as SERVING_SAMPLE


def test_published_drift_and_serving_events_are_read_back(kafka_service: None, settings: Any) -> None:
    model = f"monitoring-{uuid.uuid4().hex[:10]}"
    since = time.time() - 5  # the broker's clock may trail this machine's a little
    window = (int(time.time()) // 60 - 2) * 60
    for n, psi in enumerate([0.05, 0.9]):
        payload: dict[str, Any] = copy.deepcopy(DRIFT_SAMPLE)
        start = utc_iso(window + 60 * n)
        payload.update(
            model_name=model, model_version="1", window_start=start, window_end=utc_iso(window + 60 * n + 60)
        )
        payload["features"][0].update(psi=psi, drifted=psi >= 0.25)
        payload.update(drifted=psi >= 0.25, drifted_features=["bill_length_mm"] if psi >= 0.25 else [])
        publish_event(settings.kafka, DRIFT, payload, drift_key(model, "1", start))
    for latency in (1.0, 2.0, 30.0):
        request_id = uuid.uuid4().hex
        payload = {**SERVING_SAMPLE, "request_id": request_id, "model_name": model, "model_version": "1"}
        publish_event(
            settings.kafka, SERVING_METRICS, {**payload, "latency_ms": latency}, serving_metrics_key(model, request_id)
        )

    drift = read_since(settings.kafka, DRIFT, since, max_messages=5000, timeout_s=30)
    serving = read_since(settings.kafka, SERVING_METRICS, since, max_messages=50000, timeout_s=30)
    assert drift.error is None and serving.error is None and not drift.timed_out and not serving.timed_out

    [(key, series)] = drift_series(drift.events, model).items()
    assert key == (model, "1") and [p.psi for p in series.features["bill_length_mm"]] == [0.05, 0.9]
    assert [drifted for *_, drifted in series.windows] == [False, True]
    minutes = latency_by_minute(serving.events, model)[(model, "1")]
    assert sum(m.requests for m in minutes) == 3
    assert max(m.p99_ms for m in minutes) == 30.0

    page = monitoring_page(settings.kafka, model=model, hours=1)
    assert f"<h2>{model}</h2>" in page and "2 windows, 1 drifted" in page and "3 requests" in page
