"""Kafka topics of the pipeline: versioned names with their partitions and retention (the one place they are set)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str
    schema: str  # the JSON Schema file in ml/schemas/ that every message's envelope names
    partitions: int
    retention_ms: int


DAY_MS = 24 * 3600 * 1000
# v1 is kept for existing consumers (its schema is closed, so the dataset fields could not be added to it); new
# consumers read v2, which says which dataset, snapshot and model a metric belongs to. Both carry every trial-epoch.
TRAINING_METRICS = Topic("mlops.training.metrics.v1", "training_metrics.v1", partitions=3, retention_ms=7 * DAY_MS)
TRAINING_METRICS_V2 = Topic("mlops.training.metrics.v2", "training_metrics.v2", partitions=3, retention_ms=7 * DAY_MS)
PIPELINE_EVENTS = Topic("mlops.pipeline.events.v1", "pipeline_event.v1", partitions=1, retention_ms=30 * DAY_MS)
MODEL_PROMOTED = Topic("mlops.model.promoted.v1", "model_promoted.v1", partitions=1, retention_ms=365 * DAY_MS)
# One message per prediction request (ml.serve.telemetry), keyed by model and request: spread over the partitions.
SERVING_METRICS = Topic("mlops.serving.metrics.v1", "serving_metrics.v1", partitions=3, retention_ms=7 * DAY_MS)
# One message per model version and window of live requests (ml.drift): the streaming drift monitor's verdicts.
DRIFT = Topic("mlops.drift.v1", "drift.v1", partitions=1, retention_ms=30 * DAY_MS)
# The pipeline's own events, each an envelope of ml.events.envelope validated against its schema.
ALL_TOPICS: tuple[Topic, ...] = (
    TRAINING_METRICS,
    TRAINING_METRICS_V2,
    PIPELINE_EVENTS,
    MODEL_PROMOTED,
    SERVING_METRICS,
    DRIFT,
)
# The S3 server's bucket notifications (AWS's event format, not an envelope: ml.events.s3_notifications reads them).
S3_EVENTS = Topic("mlops.s3.events.v1", "aws_s3_event", partitions=1, retention_ms=7 * DAY_MS)
# OpenLineage run events of Airflow's tasks and the Spark job (OpenLineage's own JSON, not an envelope: its schema is
# OpenLineage's spec, which openlineage-python's models implement). The name is the one OpenLineage consumers
# (Marquez, DataHub) are set up with by default. Several partitions would break the per-job order its client keys for.
OPENLINEAGE = Topic("openlineage", "openlineage.RunEvent", partitions=1, retention_ms=30 * DAY_MS)
# Every topic the stack creates on its broker.
BROKER_TOPICS: tuple[Topic, ...] = (*ALL_TOPICS, S3_EVENTS, OPENLINEAGE)
