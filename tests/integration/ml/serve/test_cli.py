"""`python -m ml serve` for real: gunicorn runs the app factory, which reads the settings from the environment the
command gave it, loads the champion and answers like the offline path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.ml.serve.support import gunicorn_service, offline
from tests.support.probes import http
from tests.support.stand_in_model import raw_rows


def test_gunicorn_runs_the_app_factory_from_the_command_line(
    registered: Callable[[str, str], dict[str, Any]], tmp_path: Path, stack_env: dict[str, str]
) -> None:
    first = registered("medium", "gunicorn-1")
    with gunicorn_service(first["model_name"], tmp_path, stack_env) as url:
        status, health = http("GET", f"{url}/health")
        assert status == 200 and health["version"] == "1" and health["model"] == first["model_name"]
        rows = raw_rows(5, seed=2)
        status, body = http("POST", f"{url}/predict", {"rows": rows})
        assert status == 200 and body["predictions"] == offline("medium", rows, tmp_path)[0]
        status, info = http("GET", f"{url}/model")
        assert status == 200 and info["lineage"]["dag_run_id"] == "gunicorn-1"
