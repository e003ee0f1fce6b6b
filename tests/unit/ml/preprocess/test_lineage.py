"""The OpenLineage Spark listener's configuration (ml/preprocess/lineage.py): the listener and its jars in `--conf`,
the Kafka transport with its login in the driver's environment only, in the Java client's names."""

from __future__ import annotations

import json
import uuid

import pytest

from ml.preprocess.lineage import LISTENER, SparkLineage, listener_conf, listener_env
from ml.settings import KafkaSettings, SparkSettings

JARS = "/jars/openlineage-spark.jar:/jars/kafka-clients.jar"


def test_the_listener_goes_on_the_drivers_classpath_after_the_s3a_jars() -> None:
    spark = SparkSettings(extra_classpath="/jars/hadoop-aws.jar", lineage_classpath=JARS)
    conf = listener_conf(spark, SparkLineage(KafkaSettings(), "openlineage", "mlops-airflow"))
    assert conf == {
        "spark.extraListeners": LISTENER,
        "spark.openlineage.namespace": "mlops-airflow",
        "spark.driver.extraClassPath": f"/jars/hadoop-aws.jar:{JARS}",
    }
    alone = listener_conf(SparkSettings(lineage_classpath=JARS), SparkLineage(KafkaSettings(), "t", "ns"))
    assert alone["spark.driver.extraClassPath"] == JARS


def test_without_the_jars_there_is_no_listener_to_add() -> None:
    with pytest.raises(ValueError, match="lineage_classpath"):
        listener_conf(SparkSettings(), SparkLineage(KafkaSettings(), "t", "ns"))


@pytest.mark.parametrize(
    ("mechanism", "module"),
    [
        ("SCRAM-SHA-512", "org.apache.kafka.common.security.scram.ScramLoginModule"),
        ("SCRAM-SHA-256", "org.apache.kafka.common.security.scram.ScramLoginModule"),
        ("PLAIN", "org.apache.kafka.common.security.plain.PlainLoginModule"),
    ],
)
def test_the_transport_logs_in_with_a_jaas_entry_of_the_mechanism(mechanism: str, module: str) -> None:
    password = uuid.uuid4().hex
    kafka = KafkaSettings("k1:9092,k2:9092", "SASL_SSL", mechanism, username="pipeline", password=password)
    [(name, value)] = listener_env(SparkLineage(kafka, "openlineage", "ns")).items()
    assert name == "OPENLINEAGE__TRANSPORT"
    transport = json.loads(value)
    assert (transport["type"], transport["topicName"]) == ("kafka", "openlineage")
    properties = transport["properties"]
    assert properties["bootstrap.servers"] == "k1:9092,k2:9092"
    assert (properties["security.protocol"], properties["sasl.mechanism"]) == ("SASL_SSL", mechanism)
    assert properties["sasl.jaas.config"] == f'{module} required username="pipeline" password="{password}";'
    assert properties["key.serializer"] == properties["value.serializer"]


def test_a_broker_without_login_gets_no_sasl_properties() -> None:
    transport = json.loads(listener_env(SparkLineage(KafkaSettings("k:9092"), "t", "ns"))["OPENLINEAGE__TRANSPORT"])
    assert transport["properties"]["security.protocol"] == "PLAINTEXT"
    assert not [key for key in transport["properties"] if key.startswith("sasl.")]
