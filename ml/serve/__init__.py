"""The prediction service: a Flask app that serves the registry's `champion` and reloads it when one is promoted.

    gunicorn --bind 127.0.0.1:8000 --workers 1 --threads 4 'ml.serve:create_app()'   (`make serve`)
    python -m ml serve --port 8000 [--model NAME] [--dev]

Flask is imported only when an app is created, so `python -m ml --help` stays fast. See ml/serve/app.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from ml.registry import LoadedModel


def create_app(
    model_name: str | None = None,
    *,
    loaded: LoadedModel | None = None,
    watch_promotions: bool | None = None,
) -> Flask:
    """The Flask app serving `model_name` (default: $MLOPS_SERVE_MODEL). `loaded` injects a model (tests); the
    promotion watcher runs by default only when the app loads its model from the registry itself."""
    from ml.serve.app import build_app

    return build_app(model_name, loaded=loaded, watch_promotions=watch_promotions)


def _cli_serve(args: argparse.Namespace) -> int:
    """Run the service in the foreground: gunicorn (default) or Werkzeug's development server (`--dev`)."""
    if args.model:
        os.environ["MLOPS_SERVE_MODEL"] = args.model
    if not os.environ.get("MLOPS_SERVE_MODEL"):
        raise ValueError("which model? pass --model NAME (e.g. DATASET-classification) or set MLOPS_SERVE_MODEL")
    if args.dev:
        create_app().run(host=args.host, port=args.port, threaded=True, use_reloader=False)
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
        "ml.serve:create_app()",
    ]
    try:
        return subprocess.call(command, env=os.environ.copy())
    except KeyboardInterrupt:
        return 130


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the prediction service for the champion model")
    parser.add_argument("--model", default=None, help="registered model name (default: $MLOPS_SERVE_MODEL)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes (each loads the model)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--dev", action="store_true", help="Werkzeug's development server instead of gunicorn")
    parser.set_defaults(handler=_cli_serve)


__all__ = ["create_app", "register_cli"]
