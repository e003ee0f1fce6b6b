"""`python -m ml serve` for real: gunicorn runs the app factory, which reads the settings from the environment the
command gave it, loads the champion and answers like the offline path. It runs as `make serve` runs it: in the
environment of `python -m stack run --as serving` (MLflow's and Kafka's read-only `serving` users, no S3 key)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.ml.serve.support import gunicorn_service, offline
from tests.support.probes import http
from tests.support.stand_in_model import raw_rows


def test_gunicorn_runs_the_app_factory_from_the_command_line(
    registered: Callable[[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    from stack.config import stack_environment

    first = registered("medium", "gunicorn-1")
    serving = stack_environment(identity="serving")
    assert serving["MLFLOW_TRACKING_USERNAME"] == "serving" and "AWS_SECRET_ACCESS_KEY" not in serving
    with gunicorn_service(first["model_name"], tmp_path, serving) as url:
        status, health = http("GET", f"{url}/health")
        assert status == 200 and health["version"] == "1" and health["model"] == first["model_name"]
        rows = raw_rows(5, seed=2)
        status, body = http("POST", f"{url}/predict", {"rows": rows})
        assert status == 200 and body["predictions"] == offline("medium", rows, tmp_path)[0]
        status, info = http("GET", f"{url}/model")
        assert status == 200 and info["lineage"]["dag_run_id"] == "gunicorn-1"
