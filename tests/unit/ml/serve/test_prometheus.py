"""GET /metrics (ml.serve.prometheus): it parses as Prometheus' text format and has the series named, requests counted
and timed by endpoint, status and model version, model load times, and the Kafka messages' outcomes; with the broker
unreachable requests still succeed and the drops show; gunicorn's multiprocess mode adds up the processes' files and
forgets a dead worker's live gauges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ml.events.publisher import EventPublisher, PublishStats
from ml.serve.app import ServeSettings, build_app, serve_state
from ml.settings import KafkaSettings
from tests.support.probes import free_port
from tests.support.stand_in_model import raw_rows
from tests.unit.ml.serve.fakes import FakePublisher
from tests.unit.ml.serve.test_app import KAFKA, MLFLOW, loaded_model, post

SERIES = {
    "mlops_serve_requests",
    "mlops_serve_request_latency_seconds",
    "mlops_serve_predicted_rows",
    "mlops_serve_model_load_seconds",
    "mlops_serve_kafka_events",
    "mlops_serve_kafka_events_pending",
    "mlops_serve_kafka_publish_errors",
}


def scrape(client: Any, series: set[str] = SERIES) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}, through prometheus_client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    families = list(text_string_to_metric_families(response.get_data(as_text=True)))
    assert series <= {family.name for family in families}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def app_with(tmp_path: Path, publisher: Any, **kwargs: Any) -> Any:
    config = kwargs.pop("config", ServeSettings(max_rows=5, max_bytes=2000))
    return build_app(
        config, mlflow=MLFLOW, kafka=KAFKA, loaded=loaded_model(tmp_path), publisher_factory=lambda: publisher, **kwargs
    )


def test_requests_are_counted_and_timed_by_endpoint_status_and_version(tmp_path: Path) -> None:
    app = app_with(tmp_path, FakePublisher())
    client = app.test_client()
    for _ in range(2):
        assert post(client, {"rows": raw_rows(3)}).status_code == 200
    assert post(client, {"rows": [{"x1": "a", "x2": 1.0, "color": "red"}]}).status_code == 422
    assert client.get("/health").status_code == 200
    assert client.get("/no/such/path/abc123").status_code == 404
    samples = scrape(client)
    assert value(samples, "mlops_serve_requests_total", endpoint="/predict", status="200", model_version="7") == 2
    assert value(samples, "mlops_serve_requests_total", endpoint="/predict", status="422", model_version="7") == 1
    assert value(samples, "mlops_serve_requests_total", endpoint="/health", status="200", model_version="7") == 1
    assert value(samples, "mlops_serve_requests_total", endpoint="unmatched", status="404", model_version="7") == 1
    assert not [key for key in samples if "abc123" in str(key)], "a path never becomes a label"
    assert (
        value(
            samples, "mlops_serve_request_latency_seconds_count", endpoint="/predict", status="200", model_version="7"
        )
        == 2
    )
    assert value(samples, "mlops_serve_predicted_rows_total", model_version="7") == 6
    # The scrape itself is counted once it is answered.
    assert (
        value(scrape(client), "mlops_serve_requests_total", endpoint="/metrics", status="200", model_version="7") == 1
    )


def test_the_kafka_series_follow_the_publishers_counts(tmp_path: Path) -> None:
    publisher = FakePublisher()
    client = app_with(tmp_path, publisher).test_client()
    samples = scrape(client)
    for outcome in ("delivered", "failed", "dropped"):  # present at 0 before any message
        assert ("mlops_serve_kafka_events_total", (("outcome", outcome),)) in samples
    post(client, {"rows": raw_rows(1)})
    publisher.counts = PublishStats(sent=5, delivered=4, failed=1, dropped=2, pending=3)
    samples = scrape(client)
    assert value(samples, "mlops_serve_kafka_events_total", outcome="delivered") == 4
    assert value(samples, "mlops_serve_kafka_events_total", outcome="failed") == 1
    assert value(samples, "mlops_serve_kafka_events_total", outcome="dropped") == 2
    assert value(samples, "mlops_serve_kafka_events_pending") == 3
    publisher.counts = PublishStats(sent=9, delivered=8, failed=1, dropped=2, pending=0)
    samples = scrape(client)  # counters advance by the difference: never counted twice
    assert value(samples, "mlops_serve_kafka_events_total", outcome="delivered") == 8
    assert value(samples, "mlops_serve_kafka_events_total", outcome="dropped") == 2
    assert value(samples, "mlops_serve_kafka_events_pending") == 0
    publisher.close()
    post(client, {"rows": raw_rows(1)})  # publish() raises: counted, the request answered
    assert value(scrape(client), "mlops_serve_kafka_publish_errors_total") == 1


def test_model_loads_are_timed_at_start_and_at_each_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = loaded_model(tmp_path)
    monkeypatch.setattr("ml.serve.app.load_version", lambda *args, **kwargs: model)
    app = build_app(
        ServeSettings("standin-classification"),
        mlflow=MLFLOW,
        kafka=KAFKA,
        watch_promotions=False,
        publisher_factory=FakePublisher,
    )
    client = app.test_client()
    assert value(scrape(client), "mlops_serve_model_load_seconds_count") == 1
    newer = loaded_model(tmp_path, quality="good", version="8")
    assert serve_state(app).holder.reload_champion(lambda name, version: newer, lambda name: "8")
    samples = scrape(client)
    assert value(samples, "mlops_serve_model_load_seconds_count") == 2
    post(client, {"rows": raw_rows(1)})
    samples = scrape(client)
    assert value(samples, "mlops_serve_requests_total", endpoint="/predict", status="200", model_version="8") == 1


def test_with_kafka_unreachable_requests_succeed_and_drops_are_counted(tmp_path: Path) -> None:
    # The service's own publisher (librdkafka) with nothing listening on the broker's port, and room for 2 messages.
    publisher = EventPublisher(KafkaSettings(f"127.0.0.1:{free_port()}"), buffer_size=2)
    app = app_with(tmp_path, publisher)
    telemetry = serve_state(app).telemetry
    telemetry.close_timeout_s = 0.0
    try:
        client = app.test_client()
        for _ in range(5):
            assert post(client, {"rows": raw_rows(2)}).status_code == 200
        stats = publisher.stats()
        assert (stats.dropped, stats.pending, stats.delivered) == (3, 2, 0), "the queue refused what did not fit"
        samples = scrape(client)
        assert value(samples, "mlops_serve_kafka_events_total", outcome="dropped") == 3
        assert value(samples, "mlops_serve_kafka_events_pending") == 2
        assert value(samples, "mlops_serve_requests_total", endpoint="/predict", status="200", model_version="7") == 5
    finally:
        telemetry.close()  # what the worker's exit does (atexit): closes this process's publisher
    assert publisher.stats().pending == 2, "undelivered at close: reported, not waited for"


# --- gunicorn's multiprocess mode ------------------------------------------------------------------------------------


@pytest.fixture
def multiprocess_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """prometheus_client as a gunicorn worker runs it: values in files under PROMETHEUS_MULTIPROC_DIR (chosen when
    the library is imported, hence ValueClass patched here)."""
    from prometheus_client import values

    folder = tmp_path / "prometheus"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    return folder


def test_multiprocess_mode_adds_up_the_files_and_forgets_a_dead_workers_gauges(
    multiprocess_dir: Path, tmp_path: Path
) -> None:
    import os

    from ml.serve.gunicorn_conf import child_exit

    publisher = FakePublisher()
    config = ServeSettings(max_rows=5, max_bytes=2000, prometheus_multiproc_dir=str(multiprocess_dir))
    client = app_with(tmp_path, publisher, config=config).test_client()
    post(client, {"rows": raw_rows(2)})
    publisher.counts = PublishStats(sent=3, delivered=1, failed=0, dropped=1, pending=2)
    samples = scrape(client)
    assert value(samples, "mlops_serve_requests_total", endpoint="/predict", status="200", model_version="7") == 1
    assert value(samples, "mlops_serve_kafka_events_total", outcome="dropped") == 1
    assert value(samples, "mlops_serve_kafka_events_pending") == 2
    assert sorted(path.name.split("_")[0] for path in multiprocess_dir.iterdir()) == ["counter", "gauge", "histogram"]

    class Worker:
        pid = os.getpid()

    child_exit(None, Worker())  # gunicorn's master, once this "worker" exited
    samples = scrape(client, SERIES - {"mlops_serve_kafka_events_pending"})
    assert not [key for key in samples if key[0] == "mlops_serve_kafka_events_pending"], "its buffer is gone"
    assert value(samples, "mlops_serve_kafka_events_total", outcome="dropped") == 1, "its counts stay"


def test_the_gunicorn_hook_is_a_valid_setting_and_a_no_op_without_the_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn.config import Config

    from ml.serve import gunicorn_conf

    Config().set("child_exit", gunicorn_conf.child_exit)  # gunicorn checks the hook's arity
    marked: list[Any] = []
    monkeypatch.setattr("prometheus_client.multiprocess.mark_process_dead", lambda *args: marked.append(args))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    class Worker:
        pid = 4242

    gunicorn_conf.child_exit(None, Worker())
    assert marked == []
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/prometheus")
    gunicorn_conf.child_exit(None, Worker())
    assert marked == [(4242, "/nonexistent/prometheus")]


def test_requests_sync_the_publishers_counts_at_most_every_interval() -> None:
    from ml.serve.prometheus import PUBLISHER_SYNC_INTERVAL_S, ServingMetrics

    metrics = ServingMetrics()
    assert metrics.publisher_sync_due(100.0)  # the first request syncs
    assert not metrics.publisher_sync_due(100.0 + PUBLISHER_SYNC_INTERVAL_S / 2)
    assert metrics.publisher_sync_due(100.0 + PUBLISHER_SYNC_INTERVAL_S)
    assert not metrics.publisher_sync_due(100.0 + PUBLISHER_SYNC_INTERVAL_S * 1.5)
