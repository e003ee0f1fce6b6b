"""The streaming drift monitor (`python -m ml monitor`): a Spark Structured Streaming query over the serving topic.

Spark does the streaming. It reads `mlops.serving.metrics.v1` with its Kafka source (its own offsets, no consumer
group commits), keeps the answered requests that carry sampled inputs, turns each into one row per (input column,
value) and counts every distinct value per event-time window, model and version, with a watermark. Its offsets and
the windows' state are checkpointed in S3, so a monitor that is killed and started again resumes after the last
committed micro-batch: no request is counted twice or lost, whatever the restarts. When the watermark passes a
window's end, the window's counts come out once (append mode), and the driver (`foreachBatch`) bins them against the
version's training distributions (ml.drift.window reads values as the preprocessing job did) and publishes one
`mlops.drift.v1` event per version and window, each acknowledged by the broker before the batch commits. A batch run
again after a crash between publishing and committing sends the same events again, with the same keys and event ids
(ml.events.envelope.derived_event_id): consumers that keep the ids they have seen count each window once.

Counting distinct values rather than bins keeps Python off the executors (only built-in expressions run there) and
the bins on the driver, where the model version's distributions are: a window holds at most as many distinct values
per column as sampled rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ml.drift.window import DriftThresholds, drift_payload, window_drift
from ml.features.distributions import TrainingDistributions
from ml.preprocess.steps import spark_path
from ml.topics import SERVING_METRICS

log = logging.getLogger(__name__)

APP_NAME = "mlops-drift-monitor"
# Spark's Kafka source names its consumers' groups with this prefix (ml.drift.monitor.kafka_source_options; Spark adds
# a query's id): the stack's Kafka user `monitor` may read exactly the groups whose names start with it.
GROUP_ID_PREFIX = "mlops-drift-monitor"


@dataclass(frozen=True)
class MonitorConfig:
    """What the monitor watches and how: `checkpoint_uri` (S3) holds its offsets and window state; `window` and
    `watermark` are Spark durations ("1 minute"): a window is final once events `watermark` later than its end have
    arrived; `trigger`: how often a micro-batch runs (`once`: process what is on the topic, then stop): no more
    often than a window closes, since each batch with data writes about ten checkpoint objects, and the local S3
    server notifies every write to Kafka, where the raw-uploads watcher reads them all; `topic`: the
    serving-metrics topic to read (another deployment's, or a test's)."""

    checkpoint_uri: str
    topic: str = SERVING_METRICS.name
    window: str = "1 minute"
    watermark: str = "30 seconds"
    trigger: str = "1 minute"
    once: bool = False
    starting_offsets: str = "earliest"
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    ui_port: int | None = (
        None  # Spark's UI (its Structured Streaming tab); None: Spark's default, 4040 or the next free
    )


def parse_serving_events(raw: Any) -> Any:
    """Kafka records of the serving topic -> one row per sampled input value: event_time, model_name, model_version,
    feature, value (the value's JSON text; null for a missing value). Refused requests and unsampled ones have no
    inputs; a record that is not a serving_metrics.v1 envelope parses to nulls and is dropped."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    envelope = T.StructType(
        [
            T.StructField("schema", T.StringType()),
            T.StructField("event_time", T.StringType()),
            T.StructField(
                "payload",
                T.StructType(
                    [
                        T.StructField("model_name", T.StringType()),
                        T.StructField("model_version", T.StringType()),
                        T.StructField("status", T.IntegerType()),
                        # Numbers, strings and nulls: a StringType field keeps a number's JSON text.
                        T.StructField("inputs", T.MapType(T.StringType(), T.ArrayType(T.StringType()))),
                    ]
                ),
            ),
        ]
    )
    event = F.from_json(F.col("value").cast("string"), envelope)
    parsed = raw.select(event.alias("e")).where(
        (F.col("e.schema") == SERVING_METRICS.schema)
        & F.col("e.payload.inputs").isNotNull()
        & (F.col("e.payload.status") < 400)
        & F.col("e.payload.model_name").isNotNull()
        & F.col("e.payload.model_version").isNotNull()
    )
    rows = parsed.select(
        F.to_timestamp("e.event_time").alias("event_time"),
        F.col("e.payload.model_name").alias("model_name"),
        F.col("e.payload.model_version").alias("model_version"),
        F.explode("e.payload.inputs").alias("feature", "values"),
    ).where(F.col("event_time").isNotNull())
    return rows.select("event_time", "model_name", "model_version", "feature", F.explode("values").alias("value"))


def window_counts(rows: Any, config: MonitorConfig) -> Any:
    """Each distinct value's count per event-time window, model, version and feature; final once the watermark
    passes the window (append mode emits each window once)."""
    from pyspark.sql import functions as F

    counted = (
        rows.withWatermark("event_time", config.watermark)
        .groupBy(F.window("event_time", config.window), "model_name", "model_version", "feature", "value")
        .count()
    )
    # The bounds as epoch seconds: pyspark turns a timestamp into a naive datetime in the Python process's local
    # time zone, whatever the session's, so a datetime would carry the machine's offset into the event.
    return counted.select(
        F.col("window.start").cast("long").alias("window_start"),
        F.col("window.end").cast("long").alias("window_end"),
        "model_name",
        "model_version",
        "feature",
        "value",
        "count",
    )


def _iso(epoch_seconds: int) -> str:
    """A window bound as the schema's ISO-8601 UTC."""
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat().replace("+00:00", "Z")


def group_windows(rows: list[Any]) -> dict[tuple[str, str, str, str], dict[str, dict[str | None, int]]]:
    """A batch's rows -> {(model, version, window start, window end): {feature: {value: count}}}."""
    windows: dict[tuple[str, str, str, str], dict[str, dict[str | None, int]]] = {}
    for row in rows:
        key = (row["model_name"], row["model_version"], _iso(row["window_start"]), _iso(row["window_end"]))
        values = windows.setdefault(key, {}).setdefault(row["feature"], {})
        values[row["value"]] = values.get(row["value"], 0) + int(row["count"])
    return windows


def drift_events(
    windows: Mapping[tuple[str, str, str, str], Mapping[str, Mapping[str | None, int]]],
    distributions_of: Callable[[str, str], TrainingDistributions | None],
    thresholds: DriftThresholds,
) -> Iterator[dict[str, Any]]:
    """The drift payload of each window whose model version has training distributions (in window order); a version
    without them (trained before they existed, or not found) is logged and skipped."""
    for (model_name, model_version, start, end), values in sorted(windows.items(), key=lambda item: item[0][2]):
        distributions = distributions_of(model_name, model_version)
        if distributions is None:
            log.warning(
                "no training distributions for %s version %s: window %s not compared", model_name, model_version, start
            )
            continue
        features = window_drift(distributions, values, thresholds)
        yield drift_payload(
            model_name=model_name,
            model_version=model_version,
            distributions=distributions,
            window_start=start,
            window_end=end,
            features=features,
            thresholds=thresholds,
        )


def _publish_batch(
    publish: Callable[[dict[str, Any]], None],
    distributions_of: Callable[[str, str], TrainingDistributions | None],
    thresholds: DriftThresholds,
) -> Callable[[Any, int], None]:
    def handle(batch: Any, batch_id: int) -> None:
        windows = group_windows(batch.collect())
        published = 0
        for payload in drift_events(windows, distributions_of, thresholds):
            publish(payload)
            published += 1
            if payload["drifted"]:
                log.warning(
                    "drift in %s version %s, window %s: %s",
                    payload["model_name"],
                    payload["model_version"],
                    payload["window_start"],
                    ", ".join(payload["drifted_features"]),
                )
        if windows:
            log.info("batch %d: %d window(s) closed, %d drift event(s) published", batch_id, len(windows), published)

    return handle


@contextmanager
def running_query(
    spark: Any,
    kafka_source: Mapping[str, str],
    config: MonitorConfig,
    publish: Callable[[dict[str, Any]], None],
    distributions_of: Callable[[str, str], TrainingDistributions | None],
) -> Iterator[Any]:
    """Start the monitor's streaming query on `spark`; yields the StreamingQuery and stops it on exit."""
    raw = spark.readStream.format("kafka").options(**kafka_source).load()
    counts = window_counts(parse_serving_events(raw), config)
    writer = (
        counts.writeStream.outputMode("append")
        .option("checkpointLocation", spark_path(config.checkpoint_uri))
        .queryName(APP_NAME)
        .foreachBatch(_publish_batch(publish, distributions_of, config.thresholds))
    )
    writer = writer.trigger(availableNow=True) if config.once else writer.trigger(processingTime=config.trigger)
    query = writer.start()
    try:
        yield query
    finally:
        if query.isActive:
            query.stop()
