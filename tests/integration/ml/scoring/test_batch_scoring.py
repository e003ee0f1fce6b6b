"""Batch scoring against the real stack: a stand-in champion registered through the gate scores a raw CSV prefix
through spark-submit into `mlops.<dataset>_predictions`; every written row equals the Flask service's answer for that
row (the app's test client, with the same version loaded from the registry), a refused row carries the service's
message, and a re-run of the same date replaces its partition (the row count stays)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from ml.predictor import load_version
from ml.preprocess.hive import hive_table_name
from ml.scoring.model import resolve_scoring_model
from ml.scoring.submit import run_scoring
from ml.serve.app import ServeSettings, build_app
from ml.storage import S3Uri, delete_prefix
from tests.support.hive import hive_scalar
from tests.support.stand_in_model import raw_rows

pytestmark = pytest.mark.integration
DATE = "2026-12-03"


def upload_csv(s3_client: Any, uri: S3Uri, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["id", "x1", "x2", "color"])
    writer.writeheader()
    for index, row in enumerate(rows):
        writer.writerow({"id": index, **{k: "" if v is None else v for k, v in row.items()}})
    s3_client.put_object(Bucket=uri.bucket, Key=uri.join("part-0.csv").key, Body=text.getvalue().encode())


def read_partition(table: str, version: str, stack_env: dict[str, str]) -> list[dict[str, Any]]:
    """The partition's rows, read through Hive as one JSON document."""
    sql = (
        f"SELECT to_json(collect_list(struct(*))) FROM {table} "
        f"WHERE score_date = '{DATE}' AND model_version = '{version}'"
    )
    rows: list[dict[str, Any]] = json.loads(hive_scalar(sql, stack_env) or "[]")
    return rows


def test_batch_scores_equal_the_service_answers_and_a_rerun_replaces_the_partition(
    registered: Callable[[str, str], dict[str, Any]],
    settings: Any,
    s3_client: Any,
    stack_env: dict[str, str],
    unique_prefix: str,
) -> None:
    first = registered("medium", "score-1")
    name = first["model_name"]
    dataset = name.removesuffix("-classification")
    model = resolve_scoring_model(settings.mlflow, name, "champion")
    assert model.version == first["champion"]

    rows = raw_rows(50, seed=5)
    rows[7] = {**rows[7], "x1": "not a number"}
    raw = S3Uri(settings.lake.raw_bucket, f"{unique_prefix}/{dataset}")
    upload_csv(s3_client, raw, rows)
    table = hive_table_name(dataset, "predictions")
    try:
        for _ in range(2):  # the second run replaces the first one's partition
            result = run_scoring(
                dataset, model, DATE, s3=settings.s3, lake=settings.lake, spark=settings.spark, raw_uri=str(raw) + "/"
            )
            assert result["rows"] == 50 and result["refused_rows"] == 1 and result["table"] == table
        written = {int(r["id"]): r for r in read_partition(table, model.version, stack_env)}
        assert len(written) == 50

        app = build_app(
            ServeSettings(model_name=name, metrics_enabled=False),
            mlflow=settings.mlflow,
            kafka=settings.kafka,
            loaded=load_version(settings.mlflow, name, "champion", require_gated=True),
            watch_promotions=False,
        )
        client = app.test_client()
        for index, row in enumerate(rows):
            request_row = {
                k: (float(v) if k != "color" and v not in (None, "not a number") else v) for k, v in row.items()
            }
            response = client.post("/predict", json={"rows": [request_row]})
            out = written[index]
            assert (out["model_name"], out["model_version"], out["score_date"]) == (name, model.version, DATE)
            if index == 7:
                assert response.status_code == 422 and out["error"] == response.get_json()["error"]
                assert out.get("prediction") is None
                continue
            answer = response.get_json()
            assert response.status_code == 200 and out.get("error") is None
            assert out["prediction"] == answer["predictions"][0]
            # The model computes in float32, and a row scored in a batch of many goes through other BLAS blocking
            # than a one-row request: the same class, probabilities equal to float32 rounding.
            expected = dict(zip(answer["classes"], answer["probabilities"][0], strict=True))
            assert out["probabilities"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    finally:
        hive_scalar(f"DROP TABLE IF EXISTS {table}", stack_env)
        delete_prefix(raw, s3_client)
