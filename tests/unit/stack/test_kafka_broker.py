"""stack/kafka_broker.py: the local broker listens on 127.0.0.1 only, takes SASL logins on every listener and
authorizes every request; its properties are private; its storage is formatted once, with admin's SCRAM credential
passed in an argument file (never on the command line, never in plain text), and a storage formatted without it is
recognised and formatted again. Kafka's storage tool is faked here; the real broker: tests/integration/stack/."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stack.config import StackPaths, stack_secrets
from stack.kafka_auth import BrokerSecrets
from stack.services import StackError

SECRETS = BrokerSecrets("admin-password-0123456789", "controller-password-0123456789")


def _loopback(address: str) -> bool:
    return address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


@pytest.fixture
def fake_stack(tmp_path: Path) -> tuple[StackPaths, dict[str, str]]:
    paths = StackPaths(tmp_path)
    paths.jars.mkdir(parents=True)
    paths.kafka_classpath_file.write_text("/nonexistent/kafka.jar")
    return paths, {"ONLY": "this"}


class _FakeRun:
    """subprocess.run for Kafka's storage tool: records each command, its environment and the argument file it names
    (read while it exists), answers `returncode`."""

    def __init__(self, returncode: int = 0) -> None:
        self.returncode = returncode
        self.calls: list[tuple[list[str], dict[str, str], list[str]]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        argfile = Path(command[-1].removeprefix("@"))
        arguments = argfile.read_text().splitlines() if command[-1].startswith("@") else []
        if arguments:
            assert stat.S_IMODE(argfile.stat().st_mode) == 0o600, "the argument file holds a credential"
        self.calls.append((list(command), kwargs.get("env") or {}, arguments))
        return subprocess.CompletedProcess(command, self.returncode, "formatted? no", "the tool's complaint")


def test_kafka_listens_and_advertises_on_loopback_only_and_every_listener_wants_a_login() -> None:
    from stack.kafka_broker import kafka_properties

    properties = _properties(kafka_properties(Path("/data/logs"), SECRETS, 19092, 19093))
    for key in ("listeners", "advertised.listeners", "controller.quorum.bootstrap.servers"):
        addresses = [entry.split("://")[-1] for entry in properties[key].split(",")]
        assert addresses and all(_loopback(address) for address in addresses), (key, properties[key])
    assert "127.0.0.1:19092" in properties["listeners"] and "127.0.0.1:19093" in properties["listeners"]
    protocols = dict(entry.split(":") for entry in properties["listener.security.protocol.map"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}, "no listener takes anonymous clients"
    assert properties["auto.create.topics.enable"] == "false"
    assert properties["log.dirs"] == "/data/logs"


def test_the_broker_authenticates_and_authorizes_every_request() -> None:
    from stack.kafka_broker import kafka_properties

    properties = _properties(kafka_properties(Path("/data/logs"), SECRETS))
    assert properties["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert properties["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert properties["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert properties["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    assert properties["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert properties["super.users"] == "User:admin;User:controller"
    broker_login = properties["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert 'username="admin"' in broker_login and f'password="{SECRETS.admin_password}"' in broker_login
    controller_login = properties["listener.name.controller.plain.sasl.jaas.config"]
    assert f'user_controller="{SECRETS.controller_password}"' in controller_login
    assert "{" not in "".join(properties.values()), "a placeholder was left unfilled"


def test_kafka_cluster_ids_never_start_with_a_dash() -> None:
    # kafka-storage's argument parser takes "-t -abc..." for an option: a fresh-clone run failed on one in 64 ids.
    from stack.kafka_broker import _kafka_random_uuid

    ids = [_kafka_random_uuid() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_kafka_storage_is_formatted_once_with_admins_credential_off_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stack.kafka_broker import KAFKA_LOG4J, prepare_kafka_storage

    run = _FakeRun()
    monkeypatch.setattr(subprocess, "run", run)
    kafka_dir = tmp_path / "kafka"
    prepare_kafka_storage(kafka_dir, SECRETS, "/jars/kafka.jar", {"ONLY": "this"})
    properties_file = kafka_dir / "server.properties"
    properties = properties_file.read_text()
    assert stat.S_IMODE(properties_file.stat().st_mode) == 0o600, "the properties hold the broker's passwords"
    assert f"log.dirs={kafka_dir / 'logs'}\n" in properties and "{log_dirs}" not in properties
    assert (kafka_dir / "logs").is_dir()
    assert (kafka_dir / "log4j2.yaml").read_text() == KAFKA_LOG4J
    [(command, env, arguments)] = run.calls
    assert command[command.index("-cp") + 1] == "/jars/kafka.jar"
    assert not [word for word in command if SECRETS.admin_password in word or "scram" in word.lower()], command
    assert arguments[:3] == ["kafka.tools.StorageTool", "format", "--standalone"]
    assert arguments[arguments.index("-c") + 1] == f"'{properties_file}'"
    cluster_id = arguments[arguments.index("-t") + 1]
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
    scram = arguments[arguments.index("--add-scram") + 1]
    assert re.fullmatch(
        r"'SCRAM-SHA-512=\[name=admin,iterations=8192,salt=\"[^\"]+\",saltedpassword=\"[^\"]+\"\]'", scram
    )
    assert SECRETS.admin_password not in "\n".join(arguments), "the salted form, never the password"
    assert not (kafka_dir / "format.args").exists(), "the argument file is removed"
    assert env == {"ONLY": "this"}

    (kafka_dir / "logs" / "meta.properties").write_text("cluster.id=formatted\n")
    prepare_kafka_storage(kafka_dir, SECRETS, "cp", {})
    assert len(run.calls) == 1, "formatted storage is kept (and its messages, users and ACLs with it)"


def test_a_storage_formatted_without_the_credential_is_formatted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stack folder from before the broker took logins: its storage has no SCRAM credential for admin, so the broker
    could not log in to itself. It is formatted again, and `up` says so."""
    from stack.kafka_broker import prepare_kafka_storage

    run = _FakeRun()
    monkeypatch.setattr(subprocess, "run", run)
    kafka_dir = tmp_path / "kafka"
    (kafka_dir / "logs" / "mlops.pipeline.events.v1-0").mkdir(parents=True)
    (kafka_dir / "logs" / "meta.properties").write_text("cluster.id=old\n")
    prepare_kafka_storage(kafka_dir, SECRETS, "cp", {})
    assert len(run.calls) == 1 and not (kafka_dir / "logs" / "mlops.pipeline.events.v1-0").exists()
    assert "formatted without SASL credentials" in capsys.readouterr().out
    (kafka_dir / "logs" / "meta.properties").write_text("cluster.id=new\n")

    prepare_kafka_storage(kafka_dir, SECRETS, "cp", {})
    assert len(run.calls) == 1, "the credential it was formatted with is recognised"
    # Another admin password (the secrets file was replaced): the storage's credential no longer matches.
    prepare_kafka_storage(kafka_dir, BrokerSecrets("another-admin-password", SECRETS.controller_password), "cp", {})
    assert len(run.calls) == 2 and "for another admin password" in capsys.readouterr().out
    assert SECRETS.admin_password not in (kafka_dir / "sasl-storage").read_text()


def test_a_failed_kafka_format_says_what_the_tool_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.kafka_broker import prepare_kafka_storage

    monkeypatch.setattr(subprocess, "run", _FakeRun(returncode=1))
    with pytest.raises(StackError, match=r"kafka: formatting .*logs failed:(.|\n)*the tool's complaint"):
        prepare_kafka_storage(tmp_path / "kafka", SECRETS, "cp", {})
    assert not (tmp_path / "kafka" / "sasl-storage").exists(), "no storage is recorded as formatted"
    assert not (tmp_path / "kafka" / "format.args").exists()


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
    from stack.kafka_auth import broker_secrets
    from stack.kafka_broker import kafka_properties
    from stack.services import KAFKA

    paths, env = fake_stack
    run = _FakeRun()
    monkeypatch.setattr(subprocess, "run", run)
    KAFKA.prepare(paths, env)
    command = KAFKA.command(paths, env)
    assert command[-2:] == ["kafka.Kafka", str(paths.data / "kafka" / "server.properties")]
    assert command[command.index("-cp") + 1] == "/nonexistent/kafka.jar"
    assert f"-Dlog4j2.configurationFile={paths.data / 'kafka' / 'log4j2.yaml'}" in command
    assert len(run.calls) == 1
    # The stack's broker runs the properties the private test brokers are built from, with the stack's passwords.
    written = (paths.data / "kafka" / "server.properties").read_text()
    assert written == kafka_properties(paths.data / "kafka" / "logs", broker_secrets(paths), notifier_port=9094)
    assert stack_secrets(paths)["kafka_admin_password"] in written
    # One more listener than the private brokers: the S3 server's notifications, on loopback, without a login.
    properties = dict(line.split("=", 1) for line in written.splitlines() if "=" in line and not line.startswith("#"))
    assert properties["listeners"].split(",")[-1] == "S3EVENTS://127.0.0.1:9094"
    assert properties["listener.security.protocol.map"].split(",")[-1] == "S3EVENTS:PLAINTEXT"
    assert "S3EVENTS" not in kafka_properties(paths.data / "kafka" / "logs", broker_secrets(paths))


def test_the_health_check_logs_in_as_admin(
    fake_stack: tuple[StackPaths, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline and serving users exist only once `up` has made them, after the broker is healthy."""
    import stack.kafka_broker
    from stack.kafka_auth import admin_settings

    paths, _ = fake_stack
    asked: list[Any] = []
    monkeypatch.setattr(stack.kafka_broker, "kafka_answers", lambda kafka: asked.append(kafka) or True)
    assert stack.kafka_broker.KAFKA.is_healthy({"MLOPS_STACK_DIR": str(paths.root)})
    assert asked == [admin_settings(paths)] and asked[0].username == "admin" and asked[0].password
