"""Assets shared by the DAGs: one definition, so the producer and the consumer agree."""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from mlops_airflow.triggers import DriftEventTrigger, S3NotificationTrigger

RAW_BUCKET = "raw"
# The Kafka connection of the watcher: the pipeline's login, a consumer group of its own and no auto-commit (the
# shared-stream trigger refuses to start without `enable.auto.commit=false`). stack.airflow_home writes it.
S3_EVENTS_CONNECTION = "kafka_s3_events"
S3_EVENTS_TOPIC = "mlops.s3.events.v1"  # ml.topics.S3_EVENTS (no `ml` import at parse time; a unit test checks it)

# Uploads to the raw bucket, as the S3 server notifies them through Kafka: each notification is an asset event (its
# objects in the payload) and schedules raw_data_events, which starts the training of the dataset that changed.
RAW_UPLOADS = Asset(
    name="raw_uploads",
    uri=f"s3://{RAW_BUCKET}/",
    watchers=[
        AssetWatcher(
            name="s3_notifications",
            trigger=S3NotificationTrigger(
                topics=[S3_EVENTS_TOPIC],
                buckets=[RAW_BUCKET],
                kafka_config_id=S3_EVENTS_CONNECTION,
                url_encoded_keys=False,  # Versity S3 Gateway sends keys as they are (AWS: True)
            ),
        )
    ],
)

# The drift monitor's verdicts (ml.drift): each window that drifted is an asset event (the drifted window in its
# payload) and schedules drift_retraining, which retrains the dataset or only alerts, as its route says.
DRIFT_EVENTS_CONNECTION = "kafka_drift_events"
DRIFT_TOPIC = "mlops.drift.v1"  # ml.topics.DRIFT (a unit test checks it)
MODEL_DRIFT = Asset(
    name="model_drift",
    watchers=[
        AssetWatcher(
            name="drift_monitor",
            trigger=DriftEventTrigger(topics=[DRIFT_TOPIC], kafka_config_id=DRIFT_EVENTS_CONNECTION),
        )
    ],
)
