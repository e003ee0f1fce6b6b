"""stack/services.py: every service of the local stack listens on 127.0.0.1 only and gets no secret on its command
line; what each service's preparation writes (Kafka's storage with its storage tool faked) and the environment
Airflow runs in. The Service machinery itself is stack/process.py's (test_process.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

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


def test_kafka_listens_and_advertises_on_loopback_only() -> None:
    from stack.services import KAFKA_PROPERTIES

    properties = dict(
        line.split("=", 1) for line in KAFKA_PROPERTIES.splitlines() if "=" in line and not line.startswith("#")
    )
    for key in ("listeners", "advertised.listeners", "controller.quorum.bootstrap.servers"):
        addresses = [entry.split("://")[-1] for entry in properties[key].split(",")]
        assert addresses and all(_loopback(address) for address in addresses), (key, properties[key])
    assert properties["listener.security.protocol.map"].count("PLAINTEXT") >= 2  # plain text: loopback is the fence
    assert properties["auto.create.topics.enable"] == "false"


def test_mlflow_server_binds_loopback(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import _mlflow_command

    command = _mlflow_command(*fake_stack)
    assert _flag_values(command, "--host") == ["127.0.0.1"], command
    assert "s3://mlflow/artifacts" in command, "artifacts go to the stack's S3 server, through MLflow"


# --- secrets ----------------------------------------------------------------------------------------------------------


def test_no_secret_on_a_service_command_line(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import ALL_SERVICES

    paths, env = fake_stack
    for service in ALL_SERVICES:
        command = " ".join(service.command(paths, env))
        assert env["AWS_SECRET_ACCESS_KEY"] not in command, f"{service.name} gets the S3 secret in argv"


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


def test_kafka_cluster_ids_never_start_with_a_dash() -> None:
    # kafka-storage's argument parser takes "-t -abc..." for an option: a fresh-clone run failed on one in 64 ids.
    from stack.services import _kafka_random_uuid

    ids = [_kafka_random_uuid() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


# --- Kafka's storage and MLflow's preparation ---------------------------------------------------------------------


class _FakeRun:
    """subprocess.run for Kafka's storage tool: records each command and its environment, answers `returncode`."""

    def __init__(self, returncode: int = 0) -> None:
        self.returncode = returncode
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(command), kwargs.get("env") or {}))
        return subprocess.CompletedProcess(command, self.returncode, "formatted? no", "the tool's complaint")


def test_kafka_storage_is_formatted_once_with_the_broker_properties(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stack.services import KAFKA_LOG4J, KAFKA_PROPERTIES, prepare_kafka_storage

    run = _FakeRun()
    monkeypatch.setattr(subprocess, "run", run)
    kafka_dir = tmp_path / "kafka"
    prepare_kafka_storage(kafka_dir, KAFKA_PROPERTIES, "/jars/kafka.jar", {"ONLY": "this"})
    properties = (kafka_dir / "server.properties").read_text()
    assert f"log.dirs={kafka_dir / 'logs'}\n" in properties and "{log_dirs}" not in properties
    assert (kafka_dir / "logs").is_dir()
    assert (kafka_dir / "log4j2.yaml").read_text() == KAFKA_LOG4J
    [(command, env)] = run.calls
    assert command[command.index("-cp") + 1] == "/jars/kafka.jar"
    assert command[command.index("-cp") + 2 :][:3] == ["kafka.tools.StorageTool", "format", "--standalone"]
    assert command[command.index("-c") + 1] == str(kafka_dir / "server.properties")
    cluster_id = command[command.index("-t") + 1]
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
    assert env == {"ONLY": "this"}

    (kafka_dir / "logs" / "meta.properties").write_text("cluster.id=formatted\n")
    prepare_kafka_storage(kafka_dir, KAFKA_PROPERTIES.replace("num.partitions=3", "num.partitions=5"), "cp", {})
    assert len(run.calls) == 1, "formatted storage is kept (and its messages with it)"
    assert "num.partitions=5" in (kafka_dir / "server.properties").read_text(), "the properties are rewritten"


def test_a_failed_kafka_format_says_what_the_tool_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.services import KAFKA_PROPERTIES, prepare_kafka_storage

    monkeypatch.setattr(subprocess, "run", _FakeRun(returncode=1))
    with pytest.raises(StackError, match=r"kafka: formatting .*logs failed:(.|\n)*the tool's complaint"):
        prepare_kafka_storage(tmp_path / "kafka", KAFKA_PROPERTIES, "cp", {})


def test_kafka_without_its_jars_says_how_to_get_them(
    fake_stack: tuple[StackPaths, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stack.services import KAFKA

    paths, env = fake_stack
    paths.kafka_classpath_file.unlink()
    monkeypatch.setattr(subprocess, "run", _FakeRun())
    with pytest.raises(StackError, match=r"kafka\.classpath is missing; run `make tools`"):
        KAFKA.prepare(paths, env)
    with pytest.raises(StackError, match="make tools"):
        KAFKA.command(paths, env)


def test_kafka_runs_its_generated_properties_from_the_stack_folder(
    fake_stack: tuple[StackPaths, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stack.services import KAFKA

    paths, env = fake_stack
    run = _FakeRun()
    monkeypatch.setattr(subprocess, "run", run)
    KAFKA.prepare(paths, env)
    command = KAFKA.command(paths, env)
    assert command[-2:] == ["kafka.Kafka", str(paths.data / "kafka" / "server.properties")]
    assert command[command.index("-cp") + 1] == "/nonexistent/kafka.jar"
    assert f"-Dlog4j2.configurationFile={paths.data / 'kafka' / 'log4j2.yaml'}" in command
    assert (paths.data / "kafka" / "server.properties").exists() and len(run.calls) == 1


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
    from ml.settings import RaySettings, S3Settings, Settings
    from stack.config import stack_environment
    from stack.services import AIRFLOW, AIRFLOW_UNSET

    every = Settings(s3=S3Settings(access_key_id="a", secret_access_key="b", session_token="c"), ray=RaySettings("r"))
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
