"""Helpers of the serving tests: the offline prediction a served one must equal, and gunicorn run as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ml.settings import PROJECT_ROOT
from tests.support.probes import free_port, http, wait_until
from tests.support.stand_in_model import make_checkpoint, make_spec


def offline(quality: str, rows: list[dict[str, Any]], tmp_path: Path) -> tuple[list[str], np.ndarray]:
    """FeatureSpec.transform + ml.models.predict on a locally built copy of the stand-in model."""
    from ml.models import load_model, predict

    spec = make_spec()
    outputs, probabilities = predict(
        load_model(make_checkpoint(tmp_path / f"offline-{quality}", spec, quality)), spec.transform(rows)
    )
    assert probabilities is not None
    return spec.decode_labels(outputs), probabilities


@contextmanager
def gunicorn_service(model_name: str, tmp_path: Path, env: dict[str, str], threads: int = 2) -> Iterator[str]:
    """`python -m ml serve` (gunicorn, one worker) on a free port of 127.0.0.1; yields its base URL once healthy."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ml", "serve", "--model", model_name, "--port", str(port), "--threads", str(threads)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=PROJECT_ROOT,
        env=env,
        start_new_session=True,
    )

    def healthy() -> bool:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            return http("GET", f"http://127.0.0.1:{port}/health")[0] == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_until(healthy, f"gunicorn answers on port {port}", timeout_s=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the process group started here: gunicorn and its worker
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log_file.close()
