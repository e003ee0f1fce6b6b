"""The prediction service: a Flask app that serves the registry's `champion` and reloads it when one is promoted.

    gunicorn --bind 127.0.0.1:8000 --workers 1 --threads 4 'ml.serve:create_app()'   (`make serve`)
    python -m ml serve --port 8000 [--model NAME] [--workers N] [--dev]   (several workers share /metrics this way)

  app            the Flask app (build_app) and its settings
  validation     request checks (pure functions)
  reload         the model being served and the promotion watcher
  telemetry      each /predict request's message on mlops.serving.metrics.v1 (never blocking the request)
  prometheus     GET /metrics (prometheus_client; multiprocess mode under gunicorn)
  gunicorn_conf  gunicorn's hooks (`-c python:ml.serve.gunicorn_conf`): exited workers leave the metrics' sums
  cli            `python -m ml serve` (gunicorn with a private PROMETHEUS_MULTIPROC_DIR)

Flask is imported only when an app is created, so `python -m ml --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def create_app() -> Flask:
    """gunicorn's app factory: the entry point, so the settings are read from the environment here (see
    ml.serve.app for the variables)."""
    import os

    from ml.serve.app import ServeSettings, build_app
    from ml.settings import Settings

    settings = Settings.from_env(os.environ)
    return build_app(ServeSettings.from_env(os.environ), mlflow=settings.mlflow, kafka=settings.kafka)
