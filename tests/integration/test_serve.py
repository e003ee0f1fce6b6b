"""The prediction service over HTTP against the real registry and Kafka: the champion's predictions equal the offline
path, bad requests are 4xx JSON, a promotion event hot-reloads the new champion, gunicorn runs the app factory, and a
promotion under concurrent load fails no request."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml import registry
from ml.storage import S3Uri, delete_prefix
from tests.support.stand_in_model import make_checkpoint, make_spec, raw_rows, upload_stand_in

pytestmark = pytest.mark.integration


def http(method: str, url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def offline(quality: str, rows: list[dict[str, Any]], tmp_path: Path) -> tuple[list[str], np.ndarray]:
    """FeatureSpec.transform + ml.models.predict on a locally built copy of the stand-in model."""
    from ml.models import load_model, predict

    spec = make_spec()
    outputs, probabilities = predict(
        load_model(make_checkpoint(tmp_path / f"offline-{quality}", spec, quality)), spec.transform(rows)
    )
    assert probabilities is not None
    return spec.decode_labels(outputs), probabilities


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def registered(
    mlflow_service: None, kafka_service: None, s3_client: Any, tmp_path: Path, unique_prefix: str
) -> Iterator[Callable[[str, str], dict[str, Any]]]:
    """Registers stand-in models of one fresh dataset (through the gate); cleans up the model and S3 objects."""
    dataset = f"serve{uuid.uuid4().hex[:10]}"

    def register(quality: str, dag_run_id: str) -> dict[str, Any]:
        evaluation = upload_stand_in(
            s3_client, tmp_path, prefix=f"{unique_prefix}/{dag_run_id}", dataset=dataset, quality=quality
        )
        return registry.register_and_promote(evaluation, dag_id="serve-test", dag_run_id=dag_run_id, code_version="x")

    yield register
    from mlflow import MlflowClient

    mlflow_client = MlflowClient()
    try:
        mlflow_client.delete_registered_model(registry.registered_model_name(dataset, "classification"))
    except Exception:
        pass
    experiment = mlflow_client.get_experiment_by_name(dataset)
    if experiment is not None:
        mlflow_client.delete_experiment(experiment.experiment_id)
    delete_prefix(S3Uri("lake", unique_prefix), s3_client)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Starts the app factory's app in a Werkzeug server thread on a free port; returns its base URL."""
    from werkzeug.serving import make_server

    from ml.serve import create_app
    from ml.serve.app import serve_state

    monkeypatch.setenv("MLOPS_SERVE_MAX_ROWS", "50")
    monkeypatch.setenv("MLOPS_SERVE_MAX_BYTES", "4096")
    started: list[tuple[Any, Any]] = []

    def start(model_name: str) -> str:
        app = create_app(model_name)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append((server, app))
        watcher = serve_state(app).watcher
        assert watcher is not None and watcher.ready.wait(30), "the promotion watcher did not reach the topic"
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, app in started:
        server.shutdown()
        watcher = serve_state(app).watcher
        if watcher is not None:
            watcher.stop()


def test_serving_predicts_like_offline_refuses_bad_requests_and_hot_reloads(
    registered: Callable[[str, str], dict[str, Any]], served: Callable[[str], str], tmp_path: Path
) -> None:
    first = registered("medium", "serve-1")
    assert first["champion"] == "1"
    url = served(first["model_name"])

    status, health = http("GET", f"{url}/health")
    assert status == 200 and health["version"] == "1" and health["watcher"]["following"]
    status, info = http("GET", f"{url}/model")
    assert info["version"] == "1" and info["metrics"]["accuracy"] == pytest.approx(0.82, abs=0.05)
    assert info["lineage"]["dag_run_id"] == "serve-1" and info["lineage"]["snapshot_id"] == "snap-a"

    rows = raw_rows(30, seed=11)
    status, body = http("POST", f"{url}/predict", {"rows": rows})
    labels, probabilities = offline("medium", rows, tmp_path)
    assert status == 200 and body["version"] == "1" and body["classes"] == ["no", "yes"]
    assert body["predictions"] == labels and np.allclose(body["probabilities"], probabilities, atol=1e-7)

    # Every class of bad request, over real HTTP.
    good_row = {"x1": 0.1, "x2": 0.2, "color": "red"}
    for request_body, raw, expected_status, fragment in [
        (None, b"{not json", 400, "not valid JSON"),
        ({"instances": [good_row]}, None, 400, "missing 'rows'"),
        ({"rows": [{**good_row, "shade": 1}]}, None, 422, "unknown fields ['shade']"),
        ({"rows": [{"x1": 0.1, "color": "red"}]}, None, 422, "missing fields ['x2']"),
        ({"rows": [good_row, {**good_row, "x2": "two"}]}, None, 422, "row 1, column 'x2'"),
        ({"rows": [good_row] * 51}, None, 413, "too many rows"),
        ({"rows": [{**good_row, "color": "c" * 5000}]}, None, 413, "over 4096 bytes"),
    ]:
        status, error = http("POST", f"{url}/predict", request_body, raw)
        assert (status, list(error)) == (expected_status, ["error"]) and fragment in error["error"], (status, error)

    # A better model is registered and promoted: the service loads it in the background and switches over.
    second = registered("good", "serve-2")
    assert (second["decision"], second["champion"]) == ("promoted", "2")
    deadline = time.monotonic() + 60
    while http("GET", f"{url}/model")[1]["version"] != "2":
        assert time.monotonic() < deadline, "the service did not reload the new champion within 60 s"
        time.sleep(0.3)
    status, body = http("POST", f"{url}/predict", {"rows": rows})
    labels, probabilities = offline("good", rows, tmp_path)
    assert body["version"] == "2" and body["predictions"] == labels
    assert np.allclose(body["probabilities"], probabilities, atol=1e-7)

    # A rollback is a promotion event too.
    registry.rollback(first["model_name"], "1", reason="test rollback")
    deadline = time.monotonic() + 60
    while http("GET", f"{url}/model")[1]["version"] != "1":
        assert time.monotonic() < deadline, "the service did not follow the rollback within 60 s"
        time.sleep(0.3)


@contextmanager
def gunicorn_service(model_name: str, tmp_path: Path, threads: int = 2) -> Iterator[str]:
    """`python -m ml serve` (gunicorn, one worker) on a free port of 127.0.0.1; yields its base URL once healthy."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ml", "serve", "--model", model_name, "--port", str(port), "--threads", str(threads)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                http("GET", f"http://127.0.0.1:{port}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the process group started here: gunicorn and its worker
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log_file.close()


def test_gunicorn_runs_the_app_factory_from_the_command_line(
    registered: Callable[[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    first = registered("medium", "gunicorn-1")
    with gunicorn_service(first["model_name"], tmp_path) as url:
        status, health = http("GET", f"{url}/health")
        assert status == 200 and health["version"] == "1"
        rows = raw_rows(5, seed=2)
        status, body = http("POST", f"{url}/predict", {"rows": rows})
        assert status == 200 and body["predictions"] == offline("medium", rows, tmp_path)[0]


def test_a_promotion_under_concurrent_load_fails_no_request(
    registered: Callable[[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    """8 clients post to gunicorn (4 threads) while a better model is promoted: every answer is a 200 from version 1
    or 2, with that version's predictions, and no client sees version 1 again after it saw 2. Bounded: at most 6,000
    requests or 120 s, to 127.0.0.1 only."""
    first = registered("medium", "load-1")
    rows = raw_rows(5, seed=4)
    expected = {"1": offline("medium", rows, tmp_path)[0], "2": offline("good", rows, tmp_path)[0]}
    clients, cap, deadline = 8, 6000, time.monotonic() + 120
    answers: list[list[tuple[int, str | None, list[str] | None]]] = [[] for _ in range(clients)]
    sent = iter(range(cap))  # shared budget of requests (next() on a range iterator is atomic under the GIL)
    promoted, saw_new = threading.Event(), threading.Event()

    def client(index: int) -> None:
        # Until every client has seen version 2 after the promotion (or the budget or deadline is spent).
        while next(sent, None) is not None and time.monotonic() < deadline:
            try:
                status, body = http("POST", f"{url}/predict", {"rows": rows})
            except (urllib.error.URLError, ConnectionError) as error:
                answers[index].append((0, repr(error), None))
                continue
            answers[index].append((status, body.get("version"), body.get("predictions")))
            if promoted.is_set() and body.get("version") == "2":
                saw_new.set()
                if len(answers[index]) >= 10 and answers[index][-2][1] == "2":
                    return
            time.sleep(0.05)  # at most ~160 requests/s in all: the budget outlasts a slow reload on a busy machine

    with gunicorn_service(first["model_name"], tmp_path, threads=4) as url:
        threads = [threading.Thread(target=client, args=(i,), name=f"load-{i}") for i in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(2)  # load first, then the promotion
        second = registered("good", "load-2")
        assert (second["decision"], second["champion"]) == ("promoted", "2")
        promoted.set()
        for thread in threads:
            thread.join(120)
        elapsed = time.monotonic() - started

    flat = [answer for per_client in answers for answer in per_client]
    print(
        f"\n{len(flat)} requests from {clients} clients in {elapsed:.1f}s ({len(flat) / elapsed:.0f}/s); "
        f"versions {Counter(version for _, version, _ in flat)}"
    )
    failures = [answer for answer in flat if answer[0] != 200]
    assert not failures, f"{len(failures)} of {len(flat)} requests failed, e.g. {failures[:3]}"
    assert saw_new.is_set(), "no client saw the promoted version within the budget"
    assert {version for _, version, _ in flat} == {"1", "2"}
    for _, version, predictions in flat:
        assert predictions == expected[str(version)], f"version {version} answered another model's predictions"
    for per_client in answers:
        versions = [version for _, version, _ in per_client]
        if "2" in versions:
            assert "1" not in versions[versions.index("2") :], f"a client went back to version 1: {versions}"
