"""Private copies of the stack's servers for fault tests: an S3 gateway, a Kafka broker and an MLflow server that a
test may kill, stop and restart without touching the shared stack that other tests use (127.0.0.1:9000, :9092, :5000,
never stopped here).

Each private server is a `stack.services.Service` (the same process machinery as `make stack-up`: own process group,
pid file, log file, health check) on free ports of 127.0.0.1, with its data, logs and pid files under a folder of
its own (a pytest tmp_path). It uses the stack's binaries (`.stack/bin/versitygw`, the Kafka classpath of
`make tools`; the stack folder of `stack_paths()`, so MLOPS_STACK_DIR from a worktree) read-only, and the venv's
`mlflow`. `PrivateServer.kill()` is a crash (SIGKILL to the group); `stop()` a clean shutdown;
`start()` after either restarts it on the same ports with the same data.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.settings import KafkaSettings, MlflowSettings, S3Settings
from stack.config import (
    KAFKA_ADMIN_USER,
    KAFKA_CLIENT_USERS,
    KAFKA_PIPELINE_USER,
    MLFLOW_ADMIN_USER,
    MLFLOW_CLIENT_USERS,
    MLFLOW_PIPELINE_USER,
    StackPaths,
    stack_paths,
)
from stack.kafka_auth import SCRAM_MECHANISM, BrokerSecrets
from stack.kafka_broker import KAFKA_NOTIFIER_PORT, KAFKA_PORTS, kafka_command
from stack.mlflow_auth import ensure_users_and_roles, server_environment, write_auth_config
from stack.services import (
    Service,
    StackError,
    group_alive,
    http_ok,
    kafka_answers,
    mlflow_server_command,
    port_in_use,
    prepare_kafka_storage,
    prepare_s3_data,
    s3_gateway_command,
    signal_group,
    wait_until,
)
from tests.support.probes import free_port


@dataclass
class PrivateServer:
    """A Service with its own StackPaths and environment; start/stop/kill bounded in time."""

    service: Service
    paths: StackPaths
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.service.port, *self.service.extra_ports)

    def start(self) -> str:
        self.paths.data.mkdir(parents=True, exist_ok=True)  # Service.start runs the process in paths.data
        return self.service.start(self.paths, self.env)

    def stop(self, timeout_s: float = 30.0) -> str:
        """A clean shutdown (SIGTERM to the group, SIGKILL after `timeout_s`), like `Service.stop`, then its ports
        free (the process is this test process's child, which stack.process.group_alive reaps)."""
        return self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> str:
        """A crash: SIGKILL to the process group."""
        return self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: signal.Signals, timeout_s: float) -> str:
        pid = self.service.running_pid(self.paths)
        self.service.pid_file(self.paths).unlink(missing_ok=True)
        if pid is None:
            return "not running"
        signal_group(pid, sig)
        if not wait_until(lambda: not group_alive(pid), timeout_s):
            signal_group(pid, signal.SIGKILL)
            wait_until(lambda: not group_alive(pid), 10.0)
        for port in self.ports:
            if not wait_until(lambda p=port: not port_in_use(p), 10.0):  # type: ignore[misc]
                raise StackError(f"{self.service.name}: port {port} still open after the process ended")
        return "stopped" if sig == signal.SIGTERM else "killed"

    def healthy(self) -> bool:
        return self.service.is_healthy(self.env)

    def log_tail(self, lines: int = 40) -> str:
        log = self.service.log_file(self.paths)
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


# --- S3: a second Versity S3 Gateway over its own posix folder --------------------------------------------------------


@dataclass(frozen=True)
class S3Keys:
    access_key: str
    secret_key: str


def private_s3(
    root: Path, *, region: str = "us-east-1", port: int | None = None, notify_kafka: str | None = None
) -> tuple[PrivateServer, S3Keys]:
    """A versitygw on a free port of 127.0.0.1 (or `port`) serving `root/data/s3`, with root keys of its own;
    `notify_kafka`: the Kafka listener its bucket notifications go to (a private broker's `notifier_bootstrap`).

    The command line and the data folders are the shared stack's (stack.services.s3_gateway_command: posix backend,
    internal IAM), less the web console; the root keys travel in the environment (ROOT_ACCESS_KEY_ID /
    ROOT_SECRET_ACCESS_KEY, which versitygw reads), not in argv where `ps` shows them."""
    binary = stack_paths().versitygw
    if not binary.exists():
        raise StackError(f"{binary} is missing; run `make tools` first")
    port = port or free_port()
    keys = S3Keys("fault-" + secrets.token_hex(6), secrets.token_urlsafe(30))
    paths = StackPaths(root)

    def command(paths: StackPaths, env: dict[str, str]) -> list[str]:
        return s3_gateway_command(binary, paths.data / "s3", f"127.0.0.1:{port}", region, notify_kafka=notify_kafka)

    def prepare(paths: StackPaths, env: dict[str, str]) -> None:
        prepare_s3_data(paths.data / "s3")

    service = Service(
        name="private-s3",
        port=port,
        command=command,
        prepare=prepare,
        is_healthy=lambda env: http_ok(f"http://127.0.0.1:{port}/", (200, 403)),
        start_timeout_s=30,
        url=f"http://127.0.0.1:{port}",
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "ROOT_ACCESS_KEY_ID": keys.access_key,
        "ROOT_SECRET_ACCESS_KEY": keys.secret_key,
    }
    return PrivateServer(service, paths, env), keys


# --- Kafka: a second single-node KRaft broker ------------------------------------------------------------------------


@dataclass
class PrivateKafka(PrivateServer):
    """A private broker with the stack's security (SASL/SCRAM-SHA-512 logins, ACLs) and passwords of its own: `admin`
    (super user) from its start, `pipeline` and `serving` once `prepare()` has made them as `up` does."""

    passwords: dict[str, str] = field(default_factory=dict, repr=False)
    broker_secrets: BrokerSecrets | None = field(default=None, repr=False)
    notifier_port: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    @property
    def notifier_bootstrap(self) -> str:
        """The login-less listener an S3 server's notifications come in on (private_kafka(notifier=True))."""
        if self.notifier_port is None:
            raise ValueError("this broker has no notifications listener: private_kafka(root, notifier=True)")
        return f"127.0.0.1:{self.notifier_port}"

    def settings(self, user: str = KAFKA_PIPELINE_USER, password: str | None = None) -> KafkaSettings:
        """How `user` logs in (with its own password unless another is given)."""
        return KafkaSettings(self.bootstrap, "SASL_PLAINTEXT", SCRAM_MECHANISM, user, password or self.passwords[user])

    def prepare(self) -> dict[str, Any]:
        """The users, their ACLs and the pipeline's topics, as `python -m stack up` makes them (as admin)."""
        from stack.init_resources import prepare_kafka

        clients = {user: self.passwords[user] for user in KAFKA_CLIENT_USERS}
        return prepare_kafka(self.settings(KAFKA_ADMIN_USER), clients)


def private_kafka(root: Path, *, notifier: bool = False) -> PrivateKafka:
    """A Kafka broker+controller with the shared stack's configuration (stack.kafka_broker.kafka_properties, the same
    storage preparation) on free ports, its log dirs and passwords under `root`; with `notifier`, the S3
    notifications listener the stack's broker has too."""
    classpath_file = stack_paths().kafka_classpath_file
    if not classpath_file.exists():
        raise StackError(f"{classpath_file} is missing; run `make tools` first")
    classpath = classpath_file.read_text().strip()
    ports: list[int] = []
    while len(ports) < (3 if notifier else 2):
        port = free_port()
        if port not in ports:
            ports.append(port)
    broker, controller = ports[0], ports[1]
    notifier_port = ports[2] if notifier else None
    if set(ports) & {*KAFKA_PORTS, KAFKA_NOTIFIER_PORT}:
        raise StackError("a private Kafka port is a shared one")  # the shared broker is never reused
    paths = StackPaths(root)
    passwords = {user: secrets.token_urlsafe(30) for user in (KAFKA_ADMIN_USER, *KAFKA_CLIENT_USERS)}
    broker_secrets = BrokerSecrets(passwords[KAFKA_ADMIN_USER], secrets.token_urlsafe(30))

    def prepare(paths: StackPaths, env: dict[str, str]) -> None:
        prepare_kafka_storage(
            paths.data / "kafka",
            broker_secrets,
            classpath,
            env,
            ports=(broker, controller),
            notifier_port=notifier_port,
        )

    def command(paths: StackPaths, env: dict[str, str]) -> list[str]:
        # A smaller, quicker-starting JVM than the stack's.
        jvm = ("-Xms128m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
        return kafka_command(paths.data / "kafka", paths.logs, classpath, jvm)

    admin = KafkaSettings(
        f"127.0.0.1:{broker}", "SASL_PLAINTEXT", SCRAM_MECHANISM, KAFKA_ADMIN_USER, passwords[KAFKA_ADMIN_USER]
    )
    service = Service(
        name="private-kafka",
        port=broker,
        extra_ports=tuple(ports[1:]),
        command=command,
        prepare=prepare,
        is_healthy=lambda env: kafka_answers(admin),
        start_timeout_s=120,
        url=f"127.0.0.1:{broker}",
    )
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "JAVA_HOME", "LANG")}
    return PrivateKafka(
        service, paths, env, passwords=passwords, broker_secrets=broker_secrets, notifier_port=notifier_port
    )


@contextmanager
def running_private_kafka(root: Path, *, notifier: bool = False) -> Iterator[PrivateKafka]:
    """A private broker started and prepared (users, ACLs, topics) as `make stack-up` prepares the stack's; stopped
    afterwards."""
    broker = private_kafka(root, notifier=notifier)
    broker.start()
    try:
        broker.prepare()
        yield broker
    finally:
        broker.stop()


# --- MLflow: a second tracking server with the stack's basic-auth app, artifacts on a private S3 gateway ------------

MLFLOW_PORTS = range(15010, 15020)  # preferred: easy to tell apart from the stack's :5000 in `ss` and logs


@dataclass
class PrivateMlflow(PrivateServer):
    """A private MLflow server built as the stack's (stack.services.mlflow_server_command, stack.mlflow_auth): the
    basic-auth app with an `admin` of its own, `pipeline` and `serving` once `prepare()` has made them as `up` does;
    a SQLite store under its root (a restart keeps it); artifacts proxied to a bucket of a private S3 gateway."""

    passwords: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    def settings(self, user: str = MLFLOW_PIPELINE_USER) -> MlflowSettings:
        return MlflowSettings(self.tracking_uri, user, self.passwords[user])

    def prepare(self) -> list[str]:
        """The users and roles, as `python -m stack up` makes them (as admin; idempotent)."""
        clients = {user: self.passwords[user] for user in MLFLOW_CLIENT_USERS}
        return ensure_users_and_roles(self.tracking_uri, self.passwords[MLFLOW_ADMIN_USER], clients)


def _mlflow_port() -> int:
    for port in MLFLOW_PORTS:
        if not port_in_use(port):
            return port
    return free_port()


def private_mlflow(root: Path, s3: S3Settings, artifacts_bucket: str = "mlflow") -> PrivateMlflow:
    """An MLflow server on a free port of 127.0.0.1 (15010-15019 when one is free) whose artifacts go to
    `artifacts_bucket` of the S3 endpoint `s3` (which must exist: the server does not create it)."""
    port = _mlflow_port()
    paths = StackPaths(root)
    passwords = {user: secrets.token_urlsafe(30) for user in (MLFLOW_ADMIN_USER, *MLFLOW_CLIENT_USERS)}
    folder = paths.data / "mlflow"

    def command(paths: StackPaths, env: dict[str, str]) -> list[str]:
        return mlflow_server_command(port, artifacts_bucket, f"sqlite:///{folder / 'mlflow.db'}")

    def prepare(paths: StackPaths, env: dict[str, str]) -> None:
        env.update(server_environment(write_auth_config(folder), passwords[MLFLOW_ADMIN_USER], secrets.token_hex(16)))

    service = Service(
        name="private-mlflow",
        port=port,
        command=command,
        prepare=prepare,
        is_healthy=lambda env: http_ok(f"http://127.0.0.1:{port}/health"),
        start_timeout_s=120,
        url=f"http://127.0.0.1:{port}",
    )
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG")}
    # The artifact proxy's S3 client (boto3 in the server) and nothing of the shared stack's.
    env.update(s3.subprocess_env())
    env.update(MLFLOW_S3_ENDPOINT_URL=s3.endpoint_url or "", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return PrivateMlflow(service, paths, env, passwords=passwords)
