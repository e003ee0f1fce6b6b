"""docker-compose.yaml's Kafka: the broker is configured as the local stack's (stack.kafka_broker, stack.kafka_auth:
SASL logins on every listener, the authorizer, the super users), its storage is formatted once with admin's SCRAM
credential from an argument file, and every client logs in as its own user. Checked without Docker: the kafka
service's script runs here under bash, with Kafka's own programs replaced by recorders.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ml.settings import Settings
from stack.kafka_auth import BrokerSecrets
from stack.kafka_broker import kafka_properties
from tests.unit.stack.test_docker_compose import COMPOSE_ENV, environment, interpolate, load_compose

# Where the script differs from the local stack's broker, and why: the listeners (two client listeners, for the
# containers and the host, on the container's interfaces; a named inter-broker listener) and the log dirs.
LISTENER_KEYS = {
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "controller.quorum.bootstrap.servers",
    "log.dirs",
    "log.retention.hours",  # the broker's default (168 hours), written out for the local one
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def run_kafka_script(compose: dict[str, Any], root: Path, formatted: bool = False) -> dict[str, Any]:
    """The kafka service's command under bash, its paths moved under `root`, Kafka's programs replaced by recorders;
    returns the properties it wrote, what it formatted with, what it started and its output."""
    service = compose["services"]["kafka"]
    assert service["command"][:2] == ["bash", "-c"]
    data, config, bin_dir = root / "data", root / "config", root / "bin"
    script = (
        interpolate(service["command"][2])
        .replace("/var/lib/kafka/data", str(data))
        .replace("/tmp/kafka-config", str(config))
        .replace("/opt/kafka/bin/", f"{bin_dir}/")
    )
    bin_dir.mkdir(parents=True)
    # kafka-run-class.sh: records its arguments and the argument file it is given (read while it exists).
    (bin_dir / "kafka-run-class.sh").write_text(
        f'#!/bin/bash\nprintf "%s\\n" "$@" > {root}/run-class.args\ncat "${{1#@}}" > {root}/format.args\n'
        f'stat -c %a "${{1#@}}" > {root}/format.mode\n'
    )
    (bin_dir / "kafka-server-start.sh").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {root}/started\n')
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    if formatted:
        (data / "logs").mkdir(parents=True)
        (data / "logs" / "meta.properties").write_text("cluster.id=x\n")
    env = {key: interpolate(value) for key, value in environment(service).items()}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    properties_file = config / "server.properties"
    return {
        "env": env,
        "properties": _properties(properties_file.read_text()),
        "properties_mode": stat.S_IMODE(properties_file.stat().st_mode),
        "admin": _properties((config / "admin.properties").read_text()),
        "run_class": (root / "run-class.args").read_text().split() if (root / "run-class.args").exists() else None,
        "format": (root / "format.args").read_text().splitlines() if (root / "format.args").exists() else None,
        "format_mode": (root / "format.mode").read_text().strip() if (root / "format.mode").exists() else None,
        "argfile_left": (config / "format.args").exists(),
        "started": (root / "started").read_text().split(),
        "data": data,
        "config": config,
    }


def test_the_compose_broker_is_configured_as_the_local_stacks(compose: dict[str, Any], tmp_path: Path) -> None:
    ran = run_kafka_script(compose, tmp_path)
    env = ran["env"]
    local = _properties(
        kafka_properties(Path("/logs"), BrokerSecrets(env["KAFKA_ADMIN_PASSWORD"], env["KAFKA_CONTROLLER_PASSWORD"]))
    )
    written = ran["properties"]
    assert ran["properties_mode"] == 0o600, "they hold the broker's passwords"
    jaas = {key for key in {*local, *written} if key.endswith(".sasl.jaas.config")}
    same = {key: local[key] for key in local if key not in LISTENER_KEYS | jaas}
    assert {key: written.get(key) for key in same} == same
    assert not set(written) - set(local) - LISTENER_KEYS - jaas, "nothing the local broker lacks"
    protocols = dict(entry.split(":") for entry in written["listener.security.protocol.map"].split(","))
    # Every listener takes logins but the S3 server's notifications listener (as the local stack's broker), which
    # stays on the compose network: not published to the host, and its ANONYMOUS principal may write one topic.
    assert protocols == {
        "INTERNAL": "SASL_PLAINTEXT",
        "EXTERNAL": "SASL_PLAINTEXT",
        "CONTROLLER": "SASL_PLAINTEXT",
        "S3EVENTS": "PLAINTEXT",
    }
    assert "S3EVENTS://kafka:29094" in written["advertised.listeners"].split(",")
    assert compose["services"]["kafka"]["ports"] == ["127.0.0.1:9092:9092"], "only the SASL listener is published"
    # Each client listener's broker login is the local one's (admin, SCRAM); the controller's PLAIN user likewise.
    local_scram = local["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    for listener in ("internal", "external"):
        assert written[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"] == local_scram
    controller = "listener.name.controller.plain.sasl.jaas.config"
    assert written[controller] == local[controller]
    assert written["log.dirs"] == str(ran["data"] / "logs")
    assert ran["started"] == [str(ran["config"] / "server.properties")]


def test_the_compose_storage_is_formatted_once_with_admins_credential_from_a_file(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    ran = run_kafka_script(compose, tmp_path / "fresh")
    password = ran["env"]["KAFKA_ADMIN_PASSWORD"]
    assert ran["run_class"] == [f"@{ran['config'] / 'format.args'}"], "no credential on the command line"
    assert ran["format"][:3] == ["kafka.tools.StorageTool", "format", "--standalone"]
    assert ran["format"][ran["format"].index("-t") + 1] == ran["env"]["CLUSTER_ID"]
    assert ran["format"][ran["format"].index("--add-scram") + 1] == f"SCRAM-SHA-512=[name=admin,password={password}]"
    assert ran["format_mode"] == "600" and not ran["argfile_left"]
    assert ran["admin"]["security.protocol"] == "SASL_PLAINTEXT", "the healthcheck's login"
    assert f'password="{password}"' in ran["admin"]["sasl.jaas.config"]
    healthcheck = " ".join(compose["services"]["kafka"]["healthcheck"]["test"])
    assert "--command-config /tmp/kafka-config/admin.properties" in healthcheck

    again = run_kafka_script(compose, tmp_path / "formatted", formatted=True)
    assert again["run_class"] is None and again["started"], "a formatted storage is kept"


def test_every_kafka_client_logs_in_as_its_own_user(compose: dict[str, Any]) -> None:
    """The project's programs as pipeline, the prediction service as serving (it reads promotions, writes nothing),
    stack-init as admin with the passwords of the users it creates; the Airflow connection equals the pipeline's
    (test_docker_compose.py reads it through the hook)."""

    def kafka_of(name: str) -> Any:
        env = environment(compose["services"][name])
        return Settings.from_env({key: interpolate(value) for key, value in env.items()}).kafka

    serve, init = kafka_of("serve"), kafka_of("stack-init")
    pipeline = Settings.from_env(
        {k: interpolate(v) for k, v in environment({"environment": compose["x-mlops-env"]}).items()}
    ).kafka
    assert (pipeline.username, pipeline.password) == ("pipeline", COMPOSE_ENV["MLOPS_KAFKA_PIPELINE_PASSWORD"])
    assert (serve.username, serve.password) == ("serving", COMPOSE_ENV["MLOPS_KAFKA_SERVING_PASSWORD"])
    assert (init.username, init.password) == ("admin", COMPOSE_ENV["MLOPS_KAFKA_ADMIN_PASSWORD"])
    for kafka in (pipeline, serve, init):
        assert (kafka.bootstrap_servers, kafka.security_protocol, kafka.sasl_mechanism) == (
            "kafka:29092",
            "SASL_PLAINTEXT",
            "SCRAM-SHA-512",
        )
    monitor = kafka_of("drift-monitor")
    assert (monitor.username, monitor.password) == ("monitor", COMPOSE_ENV["MLOPS_KAFKA_MONITOR_PASSWORD"])
    assert monitor.bootstrap_servers == "kafka:29092" and monitor.sasl_mechanism == "SCRAM-SHA-512"
    for init_service in ("stack-init", "kafka-init"):
        init_env = environment(compose["services"][init_service])
        for user in ("pipeline", "serving", "monitor"):
            variable = f"MLOPS_KAFKA_{user.upper()}_PASSWORD"
            assert interpolate(init_env[variable]) == COMPOSE_ENV[variable], (init_service, user)
    broker = environment(compose["services"]["kafka"])
    assert interpolate(broker["KAFKA_ADMIN_PASSWORD"]) == COMPOSE_ENV["MLOPS_KAFKA_ADMIN_PASSWORD"]
    assert interpolate(broker["KAFKA_CONTROLLER_PASSWORD"]) == COMPOSE_ENV["MLOPS_KAFKA_CONTROLLER_PASSWORD"]


def test_the_drift_monitor_holds_its_own_users_credentials_and_none_of_the_pipelines(compose: dict[str, Any]) -> None:
    """Its S3 key is the monitor user's (lake/monitor/ and the training distributions only: stack.s3_users), its
    Kafka and MLflow logins the monitor's; no pipeline or root credential is in its environment."""
    env = {key: interpolate(value) for key, value in environment(compose["services"]["drift-monitor"]).items()}
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        COMPOSE_ENV["MLOPS_S3_MONITOR_ACCESS_KEY"],
        COMPOSE_ENV["MLOPS_S3_MONITOR_SECRET_KEY"],
    )
    assert (env["MLOPS_KAFKA_USERNAME"], env["MLFLOW_TRACKING_USERNAME"]) == ("monitor", "monitor")
    assert env["MLFLOW_TRACKING_PASSWORD"] == COMPOSE_ENV["MLOPS_MLFLOW_MONITOR_PASSWORD"]
    others = {name: value for name, value in COMPOSE_ENV.items() if "MONITOR" not in name}
    assert not [name for name, value in others.items() if value in env.values()]
