"""OpenLineage from the Spark job: the OpenLineage Spark listener (`io.openlineage:openlineage-spark_2.13`, with
kafka-clients, both on the driver's classpath: stack/maven/spark-lineage-pom.xml) sends the job's run events, with
the datasets Spark read and wrote, to the same Kafka topic as Airflow's.

The transport goes to the driver through its environment (`OPENLINEAGE__TRANSPORT`, which the listener's client
reads as JSON), never through `--conf`: it holds the Kafka password, and the command line and Spark's UI show every
`--conf`. The job's parent (the Airflow task that submitted it) comes from the Airflow provider's
`spark_inject_parent_job_info` (`spark.openlineage.parent*`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ml.clients import java_kafka_properties
from ml.settings import KafkaSettings, SparkSettings

LISTENER = "io.openlineage.spark.agent.OpenLineageSparkListener"
STRING_SERIALIZER = "org.apache.kafka.common.serialization.StringSerializer"


@dataclass(frozen=True)
class SparkLineage:
    """Where a job's OpenLineage events go: a Kafka topic, and the namespace its jobs are named in."""

    kafka: KafkaSettings
    topic: str
    namespace: str


def listener_conf(spark: SparkSettings, lineage: SparkLineage) -> dict[str, str]:
    """The `--conf` pairs that add the listener to a job (no secret among them). The jars go on the driver's classpath
    only: the listener runs in the driver."""
    if not spark.lineage_classpath:
        raise ValueError("the OpenLineage Spark listener's jars are not configured (SparkSettings.lineage_classpath)")
    classpath = ":".join(part for part in (spark.extra_classpath, spark.lineage_classpath) if part)
    return {
        "spark.extraListeners": LISTENER,
        "spark.openlineage.namespace": lineage.namespace,
        "spark.driver.extraClassPath": classpath,
    }


def listener_env(lineage: SparkLineage) -> dict[str, str]:
    """The driver's environment variable that configures the listener's Kafka transport (OpenLineage's Java client:
    `topicName`, and the producer's `properties` in Kafka's Java names, the login as a JAAS entry)."""
    properties = {
        **java_kafka_properties(lineage.kafka),
        "acks": "all",
        "key.serializer": STRING_SERIALIZER,
        "value.serializer": STRING_SERIALIZER,
    }
    transport = {"type": "kafka", "topicName": lineage.topic, "properties": properties}
    return {"OPENLINEAGE__TRANSPORT": json.dumps(transport)}
