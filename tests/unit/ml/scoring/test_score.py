"""ml.scoring.score and ml.scoring.job on a local SparkSession with the stand-in model: each written row is exactly
the service's answer for it (TabularPredictor.predict_rows + answer_fields, the Flask path), the model is loaded
once per Python worker, a refused row keeps the service's message, and a re-run replaces exactly its partition."""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from ml.predictor import TabularPredictor, answer_fields
from ml.scoring.model import ScoringModel
from ml.scoring.score import request_row, score_rows
from ml.serve.validation import row_refusal
from tests.support.stand_in_model import make_checkpoint, make_spec, raw_rows

MODEL = ScoringModel("standin-classification", "3", "s3://lake/unused/checkpoint", "s3://lake/unused/spec.json")


def load_counting(markers: str, checkpoint: str) -> TabularPredictor:
    """The test's loader (runs in Spark's Python workers): leaves one marker file per load, named by process."""
    from ml.models import load_model

    Path(markers, f"{os.getpid()}-{uuid.uuid4().hex}").touch()
    return TabularPredictor(load_model(checkpoint), make_spec())


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> TabularPredictor:
    spec = make_spec()
    return TabularPredictor(
        __import__("ml.models").models.load_model(make_checkpoint(tmp_path_factory.mktemp("c"), spec)), spec
    )


def service_answer(predictor: TabularPredictor, row: dict[str, Any]) -> dict[str, Any]:
    outputs, probabilities = predictor.predict_rows([row])
    fields = answer_fields(outputs, probabilities, predictor.classes)
    return {
        "prediction": fields["predictions"][0],
        "probabilities": dict(zip(fields["classes"], fields["probabilities"][0], strict=True)),
    }


def test_each_row_gets_the_service_answer_for_it(predictor: TabularPredictor) -> None:
    rows = raw_rows(40)
    results = score_rows(predictor, rows)
    for row, result in zip(rows, results, strict=True):
        assert result["error"] is None
        assert {k: result[k] for k in ("prediction", "probabilities")} == service_answer(predictor, row)


def test_csv_text_becomes_the_json_row_a_client_sends() -> None:
    spec = make_spec()
    record = {"x1": " 1.5 ", "x2": "NA", "color": "red", "id": "7", "target": "yes"}
    assert request_row(record, spec) == {"x1": 1.5, "x2": None, "color": "red"}
    assert request_row({"x1": "inf", "x2": float("nan"), "color": None}, spec) == {
        "x1": None,
        "x2": None,
        "color": None,
    }


def test_a_bad_row_gets_the_service_message_and_the_others_are_scored(predictor: TabularPredictor) -> None:
    rows = raw_rows(3)
    bad = request_row({"x1": "abc", "x2": 1.0, "color": "red"}, predictor.spec)
    results = score_rows(predictor, [rows[0], bad, rows[2]])
    assert results[1]["prediction"] is None and results[1]["probabilities"] is None
    assert results[1]["error"] == row_refusal(bad, predictor.spec)
    assert "column 'x1'" in results[1]["error"] and "expected a number" in results[1]["error"]
    assert [results[i]["prediction"] for i in (0, 2)] == [
        service_answer(predictor, rows[i])["prediction"] for i in (0, 2)
    ]


def test_the_job_writes_the_service_answers_into_its_partition(
    spark: Any, tmp_path: Path, predictor: TabularPredictor
) -> None:
    from ml.scoring import job

    spec = make_spec()
    markers = tmp_path / "loads"
    markers.mkdir()
    checkpoint = make_checkpoint(tmp_path / "checkpoint", spec)
    rows = raw_rows(60, seed=3)
    records = [
        {"id": str(i), **{k: (None if v is None else str(v)) for k, v in row.items()}} for i, row in enumerate(rows)
    ]
    records[5]["x1"] = "not a number"
    frame = spark.createDataFrame(records, "id string, x1 string, x2 string, color string").repartition(3)
    job.check_input(frame, spec, "test input")
    load = functools.partial(load_counting, str(markers), str(checkpoint))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "7")  # several batches per task
    table = f"mlops.t{uuid.uuid4().hex[:8]}_predictions"
    for _ in range(2):  # the re-run replaces the partition: the row count stays
        scored = job.score(
            spark, frame, spec=spec, model=MODEL, score_date="2026-12-03", load=load, scored_at="2026-12-03T01:00:00Z"
        )
        job.write_partition(spark, scored, table)
    written = spark.table(table)
    assert written.columns[-2:] == ["score_date", "model_version"]
    assert [c for c in written.columns[:4]] == ["id", "x1", "x2", "color"]
    got = {r["id"]: r.asDict() for r in written.collect()}
    assert len(got) == 60 and written.count() == 60
    for index, row in enumerate(rows):
        out = got[str(index)]
        assert (out["score_date"], out["model_version"], out["model_name"]) == ("2026-12-03", "3", MODEL.name)
        if index == 5:
            assert out["prediction"] is None and "column 'x1'" in out["error"]
            continue
        assert out["error"] is None
        assert {"prediction": out["prediction"], "probabilities": out["probabilities"]} == service_answer(
            predictor, row
        )
    # Once per Python worker: each process that scored loaded the model once, for 60 rows in 9+ batches.
    pids = [name.split("-")[0] for name in os.listdir(markers)]
    assert len(pids) == len(set(pids)) >= 1

    # Another date is a partition of its own; the first one stays.
    other = job.score(spark, frame.limit(10), spec=spec, model=MODEL, score_date="2026-12-04", load=load)
    job.write_partition(spark, other, table)
    dates = {r["score_date"]: r["count"] for r in spark.table(table).groupBy("score_date").count().collect()}
    assert dates == {"2026-12-03": 60, "2026-12-04": 10}


def test_the_job_refuses_input_without_the_model_columns(spark: Any) -> None:
    from ml.scoring import job
    from ml.storage import DataError

    frame = spark.createDataFrame([("1", "red")], "x1 string, color string")
    with pytest.raises(DataError, match=r"missing the model's input columns \['x2'\]"):
        job.check_input(frame, make_spec(), "s3://raw/standin/")
    clash = spark.createDataFrame([("1", "2", "red", "x")], "x1 string, x2 string, color string, prediction string")
    with pytest.raises(DataError, match="clash"):
        job.check_input(clash, make_spec(), "t")
