"""Airflow connections for unit tests, given the way a deployment gives them: `AIRFLOW_CONN_*` variables (JSON).

`define_connections(monkeypatch, metastore_dir)` returns `define("aws_default", ...)`, which defines exactly the named
connections and removes every other `AIRFLOW_CONN_*` from the test's environment, so a test proves which connections
an operator needs. The keys are fakes made up here; nothing is written anywhere but the test process's environment,
and monkeypatch puts it back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY_ID = "unit-test-access-key"
S3_KEY = "unit-test-s3-key-0123456789"  # the connection's secret: it must reach `ml`, never os.environ or a log
TUNE_ACCESS_KEY_ID = "unit-test-tune-access-key"  # aws_tune: the tune task's own keys
TUNE_S3_KEY = "unit-test-tune-s3-key-0123456789"
S3_ENDPOINT = "http://s3.unit.test:9000"
KAFKA_SERVERS = "kafka.unit.test:9092"
MLFLOW_URI = "http://mlflow.unit.test:5000"
SPARK_CLASSPATH = "/opt/jars/hadoop-aws.jar:/opt/jars/bundle.jar"


def connection_documents(metastore_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        "aws_default": {
            "conn_type": "aws",
            "login": ACCESS_KEY_ID,
            "password": S3_KEY,
            "extra": {"endpoint_url": S3_ENDPOINT, "region_name": "eu-west-1"},
        },
        "aws_tune": {
            "conn_type": "aws",
            "login": TUNE_ACCESS_KEY_ID,
            "password": TUNE_S3_KEY,
            "extra": {"endpoint_url": S3_ENDPOINT, "region_name": "eu-west-1"},
        },
        "spark_default": {
            "conn_type": "spark",
            "host": "spark://spark.unit.test",
            "port": 7077,
            "extra": {
                "deploy-mode": "client",
                "spark-binary": "spark-submit",
                "extra-classpath": SPARK_CLASSPATH,
                "metastore-dir": str(metastore_dir),
                "local-ip": "10.1.2.3",
            },
        },
        "kafka_default": {"conn_type": "kafka", "extra": {"bootstrap.servers": KAFKA_SERVERS}},
        "mlflow_default": {"conn_type": "http", "host": "mlflow.unit.test", "port": 5000, "schema": "http"},
        "ray_default": {"conn_type": "generic", "host": "ray.unit.test", "port": 10001},
    }


def env_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def define_connections(monkeypatch: pytest.MonkeyPatch, metastore_dir: Path) -> Callable[..., None]:
    """`define(*conn_ids, **documents)`: exactly these connections (ids of `connection_documents`, or id=document
    pairs) from now on, in this test."""
    for name in [name for name in os.environ if name.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(name)
    known = connection_documents(metastore_dir)

    def define(*conn_ids: str, **documents: dict[str, Any]) -> None:
        for conn_id in conn_ids:
            monkeypatch.setenv(env_name(conn_id), json.dumps(known[conn_id]))
        for conn_id, document in documents.items():
            monkeypatch.setenv(env_name(conn_id), json.dumps(document))

    return define
