"""plugins/mlops_airflow/hooks.py: each hook turns one connection (given as `AIRFLOW_CONN_*`, see conftest.py) into
its slice of ml.settings, and the hooks that wrap a client use it as documented."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ml.settings import KafkaSettings, MlflowSettings, RaySettings, S3Settings, SparkSettings
from tests.support.airflow_connections import (
    ACCESS_KEY_ID,
    KAFKA_SERVERS,
    MLFLOW_URI,
    S3_ENDPOINT,
    S3_KEY,
    SPARK_CLASSPATH,
)

Define = Callable[..., None]


# --- S3 ---------------------------------------------------------------------------------------------------------------


def test_s3_settings_come_from_the_aws_connection(connections: Define) -> None:
    from mlops_airflow.hooks import s3_settings

    connections("aws_default")
    settings = s3_settings("aws_default")
    assert settings == S3Settings(
        endpoint_url=S3_ENDPOINT, region="eu-west-1", access_key_id=ACCESS_KEY_ID, secret_access_key=S3_KEY
    )
    assert S3_KEY not in repr(settings), "the secret stays out of reprs (and so out of logs)"


def test_s3_settings_of_a_connection_without_endpoint_are_aws_s3(connections: Define) -> None:
    from mlops_airflow.hooks import s3_settings

    connections(aws_s3={"conn_type": "aws", "login": ACCESS_KEY_ID, "password": S3_KEY})
    settings = s3_settings("aws_s3")
    assert (settings.endpoint_url, settings.region) == (None, "us-east-1")
    assert settings.subprocess_env()["AWS_ACCESS_KEY_ID"] == ACCESS_KEY_ID


def test_s3_settings_name_the_connection_that_yields_no_credentials(
    connections: Define, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlops_airflow.hooks import s3_settings

    # Nothing in botocore's chain either: no keys in the environment, no shared files, no instance metadata.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    connections(keyless={"conn_type": "aws", "extra": {"endpoint_url": S3_ENDPOINT}})
    with pytest.raises(ValueError, match="'keyless' yields no credentials"):
        s3_settings("keyless")


# --- Spark ------------------------------------------------------------------------------------------------------------


def test_spark_settings_come_from_the_spark_connection_and_its_extras(connections: Define, tmp_path: Path) -> None:
    from mlops_airflow.hooks import spark_settings

    connections("spark_default")
    assert spark_settings("spark_default") == SparkSettings(
        master="spark://spark.unit.test:7077",
        extra_classpath=SPARK_CLASSPATH,
        metastore_dir=str(tmp_path / "hive"),
        local_ip="10.1.2.3",
    )


def test_spark_settings_without_extras_add_nothing(connections: Define) -> None:
    from mlops_airflow.hooks import spark_settings

    connections(spark_local={"conn_type": "spark", "host": "local[2]"})
    assert spark_settings("spark_local") == SparkSettings(
        master="local[2]", extra_classpath="", metastore_dir=None, local_ip=None
    )


@pytest.mark.parametrize("cores", [2, "2"], ids=["number", "text"])
def test_spark_settings_of_a_cluster_connection(connections: Define, tmp_path: Path, cores: Any) -> None:
    """The extras of a cluster: jars on the workers, a networked metastore (the Derby folder is then ignored), the
    cores one job may take."""
    from mlops_airflow.hooks import spark_settings

    extra = {
        "deploy-mode": "client",
        "extra-classpath": SPARK_CLASSPATH,
        "executor-extra-classpath": "/opt/spark/extra-jars/*",
        "metastore-uri": "thrift://metastore.unit.test:9083",
        "metastore-dir": str(tmp_path / "hive"),
        "local-ip": "10.1.2.3",
        "cores-max": cores,
        "class-archive-dir": "/var/cache/mlops/class-archives",
    }
    connections(spark_cluster={"conn_type": "spark", "host": "spark://spark.unit.test", "port": 7077, "extra": extra})
    assert spark_settings("spark_cluster") == SparkSettings(
        master="spark://spark.unit.test:7077",
        extra_classpath=SPARK_CLASSPATH,
        metastore_dir=None,
        local_ip="10.1.2.3",
        metastore_uri="thrift://metastore.unit.test:9083",
        executor_classpath="/opt/spark/extra-jars/*",
        cores_max=2,
        class_archive_dir="/var/cache/mlops/class-archives",
    )


def test_spark_settings_master_is_the_one_spark_submit_uses(connections: Define) -> None:
    """The master of the settings equals the one SparkSubmitHook puts on spark-submit's command line."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    from mlops_airflow.hooks import spark_settings

    connections("spark_default", spark_local={"conn_type": "spark", "host": "local[*]"})
    for conn_id in ("spark_default", "spark_local"):
        assert spark_settings(conn_id).master == SparkSubmitHook(conn_id=conn_id)._connection["master"]


# --- MLflow -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        {"conn_type": "http", "host": "mlflow.unit.test", "port": 5000, "schema": "http"},
        {"conn_type": "http", "host": "http://mlflow.unit.test:5000/"},  # the local stack's form: the URI as host
    ],
    ids=["host-port-schema", "uri-as-host"],
)
def test_mlflow_settings_come_from_the_http_connection(connections: Define, document: dict[str, Any]) -> None:
    from mlops_airflow.hooks import MlflowHook

    connections(mlflow_default=document)
    assert MlflowHook().settings == MlflowSettings(MLFLOW_URI)


def test_mlflow_settings_carry_the_connections_login(connections: Define) -> None:
    from mlops_airflow.hooks import MlflowHook

    password = uuid.uuid4().hex
    connections(mlflow_default={"conn_type": "http", "host": MLFLOW_URI, "login": "pipeline", "password": password})
    assert MlflowHook().settings == MlflowSettings(MLFLOW_URI, "pipeline", password)


def test_mlflow_client_is_built_from_the_settings(connections: Define, monkeypatch: pytest.MonkeyPatch) -> None:
    import ml.clients
    from mlops_airflow.hooks import MlflowHook

    connections("mlflow_default")
    built: list[MlflowSettings] = []
    monkeypatch.setattr(ml.clients, "mlflow_client", lambda settings: built.append(settings) or "client")
    hook = MlflowHook()
    assert hook.client == "client" and hook.client == "client"
    assert built == [MlflowSettings(MLFLOW_URI)], "one client per hook"


def test_available_settings_are_checked_against_the_server(connections: Define, mlflow_checks: list[Any]) -> None:
    from mlops_airflow.hooks import MlflowHook

    connections("mlflow_default")
    assert MlflowHook().available_settings() == MlflowSettings(MLFLOW_URI)
    assert mlflow_checks == [MlflowSettings(MLFLOW_URI)]


def test_the_connection_test_reports_why_mlflow_cannot_serve(
    connections: Define, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.preflight
    from mlops_airflow.hooks import MlflowHook

    connections("mlflow_default")
    assert MlflowHook().test_connection() == (True, f"the MLflow server at {MLFLOW_URI} answers")

    def store_down(settings: MlflowSettings) -> None:
        raise ml.preflight.ServiceUnavailable(f"the MLflow server at {settings.tracking_uri} cannot serve requests")

    monkeypatch.setattr(ml.preflight, "require_mlflow", store_down)
    assert MlflowHook().test_connection() == (False, f"the MLflow server at {MLFLOW_URI} cannot serve requests")


class FakeRegistry:
    """search_model_versions of an MlflowClient: records the query, answers with `versions` or raises `error`."""

    def __init__(self, versions: list[Any], error: Exception | None = None) -> None:
        self.versions, self.error = versions, error
        self.queries: list[tuple[str, dict[str, Any]]] = []

    def search_model_versions(self, query: str, **options: Any) -> list[Any]:
        self.queries.append((query, options))
        if self.error is not None:
            raise self.error
        return self.versions


def _hook_with(registry: FakeRegistry) -> Any:
    from mlops_airflow.hooks import MlflowHook

    hook = MlflowHook()
    hook.__dict__["client"] = registry  # the cached_property's slot
    return hook


def test_find_model_version_asks_for_the_newest_version_with_every_tag() -> None:
    from ml.experiments import quoted

    newest = SimpleNamespace(version="7")
    registry = FakeRegistry([newest])
    found = _hook_with(registry).find_model_version("cars-regression", {"snapshot_id": "abc", "code": "x'y"})
    assert found is newest
    [(query, options)] = registry.queries
    odd = quoted("x'y")
    assert query == f"name = 'cars-regression' and tags.`snapshot_id` = 'abc' and tags.`code` = {odd}"
    assert options == {"order_by": ["version_number DESC"], "max_results": 1}


def test_find_model_version_without_a_match_is_none() -> None:
    assert _hook_with(FakeRegistry([])).find_model_version("m", {"snapshot_id": "abc"}) is None


def test_find_model_version_raises_when_mlflow_fails() -> None:
    """An unreachable or failing registry is an error, never "no model" (which would start a training)."""
    from mlflow.exceptions import MlflowException

    for error in (MlflowException("API request to http://mlflow.unit.test:5000 failed"), ConnectionError("refused")):
        with pytest.raises(type(error)):
            _hook_with(FakeRegistry([], error)).find_model_version("m", {"snapshot_id": "abc"})


# --- Kafka ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "servers"),
    [
        ({"conn_type": "kafka", "extra": {"bootstrap.servers": "a:1,b:2"}}, "a:1,b:2"),
        ({"conn_type": "kafka", "host": "kafka.unit.test", "port": 29092}, "kafka.unit.test:29092"),
        ({"conn_type": "kafka", "host": "kafka.unit.test"}, "kafka.unit.test:9092"),
    ],
    ids=["extra", "host-port", "host-default-port"],
)
def test_kafka_settings_come_from_the_connection(connections: Define, document: dict[str, Any], servers: str) -> None:
    from mlops_airflow.hooks import KafkaEventsHook

    connections(kafka_default=document)
    assert KafkaEventsHook().settings == KafkaSettings(servers)


def test_the_kafka_login_comes_from_the_providers_extra_names(
    connections: Define, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The names Airflow's Kafka provider passes to confluent-kafka, so that one connection serves both."""
    import airflow.sdk.log

    from mlops_airflow.hooks import KafkaEventsHook

    password = uuid.uuid4().hex
    masked: list[str] = []
    monkeypatch.setattr(airflow.sdk.log, "mask_secret", masked.append)
    extra = {
        "bootstrap.servers": "kafka.unit.test:9092",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "pipeline",
        "sasl.password": password,
        "group.id": "mlops-airflow-watch",  # the provider's; ours reads without a group
    }
    connections(kafka_default={"conn_type": "kafka", "extra": extra})
    settings = KafkaEventsHook().settings
    assert settings == KafkaSettings("kafka.unit.test:9092", "SASL_PLAINTEXT", "SCRAM-SHA-512", "pipeline", password)
    assert password not in repr(settings) and password in masked, "never in a task log"
    # librdkafka's other spelling, and the mechanism's default
    connections(
        kafka_default={"conn_type": "kafka", "extra": {**extra, "sasl.mechanisms": None, "sasl.mechanism": "PLAIN"}}
    )
    assert KafkaEventsHook().settings.sasl_mechanism == "PLAIN"
    del extra["sasl.mechanisms"]
    connections(kafka_default={"conn_type": "kafka", "extra": extra})
    assert KafkaEventsHook().settings.sasl_mechanism == "SCRAM-SHA-512"


def test_a_kafka_login_without_a_user_names_the_connection(connections: Define) -> None:
    from mlops_airflow.hooks import KafkaEventsHook

    extra = {"bootstrap.servers": "k:9092", "security.protocol": "SASL_SSL", "sasl.password": "p"}
    connections(kafka_half={"conn_type": "kafka", "extra": extra})
    with pytest.raises(ValueError, match=r"connection 'kafka_half': Kafka security protocol SASL_SSL needs a username"):
        _ = KafkaEventsHook("kafka_half").settings


def test_kafka_connection_without_servers_is_an_error(connections: Define) -> None:
    from mlops_airflow.hooks import KafkaEventsHook

    connections(kafka_empty={"conn_type": "kafka"})
    with pytest.raises(ValueError, match=r"'kafka_empty' has no bootstrap\.servers"):
        _ = KafkaEventsHook("kafka_empty").settings


def test_kafka_publish_sends_one_event_with_the_connection_settings(
    connections: Define, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.events.publisher
    from ml.topics import PIPELINE_EVENTS
    from mlops_airflow.hooks import KafkaEventsHook

    connections("kafka_default")
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        ml.events.publisher, "publish_event", lambda *args, **kwargs: sent.append((*args, kwargs)) or {}
    )
    KafkaEventsHook().publish(PIPELINE_EVENTS, {"event": "x"}, "key", "run-1")
    assert sent == [(KafkaSettings(KAFKA_SERVERS), PIPELINE_EVENTS, {"event": "x"}, "key", {"dag_run_id": "run-1"})]


# --- Ray --------------------------------------------------------------------------------------------------------------


def test_ray_settings_without_the_connection_start_a_local_ray(connections: Define) -> None:
    from mlops_airflow.hooks import RayHook

    connections()
    assert RayHook().settings == RaySettings(None)


@pytest.mark.parametrize(
    ("document", "address"),
    [
        ({"conn_type": "generic", "host": "ray.unit.test", "port": 10001}, "ray://ray.unit.test:10001"),
        ({"conn_type": "generic", "host": "ray.unit.test"}, "ray://ray.unit.test:10001"),
        ({"conn_type": "generic", "host": "ray://head:20001"}, "ray://head:20001"),
        ({"conn_type": "generic"}, None),
    ],
    ids=["host-port", "host-default-port", "address-as-host", "no-host"],
)
def test_ray_settings_come_from_the_connection(
    connections: Define, document: dict[str, Any], address: str | None
) -> None:
    from mlops_airflow.hooks import RayHook

    connections(ray_default=document)
    assert RayHook().settings == RaySettings(address)


@pytest.mark.parametrize(
    ("document", "address"),
    [
        (
            {"conn_type": "generic", "host": "ignored", "port": 1, "extra": {"address": "10.0.0.5:6380"}},
            "10.0.0.5:6380",
        ),
        ({"conn_type": "generic", "extra": {"address": "ray://head:10001"}}, "ray://head:10001"),
    ],
    ids=["gcs-address-wins-over-host", "ray-client-address"],
)
def test_the_address_extra_is_used_as_given(connections: Define, document: dict[str, Any], address: str) -> None:
    from mlops_airflow.hooks import RayHook

    connections(ray_default=document)
    assert RayHook().settings == RaySettings(address)


def test_the_ray_connection_password_is_the_auth_token(connections: Define, monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.sdk.log

    from mlops_airflow.hooks import RayHook

    token = uuid.uuid4().hex
    masked: list[str] = []
    monkeypatch.setattr(airflow.sdk.log, "mask_secret", masked.append)
    connections(ray_default={"conn_type": "generic", "password": token, "extra": {"address": "10.0.0.5:6380"}})
    settings = RayHook().settings
    assert settings == RaySettings("10.0.0.5:6380", auth_token=token)
    assert settings.resolved_auth_mode == "token"
    assert token not in repr(settings) and token in masked, "never in a task log"
    connections(ray_default={"conn_type": "generic", "host": "head", "extra": {"auth-mode": "token"}})
    assert RayHook().settings == RaySettings("ray://head:10001", auth_mode="token"), "the token from Ray's own files"


@pytest.mark.parametrize(
    ("extra", "address"),
    [({}, None), ({"address": "10.0.0.5:6380"}, "10.0.0.5:6380")],
    ids=["local-ray", "cluster"],
)
def test_the_tune_state_signing_key_is_the_state_signing_secret_extra(
    connections: Define, monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], address: str | None
) -> None:
    """The key that signs a search's Tune state reaches the task with or without a cluster address (a local Ray's
    search needs it as much), masked in task logs, never in a repr; without it the settings carry none (and the
    search refuses to run)."""
    import airflow.sdk.log

    from mlops_airflow.hooks import RayHook

    signing_key = uuid.uuid4().hex + uuid.uuid4().hex
    masked: list[str] = []
    monkeypatch.setattr(airflow.sdk.log, "mask_secret", masked.append)
    connections(ray_default={"conn_type": "generic", "extra": {**extra, "state-signing-secret": signing_key}})
    settings = RayHook().settings
    assert settings == RaySettings(address, state_signing_key=signing_key)
    assert signing_key in masked and signing_key not in repr(settings)
    connections(ray_default={"conn_type": "generic", "extra": extra})
    assert RayHook().settings.state_signing_key is None


def test_a_connection_object_works_as_well_as_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a secrets backend or the metadata database returns: an airflow.sdk Connection."""
    from airflow.sdk import BaseHook, Connection

    from mlops_airflow.hooks import KafkaEventsHook, spark_settings

    stored = {
        "kafka_default": Connection(conn_id="kafka_default", conn_type="kafka", extra='{"bootstrap.servers": "k:1"}'),
        "spark_default": Connection(
            conn_id="spark_default", conn_type="spark", host="yarn", extra='{"extra-classpath": "/j/*"}'
        ),
    }
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: stored[conn_id]))
    assert KafkaEventsHook().settings == KafkaSettings("k:1")
    assert spark_settings("spark_default") == SparkSettings("yarn", "/j/*", None, None)
