"""stack/airflow_home.py: the connections `make stack-up` gives Airflow (checked end to end against the hooks that
read them), the Airflow home's preparation with the `airflow` CLI replaced, and the admin password."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from ml.settings import Settings
from ml.topics import OPENLINEAGE
from stack.airflow_home import (
    SIMPLE_AUTH_FILE,
    connections_from_environment,
    prepare_airflow_home,
    write_admin_password,
)
from stack.config import StackPaths

S3_KEY = "unit-stack-s3-key-0123456789"


def _env(stack: StackPaths, **changes: str) -> dict[str, str]:
    return {
        "MLOPS_STACK_DIR": str(stack.root),
        "AWS_ACCESS_KEY_ID": "unit-stack-id",
        "AWS_SECRET_ACCESS_KEY": S3_KEY,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SPARK_MASTER": "local[*]",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        **changes,
    }


LINEAGE_JARS = "/m2/openlineage-spark_2.13-1.53.0.jar:/m2/kafka-clients-4.1.1.jar"


@pytest.fixture
def s3a_jars(stack_dir: StackPaths) -> str:
    """The classpath files `make tools` writes (the s3a connector's jars, and the OpenLineage listener's)."""
    classpath = "/m2/hadoop-aws-3.5.0.jar:/m2/bundle-2.29.jar"
    stack_dir.jars.mkdir(parents=True)
    stack_dir.spark_s3a_classpath_file.write_text(classpath + "\n")
    stack_dir.spark_lineage_classpath_file.write_text(LINEAGE_JARS + "\n")
    return classpath


def test_the_connections_carry_the_endpoints_keys_and_spark_extras(stack_dir: StackPaths, s3a_jars: str) -> None:
    connections = connections_from_environment(_env(stack_dir))
    assert set(connections) == {
        "aws_default",
        "aws_tune",
        "spark_default",
        "kafka_default",
        "kafka_s3_events",
        "kafka_drift_events",
        "openlineage_default",
        "mlflow_default",
    }
    for conn_id in ("aws_default", "aws_tune"):  # another S3 than the stack's: the environment's keys for both
        aws = connections[conn_id]
        assert (aws["conn_type"], aws["login"], aws["password"]) == ("aws", "unit-stack-id", S3_KEY)
        assert json.loads(aws["extra"]) == {"endpoint_url": "http://127.0.0.1:9000", "region_name": "us-east-1"}
    spark = connections["spark_default"]
    assert (spark["conn_type"], spark["host"], spark["port"]) == ("spark", "local[*]", None)
    assert json.loads(spark["extra"]) == {
        "spark-binary": "spark-submit",
        "deploy-mode": "client",
        "extra-classpath": s3a_jars,
        "metastore-dir": str(stack_dir.data / "hive"),
        "metastore-uri": None,
        "cores-max": None,
        "local-ip": "127.0.0.1",
        "lineage-classpath": LINEAGE_JARS,
        "class-archive-dir": str(stack_dir.data / "spark" / "class-archives"),
    }
    assert json.loads(connections["kafka_default"]["extra"]) == {"bootstrap.servers": "127.0.0.1:9092"}
    # The asset watcher's: no auto-commit (the shared-stream trigger refuses to start otherwise), a group of its own.
    assert json.loads(connections["kafka_s3_events"]["extra"]) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "group.id": "mlops-airflow-raw-uploads",
        "enable.auto.commit": "false",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": "10000",
    }
    # The drift watcher's: the same, a group of its own.
    drift_watcher = json.loads(connections["kafka_drift_events"]["extra"])
    assert drift_watcher == {
        **json.loads(connections["kafka_s3_events"]["extra"]),
        "group.id": "mlops-airflow-drift-events",
    }
    assert connections["mlflow_default"] == {"conn_type": "http", "host": "http://127.0.0.1:5000"}


def test_the_kafka_and_mlflow_connections_log_in_as_the_stacks_pipeline_user(stack_dir: StackPaths) -> None:
    """What `make stack-up` imports: the environment of `python -m stack` (stack.config) holds the pipeline's login
    to the local broker and MLflow server; kafka_default carries it in the names of Airflow's Kafka provider,
    mlflow_default as its login and password."""
    from stack.config import stack_environment, stack_secrets

    env = stack_environment({"AWS_ACCESS_KEY_ID": "unit-stack-id", "AWS_SECRET_ACCESS_KEY": S3_KEY})
    extra = json.loads(connections_from_environment(env)["kafka_default"]["extra"])
    assert extra == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "pipeline",
        "sasl.password": stack_secrets(stack_dir)["kafka_pipeline_password"],
    }
    # The OpenLineage transport logs in as the same user, to the lineage topic.
    lineage = json.loads(connections_from_environment(env)["openlineage_default"]["extra"])
    assert lineage["transport"]["config"] == {**extra, "client.id": "airflow-openlineage", "acks": "all"}
    assert (lineage["transport"]["type"], lineage["transport"]["topic"]) == ("kafka", OPENLINEAGE.name)
    assert connections_from_environment(env)["mlflow_default"] == {
        "conn_type": "http",
        "host": "http://127.0.0.1:5000",
        "login": "pipeline",
        "password": stack_secrets(stack_dir)["mlflow_pipeline_password"],
    }


def test_on_the_stacks_s3_server_the_tasks_sign_as_its_users_never_as_root(
    stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `make stack-up` imports when the environment holds the root key of the stack's own S3 server:
    aws_default signs as the pipeline user, aws_tune (the tune task's) as the tune user; the root key is in neither."""
    import stack.airflow_home
    from mlops_airflow.hooks import s3_settings
    from stack.config import local_credentials, s3_user_keys

    root = local_credentials(stack_dir)
    env = {
        **_env(stack_dir, AWS_ACCESS_KEY_ID=root["access_key"], AWS_SECRET_ACCESS_KEY=root["secret_key"]),
        "AIRFLOW_HOME": str(stack_dir.airflow_home),
    }
    imported: dict[str, Any] = {}

    def fake_airflow(args: list[str], given_env: dict[str, str]) -> None:
        if args[:2] == ["connections", "import"]:
            imported.update(json.loads(Path(args[-1]).read_text()))

    monkeypatch.setattr(stack.airflow_home, "_airflow", fake_airflow)
    prepare_airflow_home(stack_dir, env)
    assert root["secret_key"] not in json.dumps(imported) and root["access_key"] not in json.dumps(imported)
    for conn_id, document in imported.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(document))
    for conn_id, user in (("aws_default", "pipeline"), ("aws_tune", "tune")):
        keys = s3_user_keys(stack_dir, user)
        settings = s3_settings(conn_id)
        assert (settings.access_key_id, settings.secret_access_key) == (keys["access_key"], keys["secret_key"])
        assert settings.endpoint_url == "http://127.0.0.1:9000"


def test_a_spark_standalone_master_is_split_into_host_and_port(stack_dir: StackPaths) -> None:
    spark = connections_from_environment(_env(stack_dir, SPARK_MASTER="spark://spark-master:7077"))["spark_default"]
    assert (spark["host"], spark["port"]) == ("spark://spark-master", 7077)


@pytest.mark.parametrize("master", ["local[*]", "spark://spark-master:7077"])
def test_the_hooks_read_back_the_settings_the_environment_describes(
    stack_dir: StackPaths, s3a_jars: str, monkeypatch: pytest.MonkeyPatch, master: str
) -> None:
    """What Airflow tasks get through the connections equals what `python -m ml` gets from the same environment."""
    from mlops_airflow.hooks import KafkaEventsHook, MlflowHook, s3_settings, spark_settings

    password = uuid.uuid4().hex
    login = {
        "MLOPS_KAFKA_USERNAME": "pipeline",
        "MLOPS_KAFKA_PASSWORD": password,
        "MLFLOW_TRACKING_USERNAME": "pipeline",
        "MLFLOW_TRACKING_PASSWORD": password,
    }
    env = _env(stack_dir, SPARK_MASTER=master, **login)
    for conn_id, document in connections_from_environment(env).items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(document))
    expected = Settings.from_env(env)
    assert s3_settings("aws_default") == expected.s3
    assert spark_settings("spark_default") == expected.spark
    assert KafkaEventsHook().settings == expected.kafka and expected.kafka.password == password
    assert MlflowHook().settings == expected.mlflow and expected.mlflow.password == password


def test_preparing_the_home_imports_the_connections_from_a_private_file_it_then_deletes(
    stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stack.airflow_home

    env = {**_env(stack_dir), "AIRFLOW_HOME": str(stack_dir.airflow_home)}
    calls: list[list[str]] = []
    imported: dict[str, Any] = {}

    def fake_airflow(args: list[str], given_env: dict[str, str]) -> None:
        assert given_env is env
        calls.append(args)
        if args[:2] == ["connections", "import"]:
            path = Path(args[-1])
            imported["mode"] = stat.S_IMODE(path.stat().st_mode)
            imported["connections"] = json.loads(path.read_text())

    monkeypatch.setattr(stack.airflow_home, "_airflow", fake_airflow)
    assert "migrated" in prepare_airflow_home(stack_dir, env)
    assert calls[0] == ["db", "migrate"]
    assert calls[1][:3] == ["connections", "import", "--overwrite"]
    assert calls[2][:4] == ["pools", "set", "spark_metastore", "1"], "one Spark job at a time holds the metastore"
    assert imported["mode"] == 0o600 and imported["connections"] == connections_from_environment(env)
    assert not Path(calls[1][-1]).exists(), "the file with the S3 secret is deleted"
    assert (stack_dir.airflow_home / SIMPLE_AUTH_FILE).exists()


def test_the_connections_file_is_deleted_when_the_import_fails(
    stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stack.airflow_home
    from stack.services import StackError

    env = {**_env(stack_dir), "AIRFLOW_HOME": str(stack_dir.airflow_home)}
    files: list[Path] = []

    def failing_import(args: list[str], given_env: dict[str, str]) -> None:
        if args[:2] == ["connections", "import"]:
            files.append(Path(args[-1]))
            raise StackError("`airflow connections import` failed")

    monkeypatch.setattr(stack.airflow_home, "_airflow", failing_import)
    with pytest.raises(StackError):
        prepare_airflow_home(stack_dir, env)
    assert files and not files[0].exists()


def test_the_airflow_admin_password_is_generated_private_and_kept(tmp_path: Path) -> None:
    # Written before Airflow starts, so that Airflow never generates one itself and prints it to its log.
    path = write_admin_password(tmp_path)
    password = json.loads(path.read_text())["admin"]
    assert path.name == SIMPLE_AUTH_FILE and len(password) >= 16
    assert path.stat().st_mode & 0o077 == 0, "the password file is readable by others"
    assert json.loads(write_admin_password(tmp_path).read_text())["admin"] == password, "a second stack-up changed it"
