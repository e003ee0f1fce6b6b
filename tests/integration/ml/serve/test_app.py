"""The prediction service over HTTP against the real registry: it serves the champion, its predictions equal the offline
path (from a JSON body and from an Arrow IPC stream alike), and every class of bad request is a 4xx JSON error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.serve.arrow_body import ARROW_STREAM
from tests.integration.ml.serve.support import offline
from tests.support.arrow_stream import arrow_stream
from tests.support.probes import http
from tests.support.stand_in_model import raw_rows


def test_serving_predicts_like_offline_and_refuses_bad_requests(
    registered: Callable[[str, str], dict[str, Any]], served: Callable[[str], str], tmp_path: Path
) -> None:
    first = registered("medium", "serve-1")
    assert first["champion"] == "1"
    url = served(first["model_name"])

    status, health = http("GET", f"{url}/health")
    assert status == 200 and health["version"] == "1" and health["watcher"]["following"]
    status, info = http("GET", f"{url}/model")
    assert info["version"] == "1" and sorted(info["aliases"]) == ["challenger", "champion"]
    assert info["metrics"]["accuracy"] == pytest.approx(0.82, abs=0.05)
    assert info["lineage"]["dag_run_id"] == "serve-1" and info["lineage"]["snapshot_id"] == "snap-a"
    assert info["gate"]["decision"] == "first_model"

    rows = raw_rows(30, seed=11)
    status, body = http("POST", f"{url}/predict", {"rows": rows})
    labels, probabilities = offline("medium", rows, tmp_path)
    assert status == 200 and body["version"] == "1" and body["classes"] == ["no", "yes"]
    assert body["predictions"] == labels and np.allclose(body["probabilities"], probabilities, atol=1e-7)
    # The same rows as an Arrow IPC stream: the same answer.
    status, from_arrow = http("POST", f"{url}/predict", raw=arrow_stream(rows), content_type=ARROW_STREAM)
    assert (status, from_arrow) == (200, body)

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
    for raw, expected_status, fragment in [
        (b"{}", 400, "not an Arrow IPC stream"),
        (arrow_stream(rows, compression="zstd"), 400, "compressed Arrow record batches are not accepted"),
        (arrow_stream([good_row] * 51), 413, "too many rows"),
        (arrow_stream([{**good_row, "x2": float("nan")}]), 400, "row 0, column 'x2': nan is not a finite number"),
    ]:
        status, error = http("POST", f"{url}/predict", raw=raw, content_type=ARROW_STREAM)
        assert (status, list(error)) == (expected_status, ["error"]) and fragment in error["error"], (status, error)
    assert http("POST", f"{url}/predict", {"rows": rows})[0] == 200  # still serving
