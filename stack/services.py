"""The local stack's long-running services, each a plain process bound to 127.0.0.1.

A service is started in its own process group (so that stopping it stops its children too), its pid goes to
`.stack/run/NAME.pid`, its output to `.stack/logs/NAME.log`, and `up` waits until it answers a real request.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ml.settings import LakeSettings
from stack.config import REPO_ROOT, StackPaths


class StackError(RuntimeError):
    """A service could not be prepared, started or reached; the message says which and where to look."""


@dataclass
class Service:
    """One process of the local stack."""

    name: str
    port: int
    command: Callable[[StackPaths, dict[str, str]], list[str]]
    is_healthy: Callable[[dict[str, str]], bool]
    prepare: Callable[[StackPaths, dict[str, str]], None] = lambda paths, env: None
    start_timeout_s: float = 90.0
    extra_ports: tuple[int, ...] = field(default_factory=tuple)
    url: str = ""

    def pid_file(self, paths: StackPaths) -> Path:
        return paths.run / f"{self.name}.pid"

    def log_file(self, paths: StackPaths) -> Path:
        return paths.logs / f"{self.name}.log"

    def running_pid(self, paths: StackPaths) -> int | None:
        """The pid this stack started for the service, if that process is still alive."""
        pid_file = self.pid_file(paths)
        if not pid_file.exists():
            return None
        pid = int(pid_file.read_text().strip() or 0)
        if pid <= 0 or not _process_alive(pid):
            return None
        return pid

    def start(self, paths: StackPaths, env: dict[str, str]) -> str:
        """Start the service unless it already runs; wait until it is healthy. Returns what happened."""
        if self.running_pid(paths) is not None and self.is_healthy(env):
            return "already running"
        if self.running_pid(paths) is None:
            for port in (self.port, *self.extra_ports):
                if port_in_use(port):
                    raise StackError(
                        f"{self.name}: port 127.0.0.1:{port} is taken by a process this stack did not start "
                        f"(find it with `ss -ltnp 'sport = :{port}'`), so {self.name} cannot start"
                    )
            paths.logs.mkdir(parents=True, exist_ok=True)
            paths.run.mkdir(parents=True, exist_ok=True)
            env = dict(env)  # what prepare() adds is for this service's process only
            self.prepare(paths, env)
            log = self.log_file(paths).open("ab")
            process = subprocess.Popen(
                self.command(paths, env),
                env=env,
                cwd=paths.data,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.pid_file(paths).write_text(str(process.pid))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.running_pid(paths) is None:
                raise StackError(f"{self.name} exited during start-up; its log is {self.log_file(paths)}")
            if self.is_healthy(env):
                return "started"
            time.sleep(0.5)
        raise StackError(
            f"{self.name} did not become healthy within {self.start_timeout_s:.0f} s on port {self.port}; "
            f"its log is {self.log_file(paths)}"
        )

    def stop(self, paths: StackPaths, timeout_s: float = 30.0) -> str:
        """Stop the process group this stack started for the service and wait until its ports are free."""
        pid = self.running_pid(paths)
        self.pid_file(paths).unlink(missing_ok=True)
        if pid is None:
            return "not running"
        _signal_group(pid, signal.SIGTERM)
        if not wait_until(lambda: not _group_alive(pid), timeout_s):
            _signal_group(pid, signal.SIGKILL)
            wait_until(lambda: not _group_alive(pid), 10.0)
        for port in (self.port, *self.extra_ports):
            wait_until(lambda p=port: not port_in_use(p), 10.0)  # type: ignore[misc]
        return "stopped"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. The leader is reaped first when it is this process's own child
    (a test or the demo started the service here): an exited but unreaped leader would keep the group alive."""
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child, or reaped already
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll `predicate` until it is true or the time is up; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def http_ok(url: str, accept_statuses: tuple[int, ...] = (200,)) -> bool:
    """Whether an HTTP GET of url answers with one of the accepted statuses."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local health URLs only
            return int(response.status) in accept_statuses
    except urllib.error.HTTPError as error:
        return error.code in accept_statuses
    except (urllib.error.URLError, OSError):
        return False


# --- S3: Versity S3 Gateway over a posix folder ---------------------------------------------------------------------


def _s3_command(paths: StackPaths, env: dict[str, str]) -> list[str]:
    root = paths.data / "s3"
    return [
        str(paths.versitygw),
        "--port",
        "127.0.0.1:9000",
        "--webui",
        "127.0.0.1:9001",
        "--webui-no-tls",
        "--webui-gateways",
        "http://127.0.0.1:9000",
        "--region",
        env["AWS_DEFAULT_REGION"],
        "--quiet",
        "posix",
        "--versioning-dir",
        str(root / "versions"),
        "--sidecar",
        str(root / "meta"),
        str(root / "buckets"),
    ]


def _s3_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    # The root keys go through the environment: a command line is readable by every local user.
    env["ROOT_ACCESS_KEY_ID"] = env["AWS_ACCESS_KEY_ID"]
    env["ROOT_SECRET_ACCESS_KEY"] = env["AWS_SECRET_ACCESS_KEY"]
    if not paths.versitygw.exists():
        raise StackError(f"s3: {paths.versitygw} is missing; run `make tools` (needs Go) first")
    for sub in ("buckets", "versions", "meta"):
        (paths.data / "s3" / sub).mkdir(parents=True, exist_ok=True)


# 403 without credentials is the gateway answering: good enough for liveness.
S3 = Service(
    name="s3",
    port=9000,
    extra_ports=(9001,),
    command=_s3_command,
    prepare=_s3_prepare,
    is_healthy=lambda env: http_ok("http://127.0.0.1:9000/", (200, 403)),
    start_timeout_s=30,
    url="http://127.0.0.1:9000 (web console http://127.0.0.1:9001)",
)


# --- Kafka: an Apache Kafka 4 broker in KRaft combined mode ---------------------------------------------------------

KAFKA_PROPERTIES = """\
# Generated by `python -m stack`: a single-node KRaft broker+controller for local use, bound to 127.0.0.1.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dirs}
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
"""


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    return str(Path(java_home) / "bin" / "java") if java_home else "java"


def _kafka_classpath(paths: StackPaths) -> str:
    if not paths.kafka_classpath_file.exists():
        raise StackError(f"kafka: {paths.kafka_classpath_file} is missing; run `make tools` (needs Maven) first")
    return paths.kafka_classpath_file.read_text().strip()


def _kafka_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    kafka_dir = paths.data / "kafka"
    log_dirs = kafka_dir / "logs"
    log_dirs.mkdir(parents=True, exist_ok=True)
    properties = kafka_dir / "server.properties"
    properties.write_text(KAFKA_PROPERTIES.format(log_dirs=log_dirs))
    log4j = kafka_dir / "log4j2.yaml"
    log4j.write_text(KAFKA_LOG4J)
    if (log_dirs / "meta.properties").exists():
        return
    # Format the storage once, with a fresh cluster id; later starts reuse it.
    cluster_id = _kafka_random_uuid()
    result = subprocess.run(
        [
            _java(),
            "-cp",
            _kafka_classpath(paths),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            cluster_id,
            "-c",
            str(properties),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"kafka: formatting {log_dirs} failed:\n{result.stdout}\n{result.stderr}")


def _kafka_random_uuid() -> str:
    # Kafka cluster ids are base64url-encoded 16-byte UUIDs without padding. Like Kafka's Uuid.randomUuid, never one
    # that starts with "-": the storage tool's argument parser takes it for an option (1 format in 64 failed).
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


KAFKA_LOG4J = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: INFO
"""


def _kafka_command(paths: StackPaths, env: dict[str, str]) -> list[str]:
    kafka_dir = paths.data / "kafka"
    return [
        _java(),
        "-Xms256m",
        "-Xmx512m",
        "-XX:+UseG1GC",
        f"-Dlog4j2.configurationFile={kafka_dir / 'log4j2.yaml'}",
        f"-Dkafka.logs.dir={paths.logs}",
        "-cp",
        _kafka_classpath(paths),
        "kafka.Kafka",
        str(kafka_dir / "server.properties"),
    ]


def kafka_answers(bootstrap: str) -> bool:
    """Whether the broker at `bootstrap` (host:port) answers a metadata request (within ~3 s)."""
    host, _, port = bootstrap.rpartition(":")
    if not port_in_use(int(port), host):
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        admin.close()


KAFKA = Service(
    name="kafka",
    port=9092,
    extra_ports=(9093,),
    command=_kafka_command,
    prepare=_kafka_prepare,
    is_healthy=lambda env: kafka_answers("127.0.0.1:9092"),
    start_timeout_s=90,
    url="127.0.0.1:9092 (PLAINTEXT)",
)


# --- MLflow: tracking server + model registry, SQLite backend, artifacts proxied to the S3 server -------------------


def _mlflow_command(paths: StackPaths, env: dict[str, str]) -> list[str]:
    db = paths.data / "mlflow" / "mlflow.db"
    return [
        str(REPO_ROOT / ".venv" / "bin" / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        "5000",
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        f"s3://{env.get('MLOPS_MLFLOW_BUCKET', 'mlflow')}/artifacts",
    ]


def _mlflow_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    (paths.data / "mlflow").mkdir(parents=True, exist_ok=True)
    # The server's background job runner (GenAI evaluation jobs) starts ~9 worker processes (~2 GiB) we never use.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


MLFLOW = Service(
    name="mlflow",
    port=5000,
    command=_mlflow_command,
    prepare=_mlflow_prepare,
    is_healthy=lambda env: http_ok("http://127.0.0.1:5000/health"),
    start_timeout_s=120,
    url="http://127.0.0.1:5000",
)

# --- Airflow: `airflow standalone` (API server + web UI, scheduler, dag-processor, triggerer) ---------------------


def _airflow_healthy(env: dict[str, str]) -> bool:
    import json

    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/api/v2/monitor/health", timeout=2) as response:
            health = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all(health.get(name, {}).get("status") == "healthy" for name in components)


# Airflow's tasks take every endpoint and key from connections (plugins/mlops_airflow/hooks.py), never from the
# environment. Airflow runs without these variables, as on a deployment whose workers have none of them, so that a
# task that still read one would fail here too (and no S3 key sits in Airflow's processes' environments).
AIRFLOW_UNSET = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "SPARK_MASTER",
    "SPARK_LOCAL_IP",
    "RAY_ADDRESS",
    "MLOPS_RAW_BUCKET",
    "MLOPS_LAKE_BUCKET",
    "MLOPS_MLFLOW_BUCKET",
    "MLOPS_SERVE_URL",
)


def _airflow_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    # The lake bucket reaches the DAG as the Airflow variable mlops_lake_bucket (dags/mlops_training.py): the one
    # that `up` created the bucket for, unless the variable is set otherwise.
    env.setdefault("AIRFLOW_VAR_MLOPS_LAKE_BUCKET", env.get("MLOPS_LAKE_BUCKET") or LakeSettings.lake_bucket)
    for key in AIRFLOW_UNSET:
        env.pop(key, None)


AIRFLOW = Service(
    name="airflow",
    port=8080,
    command=lambda paths, env: [str(REPO_ROOT / ".venv" / "bin" / "airflow"), "standalone"],
    prepare=_airflow_prepare,
    is_healthy=_airflow_healthy,
    start_timeout_s=180,
    url="http://127.0.0.1:8080 (login: admin, password in .stack/airflow/simple_auth_manager_passwords.json.generated)",
)

# Start order matters: MLflow writes artifacts into the S3 server. Airflow is started on demand (`up --airflow`).
SERVICES: tuple[Service, ...] = (S3, KAFKA, MLFLOW)
ALL_SERVICES: tuple[Service, ...] = (*SERVICES, AIRFLOW)
