"""`python -m ml serve`: the prediction service in the foreground (gunicorn, or Werkzeug's server with --dev).

Under gunicorn, /metrics adds up the metrics of all workers: the command gives gunicorn a private, empty
PROMETHEUS_MULTIPROC_DIR (a new temporary folder, removed when gunicorn exits: metrics files of an earlier run would
be added to this one's) and its configuration ml.serve.gunicorn_conf (which marks exited workers dead there).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ml.settings import Settings

# gunicorn's defaults here. The service is CPU-bound Python under one GIL per worker: on N cores, `--workers N
# --threads 1` or `2` answers about twice the single-row requests of 1 x 4 (bench/README.md, B8's shapes), at a
# model (and a promotion watcher) per worker; a client then sees a promotion per worker, not once for the service.
DEFAULT_WORKERS = 1
DEFAULT_THREADS = 4


def _cli_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ml.serve.app import ServeSettings, build_app

    config = ServeSettings.from_env(os.environ)
    model = args.model or config.model_name
    if not model:
        raise ValueError("which model? pass --model NAME (e.g. DATASET-classification) or set MLOPS_SERVE_MODEL")
    if args.dev:
        app = build_app(dataclasses.replace(config, model_name=model), mlflow=settings.mlflow, kafka=settings.kafka)
        app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
        return 0
    import subprocess

    gunicorn = Path(sys.executable).parent / "gunicorn"
    command = [
        str(gunicorn),
        "--bind",
        f"{args.host}:{args.port}",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--access-logfile",
        "-",
        "--config",
        "python:ml.serve.gunicorn_conf",
        "ml.serve:create_app()",
    ]
    # Private (mkdtemp: 0700) and fresh: it replaces any PROMETHEUS_MULTIPROC_DIR of the caller's environment.
    metrics_dir = tempfile.mkdtemp(prefix="mlops-serve-prometheus-")
    # gunicorn's workers build the app from the environment: the settings travel there, to the child only.
    env = {**os.environ, **settings.to_env(), "MLOPS_SERVE_MODEL": model, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the prediction service for the champion model")
    parser.add_argument("--model", default=None, help="registered model name (default: $MLOPS_SERVE_MODEL)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="gunicorn worker processes (each loads the model)"
    )
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="gunicorn threads per worker")
    parser.add_argument("--dev", action="store_true", help="Werkzeug's development server instead of gunicorn")
    parser.set_defaults(handler=_cli_serve)
