"""Running the batch scoring job through `spark-submit`, as preprocessing runs its job (ml.preprocess.submit:
the same conf, environment and `ml` zip). Airflow's BatchScoreOperator passes the same arguments."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.settings import LakeSettings, S3Settings, SparkSettings

if TYPE_CHECKING:  # its module imports ml.predictor (numpy): not at DAG parse time, when the operator reads APPLICATION
    from ml.scoring.model import ScoringModel

log = logging.getLogger(__name__)

APPLICATION = Path(__file__).resolve().parent / "job.py"


def application_args(
    dataset: str, model: ScoringModel, score_date: str, *, table: str | None = None, raw_uri: str | None = None
) -> list[str]:
    """The job's command-line arguments (ml.scoring.job.main): one input, a Hive table or a raw prefix."""
    if bool(table) == bool(raw_uri):
        raise ValueError("score either a Hive table or a raw prefix (exactly one of table, raw_uri)")
    source = ["--table", str(table)] if table else ["--raw-uri", str(raw_uri)]
    return ["--dataset", dataset, "--model-json", json.dumps(model.to_dict()), "--date", score_date, *source]


def run_scoring(
    dataset: str,
    model: ScoringModel,
    score_date: str,
    *,
    s3: S3Settings,
    lake: LakeSettings,
    spark: SparkSettings,
    table: str | None = None,
    raw_uri: str | None = None,
    driver_memory: str = "2g",
) -> dict[str, Any]:
    """spark-submit the scoring job; returns its summary (table, rows, refused rows)."""
    from ml.preprocess.submit import run_spark_job
    from ml.scoring.job import RESULT_MARKER

    args = application_args(dataset, model, score_date, table=table, raw_uri=raw_uri)
    log.info("spark-submit %s: %s v%s on %s for %s", APPLICATION.name, model.name, model.version, dataset, score_date)
    return run_spark_job(
        APPLICATION,
        args,
        name=f"score-{dataset}",
        result_marker=RESULT_MARKER,
        what=f"batch scoring of {dataset} with {model.name} v{model.version} for {score_date}",
        s3=s3,
        lake=lake,
        spark=spark,
        driver_memory=driver_memory,
    )
