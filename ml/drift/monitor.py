"""Running the streaming drift monitor (ml.drift.stream) against the configured services: its Spark session, the
Kafka source's options, the training distributions of a model version (found through the registry), and the
publisher of its `mlops.drift.v1` events. `python -m ml monitor` (ml.drift.cli) calls `run_monitor`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ml.drift.stream import APP_NAME, GROUP_ID_PREFIX, MonitorConfig, running_query
from ml.features.distributions import TrainingDistributions
from ml.settings import KafkaSettings, Settings
from ml.topics import DRIFT

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 30.0
FOUND_DISTRIBUTIONS_KEPT = 256


def kafka_source_options(kafka: KafkaSettings, config: MonitorConfig) -> dict[str, str]:
    """Spark's Kafka source options: the Java client's connection properties under `kafka.` (the login's JAAS entry
    among them: Spark redacts it in plans and logs), the serving topic, where a first start begins, and the prefix of
    its consumers' group names. A record deleted by retention before it was read is skipped, not a failure."""
    from ml.clients import java_kafka_properties

    return {
        **{f"kafka.{key}": value for key, value in java_kafka_properties(kafka).items()},
        "subscribe": config.topic,
        "startingOffsets": config.starting_offsets,
        "failOnDataLoss": "false",
        "groupIdPrefix": GROUP_ID_PREFIX,
    }


def monitor_spark_conf(settings: Settings, config: MonitorConfig) -> dict[str, str]:
    """The pipeline's Spark configuration (s3a for the checkpoint) without the Hive catalog (the monitor writes no
    table, and the local embedded metastore admits one driver at a time: the preprocessing job's), plus the Kafka
    source's jars as `spark.jars`, which Spark also ships to a cluster's executors."""
    from ml.preprocess.conf import spark_conf

    if not settings.spark.kafka_source_classpath:
        raise ValueError(
            "the jars of Spark's Kafka source are not configured (MLOPS_SPARK_KAFKA_CLASSPATH; `make tools` fetches "
            "them into the stack folder)"
        )
    conf = spark_conf(settings.spark, settings.s3, settings.lake)
    conf["spark.sql.catalogImplementation"] = "in-memory"
    conf.pop("spark.hadoop.javax.jdo.option.ConnectionURL", None)
    conf.pop("spark.driver.extraJavaOptions", None)
    conf["spark.jars"] = ",".join(path for path in settings.spark.kafka_source_classpath.split(":") if path)
    # One partition per core for the small aggregation, not the batch jobs' count.
    conf["spark.sql.shuffle.partitions"] = "4"
    if config.ui_port is not None:
        conf["spark.ui.port"] = str(config.ui_port)
    return conf


def distributions_finder(settings: Settings) -> Callable[[str, str], TrainingDistributions | None]:
    """(model name, version) -> the version's training distributions: its `features_uri` tag names the features
    folder, which holds `training_distributions.json` (ml.storage). None when the version, the tag or the file is
    missing or unreadable (logged; asked again for the next window, as the error may pass); distributions found are
    kept, a version's never change."""
    from ml.clients import mlflow_client, s3_client
    from ml.storage import read_json, training_distributions_uri

    client, s3 = mlflow_client(settings.mlflow), s3_client(settings.s3)
    found: dict[tuple[str, str], TrainingDistributions] = {}

    def find(model_name: str, model_version: str) -> TrainingDistributions | None:
        if (model_name, model_version) in found:
            return found[model_name, model_version]
        try:
            tags = client.get_model_version(model_name, model_version).tags
            uri = training_distributions_uri(tags["features_uri"])
            distributions = TrainingDistributions.from_dict(read_json(uri, s3))
        except Exception as error:  # a registry or S3 error, a missing tag or file: the window is skipped, logged
            log.warning("training distributions of %s version %s: %s", model_name, model_version, error)
            return None
        if len(found) >= FOUND_DISTRIBUTIONS_KEPT:
            found.pop(next(iter(found)))  # the oldest: a long-lived monitor sees versions come and go
        found[model_name, model_version] = distributions
        return distributions

    return find


@contextmanager
def drift_publisher(kafka: KafkaSettings) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A function that sends one drift payload and waits for the broker's acknowledgement (an error raises: the
    micro-batch fails and runs again after a restart). The key is the model version and window; the event id is
    derived from it."""
    from ml.events.envelope import derived_event_id, drift_key, make_envelope
    from ml.events.publisher import sync_publisher

    with sync_publisher(kafka, timeout_s=PUBLISH_TIMEOUT_S, client_id=APP_NAME) as publisher:

        def publish(payload: dict[str, Any]) -> None:
            key = drift_key(payload["model_name"], payload["model_version"], payload["window_start"])
            publisher.send(DRIFT, make_envelope(DRIFT, payload, event_id=derived_event_id(DRIFT, key)), key)

        yield publish


def run_monitor(settings: Settings, config: MonitorConfig) -> dict[str, Any]:
    """Run the monitor until it is stopped (or, with `config.once`, until what is on the topic is processed)."""
    from pyspark.sql import SparkSession

    from ml.preprocess.conf import apply_s3a_credentials

    # py4j logs each micro-batch's callback into Python at INFO: two lines every trigger of a long-lived monitor.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    builder = SparkSession.builder.appName(APP_NAME).master(settings.spark.master)
    for key, value in monitor_spark_conf(settings, config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    try:
        apply_s3a_credentials(spark, settings.s3)
        source = kafka_source_options(settings.kafka, config)
        with drift_publisher(settings.kafka) as publish:
            with running_query(spark, source, config, publish, distributions_finder(settings)) as query:
                log.info(
                    "drift monitor on %s: windows of %s, watermark %s, checkpoint %s",
                    config.topic,
                    config.window,
                    config.watermark,
                    config.checkpoint_uri,
                )
                query.awaitTermination()
                progress = query.lastProgress or {}
        return {"checkpoint_uri": config.checkpoint_uri, "last_batch_id": progress.get("batchId")}
    finally:
        spark.stop()
