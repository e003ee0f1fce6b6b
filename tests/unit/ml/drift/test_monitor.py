"""ml.drift.monitor: the Kafka source's options (the login in the JAAS entry, never elsewhere), the Spark
configuration (no Hive, the Kafka source's jars shipped), and the distributions lookup's failures as "skip"."""

from __future__ import annotations

from typing import Any

import pytest

from ml.drift import monitor
from ml.drift.monitor import kafka_source_options, monitor_spark_conf
from ml.drift.stream import GROUP_ID_PREFIX, MonitorConfig
from ml.settings import KafkaSettings, S3Settings, Settings, SparkSettings

CONFIG = MonitorConfig(checkpoint_uri="s3://lake/monitor/drift.v1/checkpoint")


def test_the_source_logs_in_as_the_settings_say() -> None:
    kafka = KafkaSettings("b1:9092,b2:9092", username="pipeline", password='p"w')
    options = kafka_source_options(kafka, CONFIG)
    assert options["kafka.bootstrap.servers"] == "b1:9092,b2:9092"
    assert options["kafka.security.protocol"] == "SASL_PLAINTEXT"
    assert options["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert options["kafka.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="pipeline" password="p\\"w";'
    )
    assert options["subscribe"] == "mlops.serving.metrics.v1" and options["startingOffsets"] == "earliest"
    assert options["groupIdPrefix"] == GROUP_ID_PREFIX and GROUP_ID_PREFIX.startswith("mlops-")
    assert options["failOnDataLoss"] == "false"
    assert sum('password="p\\"w"' in value for value in options.values()) == 1, "the password: in the JAAS entry only"


def test_a_broker_without_login_gets_no_sasl_options() -> None:
    options = kafka_source_options(KafkaSettings("127.0.0.1:9092"), CONFIG)
    assert options["kafka.security.protocol"] == "PLAINTEXT"
    assert not any(key.startswith("kafka.sasl") for key in options)


def settings_with(spark: SparkSettings) -> Settings:
    return Settings(s3=S3Settings(access_key_id="id", secret_access_key="sk"), spark=spark)


def test_the_spark_conf_ships_the_kafka_jars_and_opens_no_metastore() -> None:
    spark = SparkSettings(
        extra_classpath="/jars/s3a.jar",
        metastore_dir="/stack/data/hive",
        kafka_source_classpath="/m2/spark-sql-kafka.jar:/m2/kafka-clients.jar",
    )
    conf = monitor_spark_conf(settings_with(spark), CONFIG)
    assert conf["spark.jars"] == "/m2/spark-sql-kafka.jar,/m2/kafka-clients.jar"
    assert conf["spark.sql.catalogImplementation"] == "in-memory"
    assert not any("derby" in value or "jdo" in key for key, value in conf.items())
    assert conf["spark.driver.extraClassPath"] == "/jars/s3a.jar"  # s3a for the checkpoint
    assert "sk" not in conf.values(), "credentials go through the Hadoop configuration, not the conf"


def test_without_the_kafka_jars_the_monitor_says_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"MLOPS_SPARK_KAFKA_CLASSPATH.*make tools"):
        monitor_spark_conf(settings_with(SparkSettings()), CONFIG)


class Registry:
    def __init__(self, tags: dict[str, dict[str, str]]) -> None:
        self.tags = tags

    def get_model_version(self, name: str, version: str) -> Any:
        if (name, version) not in {tuple(key.split(":")) for key in self.tags}:
            raise LookupError(f"no version {version} of {name}")
        return type("Version", (), {"tags": self.tags[f"{name}:{version}"]})()


def test_distributions_are_found_through_the_versions_features_uri(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stored = {
        "s3://lake/datasets/toy/features/snap/training_distributions.json": {
            "version": 1,
            "dataset": "toy",
            "snapshot_id": "snap",
            "rows": 10,
            "numeric": [],
            "categorical": [],
            "bins": 10,
            "relative_error": 0.001,
            "split": "train",
        }
    }
    reads: list[str] = []

    def read_json(uri: Any, client: Any) -> Any:
        reads.append(str(uri))
        return stored[str(uri)]

    registry = Registry({"toy:1": {"features_uri": "s3://lake/datasets/toy/features/snap"}, "toy:2": {}})
    monkeypatch.setattr("ml.clients.mlflow_client", lambda mlflow: registry)
    monkeypatch.setattr("ml.clients.s3_client", lambda s3: object())
    monkeypatch.setattr("ml.storage.read_json", read_json)
    find = monitor.distributions_finder(Settings())
    found = find("toy", "1")
    assert found is not None and found.snapshot_id == "snap"
    assert find("toy", "1") is found and len(reads) == 1, "a version's distributions are read once"
    assert find("toy", "2") is None and "features_uri" in caplog.text  # no tag
    assert find("toy", "3") is None and "no version 3 of toy" in caplog.text
    registry.tags["toy:2"] = {"features_uri": "s3://lake/datasets/toy/features/snap"}  # the tag came later
    assert find("toy", "2") is not None, "a version not found is asked again: the error may pass"
