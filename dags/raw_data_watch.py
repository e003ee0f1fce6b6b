"""raw_data_watch: emits the `raw_data` asset event (which triggers mlops_training) when the raw bucket's content
changes. Every 10 minutes it hashes the listing (keys, ETags, sizes); an unchanged bucket skips, so no event."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Variable, dag, task

from mlops_airflow.assets import RAW_DATA


@dag(
    dag_id="raw_data_watch",
    schedule=timedelta(minutes=10),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "assets"],
    doc_md=__doc__,
)
def raw_data_watch() -> None:
    @task(outlets=[RAW_DATA])
    def detect_new_raw_data() -> str:
        from airflow.sdk.exceptions import AirflowSkipException

        from ml.clients import s3_client
        from ml.ingest.read import content_hash
        from ml.storage import S3Uri, list_keys
        from mlops_airflow.hooks import s3_settings

        raw = S3Uri.parse(RAW_DATA.uri)
        objects = list_keys(raw, s3_client(s3_settings("aws_default")))
        current = content_hash(raw, objects) if objects else "empty"
        if Variable.get("raw_data_watch_hash", default=None) == current:
            raise AirflowSkipException(f"raw data unchanged ({current}): no asset event")
        Variable.set("raw_data_watch_hash", current)
        return current

    detect_new_raw_data()


raw_data_watch()
