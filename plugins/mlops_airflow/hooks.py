"""Hooks: each wraps one client and reads one Airflow connection. Credentials never appear in DAG code or XCom."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook


def _extra(conn: Any) -> dict[str, Any]:
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else json.loads(conn.extra or "{}")
    return dict(extra)


class MlflowHook(BaseHook):
    """The MLflow tracking server / model registry of an HTTP connection (host = the tracking URI)."""

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "http"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def tracking_uri(self) -> str:
        conn = self.get_connection(self.mlflow_conn_id)
        host = conn.host or ""
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
        return host.rstrip("/")

    @cached_property
    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def environment(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.tracking_uri}

    def find_model_version(self, model_name: str, tags: dict[str, str]) -> Any | None:
        """The newest version of a registered model whose tags include all of `tags`, if any."""
        from mlflow.exceptions import MlflowException

        query = " and ".join([f"name = '{model_name}'", *[f"tags.`{k}` = '{v}'" for k, v in tags.items()]])
        try:
            versions = self.client.search_model_versions(query, order_by=["version_number DESC"], max_results=1)
        except MlflowException:
            return None
        return versions[0] if versions else None


class KafkaEventsHook(BaseHook):
    """The pipeline's Kafka event publisher for a connection whose extra holds `bootstrap.servers`."""

    conn_name_attr = "kafka_conn_id"
    default_conn_name = "kafka_default"
    conn_type = "kafka"
    hook_name = "Kafka events"

    def __init__(self, kafka_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.kafka_conn_id = kafka_conn_id

    @cached_property
    def bootstrap_servers(self) -> str:
        conn = self.get_connection(self.kafka_conn_id)
        servers = _extra(conn).get("bootstrap.servers") or (f"{conn.host}:{conn.port or 9092}" if conn.host else "")
        if not servers:
            raise ValueError(f"connection {self.kafka_conn_id!r} has no bootstrap.servers in its extra")
        return str(servers)

    def environment(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}

    def publish(self, topic: Any, payload: dict[str, Any], key: str, dag_run_id: str | None = None) -> None:
        from ml.events import publish_event

        publish_event(topic, payload, key, dag_run_id=dag_run_id, bootstrap_servers=self.bootstrap_servers)


class RayHook(BaseHook):
    """The Ray cluster of a connection (host = the address, e.g. ray://head:10001); no connection = a local Ray."""

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "generic"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id

    @cached_property
    def address(self) -> str | None:
        from airflow.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.ray_conn_id)
        except AirflowNotFoundException:
            return os.environ.get("RAY_ADDRESS") or None
        if not conn.host:
            return None
        return conn.host if "://" in conn.host else f"ray://{conn.host}:{conn.port or 10001}"

    def environment(self) -> dict[str, str]:
        return {"RAY_ADDRESS": self.address} if self.address else {}


def s3_environment(aws_conn_id: str) -> dict[str, str]:
    """Endpoint, region and keys of an AWS connection, for `ml` (boto3, pyarrow) and spark-submit (s3a)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id)
    env: dict[str, str] = {}
    credentials = hook.get_credentials()
    if credentials.access_key:
        env["AWS_ACCESS_KEY_ID"] = credentials.access_key
        env["AWS_SECRET_ACCESS_KEY"] = credentials.secret_key
        if credentials.token:
            env["AWS_SESSION_TOKEN"] = credentials.token
    endpoint = hook.conn_config.endpoint_url
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    if hook.conn_region_name:
        env["AWS_DEFAULT_REGION"] = hook.conn_region_name
    return env


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a call into `ml` (which reads its endpoints from there)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
