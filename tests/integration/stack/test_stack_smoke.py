"""Each service of the local stack answers a real client over a real connection, reached with the stack's settings
(the `settings` fixture), never through this process's environment."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ml.settings import Settings

# A minimal Spark job (kept with the preprocessing tests): CSV in, Parquet out, the row count printed.
JOB = Path(__file__).resolve().parents[1] / "ml" / "preprocess" / "jobs" / "csv_to_parquet.py"


def test_s3_put_get_list(s3_client: Any, settings: Settings, unique_prefix: str) -> None:
    bucket = settings.lake.raw_bucket
    key = f"{unique_prefix}/hello.txt"
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"hello s3")
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"hello s3"
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=unique_prefix)
    assert [obj["Key"] for obj in listed["Contents"]] == [key]
    s3_client.delete_object(Bucket=bucket, Key=key)
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=unique_prefix)["KeyCount"] == 0


def test_kafka_produce_consume_round_trip(kafka_topic: str, settings: Settings) -> None:
    from kafka import TopicPartition

    from ml.clients import kafka_consumer, kafka_producer

    producer = kafka_producer(settings.kafka, acks="all")
    sent = [f"message-{i}".encode() for i in range(5)]
    for value in sent:
        producer.send(kafka_topic, key=b"k", value=value)
    producer.flush(timeout=30)
    producer.close()

    consumer = kafka_consumer(settings.kafka, consumer_timeout_ms=10000)
    partition = TopicPartition(kafka_topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    received = [record.value for record in consumer]
    consumer.close()
    assert received == sent


def test_pipeline_topics_exist(kafka_service: None, settings: Settings) -> None:
    from ml.clients import kafka_admin
    from ml.topics import ALL_TOPICS

    admin = kafka_admin(settings.kafka)
    try:
        assert {topic.name for topic in ALL_TOPICS} <= set(admin.list_topics())
    finally:
        admin.close()


def test_spark_submit_reads_csv_from_s3a_and_writes_parquet(
    s3_client: Any, settings: Settings, unique_prefix: str, tmp_path: Path
) -> None:
    """spark-submit with the pipeline's configuration (ml.preprocess.conf): s3a through the stack's jars, keys in the
    environment only. A metastore folder of its own: no other job holds its Derby lock."""
    import pyarrow.parquet as pq

    from ml.preprocess.conf import spark_conf, spark_submit_env

    spark = dataclasses.replace(settings.spark, master="local[2]", metastore_dir=str(tmp_path / "hive"))
    raw, lake = settings.lake.raw_bucket, settings.lake.lake_bucket
    csv = "id,name,value\n" + "".join(f"{i},n{i},{i * 1.5}\n" for i in range(100))
    s3_client.put_object(Bucket=raw, Key=f"{unique_prefix}/input.csv", Body=csv.encode())
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", spark.master]
    for key, value in spark_conf(spark, settings.s3, settings.lake).items():
        command += ["--conf", f"{key}={value}"]
    command += [str(JOB), f"s3a://{raw}/{unique_prefix}/input.csv", f"s3a://{lake}/{unique_prefix}/output.parquet"]
    assert settings.s3.secret_access_key not in " ".join(command)
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**inherited, **spark_submit_env(spark, settings.s3)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "rows=100" in result.stdout

    parts = s3_client.list_objects_v2(Bucket=lake, Prefix=f"{unique_prefix}/output.parquet/")["Contents"]
    tables = [
        pq.read_table(io.BytesIO(s3_client.get_object(Bucket=lake, Key=part["Key"])["Body"].read()))
        for part in parts
        if part["Key"].endswith(".parquet")
    ]
    assert sum(table.num_rows for table in tables) == 100
    assert set(tables[0].column_names) == {"id", "name", "value"}


def test_mlflow_log_metric_and_register_model(mlflow_client: Any, settings: Settings) -> None:
    import mlflow

    from ml.clients import mlflow_fluent

    with mlflow_fluent(settings.mlflow):
        mlflow.set_experiment("smoke-tests")
        with mlflow.start_run() as run:
            mlflow.log_metric("loss", 0.5, step=1)
            mlflow.log_dict({"kind": "smoke"}, "model/config.json")
        # The artifact went through the MLflow server into the S3 server.
        downloaded = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/model/config.json")
    assert downloaded == {"kind": "smoke"}
    assert mlflow_client.get_metric_history(run.info.run_id, "loss")[0].value == 0.5
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    mlflow_client.create_registered_model(name)
    try:
        version = mlflow_client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        mlflow_client.set_registered_model_alias(name, "champion", version.version)
        assert mlflow_client.get_model_version_by_alias(name, "champion").version == version.version
    finally:
        mlflow_client.delete_registered_model(name)


def test_ray_starts_and_runs_a_task() -> None:
    import ray

    from ml.settings import RaySettings
    from ml.tune.runtime import ray_auth_scope

    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as temp_dir:
        with ray_auth_scope(RaySettings()):
            ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        try:

            @ray.remote
            def square(x: int) -> int:
                return x * x

            assert ray.get([square.remote(i) for i in range(8)]) == [i * i for i in range(8)]
        finally:
            ray.shutdown()


def test_the_drift_monitor_streams_the_serving_topic_with_its_checkpoint_in_s3(
    s3_client: Any, settings: Settings
) -> None:
    """`up` started it: its Spark UI lists the streaming query as active, and the query keeps its checkpoint (the
    metadata written when it started, the offsets of its micro-batches) in the lake."""
    from ml.storage import drift_checkpoint_uri, exists, list_keys
    from stack.services import DRIFT_MONITOR

    assert DRIFT_MONITOR.is_healthy({}), "no active streaming query in the drift monitor's Spark UI"
    checkpoint = drift_checkpoint_uri(settings.lake)
    assert exists(checkpoint.join("metadata"), s3_client)
    assert list_keys(checkpoint.join("offsets"), s3_client), "the monitor ran no micro-batch"
