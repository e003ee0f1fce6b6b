"""stack/services.py: every service of the local stack listens on 127.0.0.1 only and gets no secret on its command
line; what each service's preparation writes and the environment Airflow runs in. The Service machinery itself is
stack/process.py's (test_process.py); the Kafka broker's, stack/kafka_broker.py's (test_kafka_broker.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stack.config import StackPaths
from stack.services import StackError

S3_KEY = "test-secret-value-0123456789"


def _loopback(address: str) -> bool:
    """host:port, scheme://host:port/... or host: whether the host is 127.0.0.1 (or localhost)."""
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", address).split("/")[0]
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return host in ("127.0.0.1", "localhost")


@pytest.fixture
def fake_stack(tmp_path: Path) -> tuple[StackPaths, dict[str, str]]:
    paths = StackPaths(tmp_path)
    paths.jars.mkdir(parents=True)
    paths.kafka_classpath_file.write_text("/nonexistent/kafka.jar")
    env = {
        "AWS_ACCESS_KEY_ID": "test-access",
        "AWS_SECRET_ACCESS_KEY": S3_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLOPS_MLFLOW_BUCKET": "mlflow",
    }
    return paths, env


def _flag_values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, part in enumerate(command[:-1]) if part == flag]


# --- 127.0.0.1 only ---------------------------------------------------------------------------------------------------


def test_s3_gateway_listens_on_loopback_only(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import S3, _s3_command

    command = _s3_command(*fake_stack)
    listeners = _flag_values(command, "--port") + _flag_values(command, "--webui")
    assert listeners and all(_loopback(value) for value in listeners), listeners
    assert all(_loopback(value) for value in _flag_values(command, "--webui-gateways"))
    assert not {"--admin-port", "--ap", "--website"} & set(command), "an extra listener without a loopback check"
    assert _loopback(S3.url.split()[0])


def test_the_s3_gateway_notifies_created_objects_to_the_brokers_loopback_listener(
    fake_stack: tuple[StackPaths, dict[str, str]],
) -> None:
    from ml.topics import S3_EVENTS
    from stack.services import S3, _s3_command

    paths, env = fake_stack
    command = _s3_command(paths, env)
    assert _flag_values(command, "--event-kafka-url") == ["127.0.0.1:9094"]
    assert _flag_values(command, "--event-kafka-topic") == [S3_EVENTS.name]
    [filter_file] = _flag_values(command, "--event-filter")
    assert command.index("--event-filter") < command.index("posix"), "a gateway option, before the backend"
    paths.bin.mkdir()
    paths.versitygw.write_text("")
    S3.prepare(paths, env)
    assert json.loads(Path(filter_file).read_text()) == {"s3:ObjectCreated:*": True}


def test_mlflow_server_binds_loopback(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import _mlflow_command

    command = _mlflow_command(*fake_stack)
    assert _flag_values(command, "--host") == ["127.0.0.1"], command
    assert "s3://mlflow/artifacts" in command, "artifacts go to the stack's S3 server, through MLflow"


# --- secrets ----------------------------------------------------------------------------------------------------------


def test_no_secret_on_a_service_command_line(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.config import stack_secrets
    from stack.services import ALL_SERVICES

    paths, env = fake_stack
    kafka_passwords = stack_secrets(paths).values()
    for service in ALL_SERVICES:
        command = " ".join(service.command(paths, env))
        assert env["AWS_SECRET_ACCESS_KEY"] not in command, f"{service.name} gets the S3 secret in argv"
        assert not [password for password in kafka_passwords if password in command], service.name


def test_the_s3_gateway_gets_its_keys_through_its_environment(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import _s3_prepare

    paths, env = fake_stack
    paths.bin.mkdir()
    paths.versitygw.write_text("")
    _s3_prepare(paths, env)
    assert (env["ROOT_ACCESS_KEY_ID"], env["ROOT_SECRET_ACCESS_KEY"]) == ("test-access", S3_KEY)


def test_the_s3_gateway_without_its_binary_says_how_to_get_it(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import _s3_prepare

    with pytest.raises(StackError, match="make tools"):
        _s3_prepare(*fake_stack)


def test_the_s3_gateway_keeps_its_users_in_a_private_folder_of_the_stack(
    fake_stack: tuple[StackPaths, dict[str, str]],
) -> None:
    from stack.services import _s3_command, _s3_prepare

    paths, env = fake_stack
    paths.bin.mkdir()
    paths.versitygw.write_text("")
    _s3_prepare(paths, env)
    assert _flag_values(_s3_command(paths, env), "--iam-dir") == [str(paths.data / "s3" / "iam")]
    assert (paths.data / "s3" / "iam").stat().st_mode & 0o077 == 0, "the users' secrets are readable by others"


# --- MLflow's preparation ------------------------------------------------------------------------------------------


def test_mlflow_stores_artifacts_as_the_mlflow_user_never_with_the_root_key(stack_dir: StackPaths) -> None:
    from stack.config import local_credentials, s3_user_keys
    from stack.services import MLFLOW

    root = local_credentials(stack_dir)
    env = {"AWS_ACCESS_KEY_ID": root["access_key"], "AWS_SECRET_ACCESS_KEY": root["secret_key"]}
    MLFLOW.prepare(stack_dir, env)
    mlflow = s3_user_keys(stack_dir, "mlflow")
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (mlflow["access_key"], mlflow["secret_key"])
    assert root["secret_key"] not in env.values()


def test_mlflow_on_postgres_stores_artifacts_as_the_mlflow_user_too(
    stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stack.cluster.mlflow
    from stack.cluster.mlflow import MLFLOW_CLUSTER
    from stack.config import local_credentials, s3_user_keys

    monkeypatch.setattr(stack.cluster.mlflow, "postgres_url", lambda paths, database: "postgresql://unit")
    root = local_credentials(stack_dir)
    env = {"AWS_ACCESS_KEY_ID": root["access_key"], "AWS_SECRET_ACCESS_KEY": root["secret_key"]}
    MLFLOW_CLUSTER.prepare(stack_dir, env)
    assert env["AWS_ACCESS_KEY_ID"] == s3_user_keys(stack_dir, "mlflow")["access_key"]


def test_mlflow_is_prepared_without_its_job_runner(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import MLFLOW

    paths, env = fake_stack
    MLFLOW.prepare(paths, env)
    assert (paths.data / "mlflow").is_dir()
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    chosen = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}
    MLFLOW.prepare(paths, chosen)
    assert chosen["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true", "what is set wins"


# --- Airflow's environment --------------------------------------------------------------------------------------------


def test_airflow_runs_without_the_endpoint_and_key_variables(stack_dir: StackPaths) -> None:
    """Airflow's tasks take endpoints and keys from connections only; Airflow gets none of the variables that
    ml.settings reads, and the lake bucket as the Airflow variable the DAG reads."""
    from ml.settings import KafkaSettings, RaySettings, S3Settings, Settings
    from stack.config import stack_environment
    from stack.services import AIRFLOW, AIRFLOW_UNSET

    every = Settings(
        s3=S3Settings(access_key_id="a", secret_access_key="b", session_token="c"),
        kafka=KafkaSettings("kafka.example:9092", username="u", password=S3_KEY + "-kafka"),
        ray=RaySettings("r"),
    )
    env = stack_environment({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": S3_KEY, **every.to_env()})
    AIRFLOW.prepare(stack_dir, env)
    assert set(every.to_env()) <= set(AIRFLOW_UNSET)
    assert not set(AIRFLOW_UNSET) & set(env), set(AIRFLOW_UNSET) & set(env)
    assert S3_KEY not in env.values()
    assert env["AIRFLOW_VAR_MLOPS_LAKE_BUCKET"] == "lake"
    assert env["AIRFLOW_HOME"] == str(stack_dir.airflow_home) and env["PATH"]


def test_airflow_gets_the_lake_bucket_the_stack_was_told(stack_dir: StackPaths) -> None:
    from stack.config import stack_environment
    from stack.services import AIRFLOW

    env = stack_environment({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": S3_KEY, "MLOPS_LAKE_BUCKET": "lake2"})
    AIRFLOW.prepare(stack_dir, env)
    assert env["AIRFLOW_VAR_MLOPS_LAKE_BUCKET"] == "lake2"


@pytest.mark.parametrize("profile", ["local", "cluster"])
def test_the_drift_monitor_runs_as_its_own_users_in_both_profiles(stack_dir: StackPaths, profile: str) -> None:
    """The monitor's process gets the monitor's Kafka and MLflow logins and S3 key (stack.config.users), none of the
    pipeline's credentials and not the S3 root key, whichever profile started it."""
    from ml.settings import Settings
    from stack.config import local_credentials, s3_user_keys, stack_environment, stack_secrets
    from stack.profiles import profile_named

    [monitor] = [service for service in profile_named(profile).services if service.name == "drift-monitor"]
    env = stack_environment({"PATH": "/usr/bin"}, profile=profile)
    monitor.prepare(stack_dir, env)
    settings, secrets = Settings.from_env(env), stack_secrets(stack_dir)
    assert (settings.kafka.username, settings.kafka.password) == ("monitor", secrets["kafka_monitor_password"])
    assert (settings.mlflow.username, settings.mlflow.password) == ("monitor", secrets["mlflow_monitor_password"])
    keys = s3_user_keys(stack_dir, "monitor")
    assert (settings.s3.access_key_id, settings.s3.secret_access_key) == (keys["access_key"], keys["secret_key"])
    pipeline = [
        secrets["kafka_pipeline_password"],
        secrets["mlflow_pipeline_password"],
        secrets["s3_pipeline_secret_key"],
        local_credentials(stack_dir)["secret_key"],
    ]
    assert not [value for value in pipeline if value in env.values()], "a pipeline or root credential leaked in"
    assert env["SPARK_MASTER"] == "local[2]"
