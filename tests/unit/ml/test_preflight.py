"""ml.preflight.require_mlflow against HTTP servers on 127.0.0.1: a serving MLflow stand-in passes; one answering 503
(what MLflow says when its database is down) and a closed port fail at once, naming the server and the reason."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ml.preflight import ServiceUnavailable, require_mlflow
from ml.settings import MlflowSettings

STORE_DOWN = {
    "error_code": "TEMPORARILY_UNAVAILABLE",
    "message": '(psycopg2.OperationalError) connection to server at "127.0.0.1", port 5432 failed: Connection refused',
}


logins: list[str | None] = []  # the Authorization header of each request a stand-in got


@contextmanager
def mlflow_stand_in(status: int, body: bytes) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server answering every GET with `status` and `body`; yields its URL and the paths it was asked for."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            logins.append(self.headers.get("Authorization"))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_serving_mlflow_passes_with_one_request_that_reads_its_store() -> None:
    with mlflow_stand_in(200, b'{"experiments": []}') as (url, paths):
        require_mlflow(MlflowSettings(url))
    assert paths == ["/api/2.0/mlflow/experiments/search?max_results=1"]


def test_an_mlflow_whose_database_is_down_fails_at_once_with_its_reason() -> None:
    with mlflow_stand_in(503, json.dumps(STORE_DOWN).encode()) as (url, paths):
        with pytest.raises(ServiceUnavailable) as failure:
            require_mlflow(MlflowSettings(url))
    assert len(paths) == 1, "no retries"
    message = str(failure.value)
    assert message.startswith(f"the MLflow server at {url} cannot serve requests (HTTP 503: TEMPORARILY_UNAVAILABLE")
    assert 'server at "127.0.0.1", port 5432 failed' in message


def test_the_login_is_sent_and_a_refused_one_is_named() -> None:
    password = uuid.uuid4().hex
    logins.clear()
    with mlflow_stand_in(200, b'{"experiments": []}') as (url, _):
        require_mlflow(MlflowSettings(url, "pipeline", password))
    assert logins == ["Basic " + base64.b64encode(f"pipeline:{password}".encode()).decode()]
    refused = {"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."}
    for settings, who in (
        (MlflowSettings(url, "pipeline", password), "the login of user 'pipeline'"),
        (MlflowSettings(url), "a client without a login"),
    ):
        with mlflow_stand_in(401, json.dumps(refused).encode()) as (url, paths):
            with pytest.raises(ServiceUnavailable) as failure:
                require_mlflow(dataclasses.replace(settings, tracking_uri=url))
        assert len(paths) == 1
        assert str(failure.value).startswith(f"the MLflow server at {url} refused {who} (HTTP 401: UNAUTHENTICATED")
        assert password not in str(failure.value)


def test_an_error_page_that_is_not_json_is_quoted() -> None:
    with mlflow_stand_in(502, b"<html>Bad Gateway</html>") as (url, _):
        with pytest.raises(ServiceUnavailable, match=r"HTTP 502: <html>Bad Gateway</html>"):
            require_mlflow(MlflowSettings(url))


def test_an_mlflow_that_is_down_is_named_with_its_address() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # released: nothing listens there now
    with pytest.raises(ServiceUnavailable, match=rf"MLflow server at http://127.0.0.1:{port} is not reachable"):
        require_mlflow(MlflowSettings(f"http://127.0.0.1:{port}"))
