"""Hooks: each reads one Airflow connection and returns its slice of `ml.settings`, or wraps the client built from it.

Credentials never appear in DAG code or XCom, and nothing here writes the worker's environment: the settings are
passed to `ml` as arguments (and become environment variables only for a subprocess such as spark-submit).
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from ml.preprocess.lineage import SparkLineage
    from ml.settings import KafkaSettings, MlflowSettings, RaySettings, S3Settings, SparkSettings


def _extra(conn: Any) -> dict[str, Any]:
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else json.loads(conn.extra or "{}")
    return dict(extra)


def s3_settings(aws_conn_id: str) -> S3Settings:
    """Endpoint, region and credentials of an AWS connection, resolved by the Amazon provider (keys, a role, a
    profile or the instance's chain: whatever the connection says)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk.log import mask_secret

    from ml.settings import S3Settings

    hook = S3Hook(aws_conn_id=aws_conn_id)
    found = hook.get_session(region_name=hook.conn_region_name).get_credentials()
    if found is None:  # the provider's get_credentials() would fail with an AttributeError here
        raise ValueError(
            f"AWS connection {aws_conn_id!r} yields no credentials: give it a login and password, a role or a "
            "profile, or give the worker an AWS credential chain"
        )
    credentials = found.get_frozen_credentials()
    for secret in (credentials.secret_key, credentials.token):
        if secret:
            mask_secret(secret)  # as the provider's get_credentials() does: never in a task log
    return S3Settings(
        endpoint_url=hook.conn_config.endpoint_url or None,
        region=hook.conn_region_name or "us-east-1",
        access_key_id=credentials.access_key or None,
        secret_access_key=credentials.secret_key or None,
        session_token=credentials.token or None,
    )


def spark_settings(spark_conn_id: str) -> SparkSettings:
    """What the pipeline adds to Spark jobs from a Spark connection's extra (docs/PIPELINE.md, "Pointing at a
    cluster"): `extra-classpath` (jars on this host for the driver, such as the s3a connector),
    `executor-extra-classpath` (jars that exist on a cluster's workers), `metastore-uri` (a networked Hive metastore)
    or `metastore-dir` (an embedded Derby metastore's folder), `local-ip` (the driver's address), `cores-max` (the
    cores one job may take), `lineage-classpath` (the OpenLineage Spark listener's jars on this host) and
    `class-archive-dir` (a folder for the driver's class archives: ml.preprocess.class_archive). The master
    is the one SparkSubmitHook submits to (host, and port when there is one)."""
    from ml.settings import SparkSettings

    conn = BaseHook.get_connection(spark_conn_id)
    extra = _extra(conn)
    master = conn.host or SparkSettings.master
    cores_max = extra.get("cores-max")
    return SparkSettings(
        # As SparkSubmitHook reads it: host, plus the port when the connection has one (spark://master:7077).
        master=f"{master}:{conn.port}" if conn.port and conn.host else master,
        extra_classpath=str(extra.get("extra-classpath") or ""),
        metastore_dir=extra.get("metastore-dir") or None,
        local_ip=extra.get("local-ip") or None,
        metastore_uri=extra.get("metastore-uri") or None,
        executor_classpath=str(extra.get("executor-extra-classpath") or ""),
        cores_max=int(cores_max) if cores_max not in (None, "") else None,
        lineage_classpath=str(extra.get("lineage-classpath") or ""),
        class_archive_dir=extra.get("class-archive-dir") or None,
    )


class MlflowHook(BaseHook):
    """The MLflow tracking server / model registry of an HTTP connection (host = the tracking URI; login and password
    = a login of its basic-auth app, if it runs one)."""

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "http"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def settings(self) -> MlflowSettings:
        from ml.settings import MlflowSettings

        conn = self.get_connection(self.mlflow_conn_id)
        host = conn.host or ""
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
        # The login of a server that runs MLflow's basic-auth app (none: a server without authentication).
        return MlflowSettings(host.rstrip("/"), username=conn.login or None, password=conn.password or None)

    @cached_property
    def client(self) -> Any:
        from ml.clients import mlflow_client

        return mlflow_client(self.settings)

    def available_settings(self) -> MlflowSettings:
        """The settings, once the server has answered a request that reads its store (ml.preflight.require_mlflow):
        a task whose MLflow, or MLflow's database, is down fails at once naming it instead of retrying for minutes."""
        from ml.preflight import require_mlflow

        require_mlflow(self.settings)
        return self.settings

    def test_connection(self) -> tuple[bool, str]:
        """The Airflow UI's connection test: the same request."""
        from ml.preflight import ServiceUnavailable

        try:
            self.available_settings()
        except ServiceUnavailable as error:
            return False, str(error)
        return True, f"the MLflow server at {self.settings.tracking_uri} answers"

    def find_model_version(self, model_name: str, tags: dict[str, str]) -> Any | None:
        """The newest version of a registered model whose tags include all of `tags`, or None when there is none.
        An MLflow error propagates: an unreachable registry is not "no model"."""
        from ml.experiments import quoted

        query = " and ".join([f"name = {quoted(model_name)}", *[f"tags.`{k}` = {quoted(v)}" for k, v in tags.items()]])
        versions = self.client.search_model_versions(query, order_by=["version_number DESC"], max_results=1)
        return versions[0] if versions else None


class KafkaEventsHook(BaseHook):
    """The pipeline's Kafka brokers and login from a connection's extra, in the names of Airflow's Kafka provider
    (librdkafka's): `bootstrap.servers` (else host and port), and for a broker that wants a login
    `security.protocol` (SASL_PLAINTEXT or SASL_SSL), `sasl.mechanisms` (SCRAM-SHA-512 unless given),
    `sasl.username` and `sasl.password`. Without them the client does not log in (PLAINTEXT)."""

    conn_name_attr = "kafka_conn_id"
    default_conn_name = "kafka_default"
    conn_type = "kafka"
    hook_name = "Kafka events"

    def __init__(self, kafka_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.kafka_conn_id = kafka_conn_id

    @cached_property
    def settings(self) -> KafkaSettings:
        conn = self.get_connection(self.kafka_conn_id)
        extra = _extra(conn)
        servers = extra.get("bootstrap.servers") or (f"{conn.host}:{conn.port or 9092}" if conn.host else "")
        return kafka_settings_from_librdkafka(
            {**extra, "bootstrap.servers": servers}, f"connection {self.kafka_conn_id!r}"
        )

    def publish(self, topic: Any, payload: dict[str, Any], key: str, dag_run_id: str | None = None) -> None:
        """Send one event and wait for the broker (EventPublishError when Kafka does not take it)."""
        from ml.events.publisher import publish_event

        publish_event(self.settings, topic, payload, key, dag_run_id=dag_run_id)


def kafka_settings_from_librdkafka(config: dict[str, Any], source: str) -> KafkaSettings:
    """KafkaSettings from a client configuration in librdkafka's names (a Kafka connection's extra, the OpenLineage
    provider's Kafka transport); `source` names it in errors. The password is masked in task logs."""
    from airflow.sdk.log import mask_secret

    from ml.settings import KafkaSettings

    servers = config.get("bootstrap.servers")
    if not servers:
        raise ValueError(f"{source} has no bootstrap.servers")
    password = config.get("sasl.password") or None
    if password:
        mask_secret(password)  # as s3_settings does for its keys: never in a task log
    try:
        return KafkaSettings(
            str(servers),
            security_protocol=config.get("security.protocol") or None,
            # librdkafka takes both spellings; the provider's documentation writes `sasl.mechanisms`.
            sasl_mechanism=config.get("sasl.mechanisms") or config.get("sasl.mechanism") or None,
            username=config.get("sasl.username") or None,
            password=password,
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def openlineage_spark_target() -> SparkLineage | None:
    """Where the Spark listener sends a job's OpenLineage events: the OpenLineage provider's own transport (its
    `[openlineage] config_conn_id` connection, or `[openlineage] transport`) when that is Kafka, in its namespace.
    None when OpenLineage is off or sends elsewhere (an HTTP transport reaches Spark through the provider's
    `spark_inject_transport_info` instead)."""
    from airflow.providers.openlineage import conf as openlineage_conf

    from ml.preprocess.lineage import SparkLineage

    if openlineage_conf.is_disabled():
        return None
    conn_id = openlineage_conf.config_conn_id()
    transport = (
        _extra(BaseHook.get_connection(conn_id)).get("transport") if conn_id else openlineage_conf.transport()
    ) or {}
    if transport.get("type") != "kafka":
        return None
    source = f"OpenLineage's Kafka transport ({f'connection {conn_id!r}' if conn_id else '[openlineage] transport'})"
    kafka = kafka_settings_from_librdkafka(dict(transport.get("config") or {}), source)
    return SparkLineage(kafka=kafka, topic=str(transport["topic"]), namespace=openlineage_conf.namespace())


class RayHook(BaseHook):
    """The Ray cluster of a connection: the extra's `address` used as given (`10.0.0.5:6380`, `ray://head:10001`),
    else host and port (a host without a scheme becomes `ray://host:port`, port 10001 by default); the password is the
    cluster's auth token, and the extra's `auth-mode` (`token` / `disabled`) Ray's RAY_AUTH_MODE when it is not simply
    "token when there is a token". Without the connection, or without an address, the search starts a local Ray inside
    the task. The extra's `state-signing-secret` is the key that signs the search's Tune state in S3 (with or without
    an address; a search refuses to run without one)."""

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "generic"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id

    @cached_property
    def settings(self) -> RaySettings:
        from airflow.sdk.exceptions import AirflowNotFoundException
        from airflow.sdk.log import mask_secret

        from ml.settings import RaySettings

        try:
            conn = self.get_connection(self.ray_conn_id)
        except AirflowNotFoundException:
            return RaySettings(None)
        extra = _extra(conn)
        signing_key = extra.get("state-signing-secret") or None
        if signing_key:
            mask_secret(signing_key)
        address = extra.get("address") or None
        if address is None and conn.host:
            address = conn.host if "://" in conn.host else f"ray://{conn.host}:{conn.port or 10001}"
        if address is None:
            return RaySettings(None, state_signing_key=signing_key)
        if conn.password:
            mask_secret(conn.password)  # as s3_settings does for its keys: never in a task log
        return RaySettings(
            address,
            auth_token=conn.password or None,
            auth_mode=extra.get("auth-mode") or None,
            state_signing_key=signing_key,
        )
