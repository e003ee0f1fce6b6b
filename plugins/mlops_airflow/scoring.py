"""The batch scoring operator: spark-submit of `ml.scoring`'s job, as FeaturePreprocessOperator submits
preprocessing's (the shared `submit_ml_job`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from mlops_airflow.hooks import s3_settings, spark_settings
from mlops_airflow.operators import submit_ml_job
from mlops_airflow.templating import DEFAULT_LAKE_BUCKET, lake_settings


class BatchScoreOperator(SparkSubmitOperator):
    """SparkSubmitOperator for the batch scoring job of `ml.scoring`: scores a raw prefix or a Hive table with the
    model version `model` (ml.scoring.model.ScoringModel as a dict, the resolving task's XCom) into the partition of
    `score_date`; returns where the predictions went (table, partition, model version)."""

    template_fields: Sequence[str] = (
        *SparkSubmitOperator.template_fields,
        *("dataset", "model", "score_date", "table", "raw_uri", "lake_bucket"),
    )

    def __init__(
        self,
        *,
        dataset: str,
        model: Any,
        score_date: str,
        table: str | None = None,
        raw_uri: str | None = None,
        lake_bucket: str = DEFAULT_LAKE_BUCKET,
        aws_conn_id: str = "aws_default",
        **kwargs: Any,
    ) -> None:
        from ml.scoring.submit import APPLICATION  # a path only: importing it loads neither Spark nor pandas

        super().__init__(application=str(APPLICATION), name="score-{{ params.dataset }}", **kwargs)
        self.dataset, self.model, self.score_date = dataset, model, score_date
        self.table, self.raw_uri, self.lake_bucket, self.aws_conn_id = table, raw_uri, lake_bucket, aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:  # type: ignore[override]  # the parent returns None
        from ml.preprocess.hive import hive_table_name
        from ml.scoring.model import ScoringModel
        from ml.scoring.submit import application_args

        s3, spark, lake = s3_settings(self.aws_conn_id), spark_settings(self._conn_id), lake_settings(self.lake_bucket)
        model = ScoringModel.from_dict(dict(self.model))
        table, raw_uri = self.table or None, None if self.table else (self.raw_uri or None)
        args = application_args(str(self.dataset), model, str(self.score_date), table=table, raw_uri=raw_uri)
        submit_ml_job(self, context, args, spark=spark, s3=s3, lake=lake)
        return {
            "table": hive_table_name(str(self.dataset), "predictions"),
            "score_date": str(self.score_date),
            "model": model.name,
            "model_version": model.version,
        }
