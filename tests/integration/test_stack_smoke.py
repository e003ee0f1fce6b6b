"""Each service of the local stack answers a real client over a real connection."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_s3_put_get_list(s3_client: Any, unique_prefix: str) -> None:
    key = f"{unique_prefix}/hello.txt"
    s3_client.put_object(Bucket="raw", Key=key, Body=b"hello s3")
    assert s3_client.get_object(Bucket="raw", Key=key)["Body"].read() == b"hello s3"
    listed = s3_client.list_objects_v2(Bucket="raw", Prefix=unique_prefix)
    assert [obj["Key"] for obj in listed["Contents"]] == [key]
    s3_client.delete_object(Bucket="raw", Key=key)
    assert s3_client.list_objects_v2(Bucket="raw", Prefix=unique_prefix)["KeyCount"] == 0


def test_kafka_produce_consume_round_trip(kafka_topic: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(bootstrap_servers="127.0.0.1:9092", acks="all")
    sent = [f"message-{i}".encode() for i in range(5)]
    for value in sent:
        producer.send(kafka_topic, key=b"k", value=value)
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(
        kafka_topic,
        bootstrap_servers="127.0.0.1:9092",
        auto_offset_reset="earliest",
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        consumer_timeout_ms=10000,
    )
    received = [record.value for record in consumer]
    consumer.close()
    assert received == sent


def test_pipeline_topics_exist(kafka_service: None) -> None:
    from kafka import KafkaAdminClient

    from ml.topics import ALL_TOPICS

    admin = KafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
    try:
        assert {topic.name for topic in ALL_TOPICS} <= set(admin.list_topics())
    finally:
        admin.close()


def test_spark_submit_reads_csv_from_s3a_and_writes_parquet(s3_client: Any, unique_prefix: str) -> None:
    import pyarrow.parquet as pq

    from ml.sparkconf import spark_conf, spark_submit_env

    csv = "id,name,value\n" + "".join(f"{i},n{i},{i * 1.5}\n" for i in range(100))
    s3_client.put_object(Bucket="raw", Key=f"{unique_prefix}/input.csv", Body=csv.encode())
    job = Path(__file__).parent / "jobs" / "csv_to_parquet.py"
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]"]
    for key, value in spark_conf().items():
        command += ["--conf", f"{key}={value}"]
    command += [str(job), f"s3a://raw/{unique_prefix}/input.csv", f"s3a://lake/{unique_prefix}/output.parquet"]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **spark_submit_env()}, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "rows=100" in result.stdout

    parts = s3_client.list_objects_v2(Bucket="lake", Prefix=f"{unique_prefix}/output.parquet/")["Contents"]
    tables = [
        pq.read_table(io.BytesIO(s3_client.get_object(Bucket="lake", Key=part["Key"])["Body"].read()))
        for part in parts
        if part["Key"].endswith(".parquet")
    ]
    assert sum(table.num_rows for table in tables) == 100
    assert set(tables[0].column_names) == {"id", "name", "value"}


def test_mlflow_log_metric_and_register_model(mlflow_service: None) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_experiment("smoke-tests")
    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_dict({"kind": "smoke"}, "model/config.json")
    client = MlflowClient()
    assert client.get_metric_history(run.info.run_id, "loss")[0].value == 0.5
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    # The artifact went through the MLflow server into the S3 server.
    downloaded = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/model/config.json")
    assert downloaded == {"kind": "smoke"}
    client.delete_registered_model(name)


def test_ray_starts_and_runs_a_task() -> None:
    import ray

    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as temp_dir:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        try:

            @ray.remote
            def square(x: int) -> int:
                return x * x

            assert ray.get([square.remote(i) for i in range(8)]) == [i * i for i in range(8)]
        finally:
            ray.shutdown()
