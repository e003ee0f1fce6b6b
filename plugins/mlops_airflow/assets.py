"""Assets shared by the DAGs: one definition, so the producer and the consumer agree."""

from __future__ import annotations

from airflow.sdk import Asset

# The raw bucket: an event on it (from raw_data_watch, or POST /api/v2/assets/events) triggers mlops_training.
RAW_DATA = Asset(name="raw_data", uri="s3://raw/")
