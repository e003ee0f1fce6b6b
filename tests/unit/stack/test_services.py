"""stack/services.py: every service of the local stack listens on 127.0.0.1 only and gets no secret on its command
line; a Service's life cycle (start, health, pid file, stop, a port someone else holds) on a small HTTP server
started for the test, never on the shared stack."""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.config import StackPaths
from stack.services import Service, StackError, http_ok, port_in_use
from tests.support.probes import free_port

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


# --- a Service's life cycle -------------------------------------------------------------------------------------------


def _http_service(port: int, command: list[str] | None = None) -> Service:
    return Service(
        name="unit-http",
        port=port,
        command=lambda paths, env: command or [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        is_healthy=lambda env: http_ok(f"http://127.0.0.1:{port}/"),
        start_timeout_s=60,
        url=f"http://127.0.0.1:{port}",
    )


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[StackPaths]:
    paths = StackPaths(tmp_path)
    paths.data.mkdir(parents=True)
    yield paths


def test_a_service_starts_once_is_found_again_and_stops(paths: StackPaths) -> None:
    port = free_port()
    service = _http_service(port)
    try:
        assert service.start(paths, {}) == "started"
        pid = service.running_pid(paths)
        assert pid is not None and service.pid_file(paths).read_text() == str(pid)
        assert service.start(paths, {}) == "already running"
        assert service.running_pid(paths) == pid
    finally:
        assert service.stop(paths) == "stopped"
    assert service.running_pid(paths) is None and not service.pid_file(paths).exists()
    assert not port_in_use(port)
    assert service.stop(paths) == "not running"
    assert service.log_file(paths).exists(), "its output went to its log file"


def test_a_service_that_exits_during_start_up_names_its_log(paths: StackPaths) -> None:
    service = _http_service(free_port(), [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(StackError, match=r"exited during start-up; its log is .*unit-http\.log"):
        service.start(paths, {})


def test_a_port_held_by_another_process_is_reported_not_taken(paths: StackPaths) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        with pytest.raises(StackError, match=f"port 127.0.0.1:{port} is taken by a process this stack did not start"):
            _http_service(port).start(paths, {})
    assert not _http_service(port).pid_file(paths).exists()


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
