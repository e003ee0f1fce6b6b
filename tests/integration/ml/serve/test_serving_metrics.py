"""Serving run-time metrics against the stack: `python -m ml serve` (gunicorn, as the `serving` user, which may write
mlops.serving.metrics.v1) publishes one message per /predict request, answered or refused, that the pipeline's user
(who reads every topic) receives with its fields; /metrics (multiprocess mode) counts the requests and the
deliveries."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ml.clients import close_quietly
from ml.events.consumer import open_topic
from ml.events.envelope import validate_envelope
from ml.topics import SERVING_METRICS
from tests.integration.ml.serve.support import gunicorn_service, offline
from tests.support.probes import http, wait_until
from tests.support.stand_in_model import raw_rows


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_request_reaches_the_serving_metrics_topic(
    registered: Callable[[str, str], dict[str, Any]], settings: Any, tmp_path: Path
) -> None:
    from stack.config import stack_environment

    first = registered("medium", "metrics-1")
    model = first["model_name"]
    env = {**stack_environment(identity="serving"), "MLOPS_SERVE_PAYLOAD_SAMPLE_RATE": "1"}
    follower = open_topic(settings.kafka, SERVING_METRICS.name)  # as pipeline, at the topic's end
    try:
        with gunicorn_service(model, tmp_path, env) as url:
            rows = raw_rows(3, seed=4)
            status, body = http("POST", f"{url}/predict", {"rows": rows})
            assert status == 200 and body["predictions"] == offline("medium", rows, tmp_path)[0]
            assert http("POST", f"{url}/predict", {"rows": [{"x1": "a", "x2": 1, "color": "red"}]})[0] == 422

            received: list[dict[str, Any]] = []
            deadline = time.monotonic() + 60
            while len(received) < 2 and time.monotonic() < deadline:
                for batch in follower.poll(timeout_ms=500).values():
                    for record in batch:
                        envelope = json.loads(record.value)
                        if envelope["payload"]["model_name"] == model:
                            validate_envelope(envelope, SERVING_METRICS)
                            assert record.key.decode() == f"{model}:{envelope['payload']['request_id']}"
                            received.append(envelope["payload"])
            answered, refused = sorted(received, key=lambda payload: payload["status"])
            assert (answered["status"], answered["model_version"], answered["rows"]) == (200, "1", 3)
            counts = {label: body["predictions"].count(label) for label in set(body["predictions"])}
            assert answered["prediction_summary"] == {"count": 3, "class_counts": counts}
            assert answered["rows_logged"] == 3
            assert answered["inputs"] == {column: [row[column] for row in rows] for column in ("x1", "x2", "color")}
            assert answered["latency_ms"] > 0
            assert (refused["status"], refused["rows"], refused["inputs"]) == (422, 0, None)

            def counted() -> bool:
                samples = scrape(url)
                requests = samples.get(
                    (
                        "mlops_serve_requests_total",
                        (("endpoint", "/predict"), ("model_version", "1"), ("status", "200")),
                    )
                )
                return (
                    requests == 1
                    and samples.get(("mlops_serve_kafka_events_total", (("outcome", "delivered"),)), 0) >= 2
                )

            wait_until(counted, "/metrics counts the request and the two deliveries", timeout_s=30)
    finally:
        close_quietly(follower)
