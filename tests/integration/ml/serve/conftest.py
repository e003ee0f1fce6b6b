"""Serving fixtures against the real stack: the app in a Werkzeug server thread, gunicorn started by `python -m ml
serve`, and small HTTP helpers. (Stand-in models registered through the gate: tests/integration/ml/conftest.py.)"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def served(settings: Any) -> Iterator[Callable[[str], str]]:
    """Starts the app (as the factory builds it: loading the champion, watching promotions) in a Werkzeug server
    thread on a free port; returns its base URL once the watcher follows the promotion topic."""
    from werkzeug.serving import make_server

    from ml.serve.app import ServeSettings, build_app, serve_state

    started: list[tuple[Any, Any]] = []

    def start(model_name: str) -> str:
        config = ServeSettings(model_name, max_rows=50, max_bytes=4096, alias_poll_s=300.0)
        app = build_app(config, mlflow=settings.mlflow, kafka=settings.kafka)
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
