"""stack/config/environment.py: the one environment every process shares, per profile and identity (the endpoints
are ml.settings' defaults, written down once; anything the caller sets wins)."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import uuid
from pathlib import Path

import pytest

from ml.settings import Settings
from stack.config import (
    REPO_ROOT,
    SECRET_VARIABLES,
    StackPaths,
    active_profile,
    cluster_secrets,
    postgres_url,
    stack_environment,
    stack_secrets,
    tune_state_key,
)

GIVEN_KEY = "given-key-value"


GIVEN_KEYS = {"AWS_ACCESS_KEY_ID": "given-id", "AWS_SECRET_ACCESS_KEY": GIVEN_KEY}


def _loopback(address: str) -> bool:
    """host:port, scheme://host:port/... or host: whether the host is 127.0.0.1 (or localhost)."""
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", address).split("/")[0]
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return host in ("127.0.0.1", "localhost")


def test_the_environment_takes_the_endpoints_from_ml_settings(stack_dir: StackPaths) -> None:
    env = stack_environment(dict(GIVEN_KEYS))
    for key, value in Settings().to_env().items():
        assert env[key] == value, key
    assert Settings.from_env(env).s3.endpoint_url == Settings().s3.endpoint_url
    assert env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    assert env["MLOPS_STACK_DIR"] == str(stack_dir.root)
    assert env["AIRFLOW_HOME"] == str(stack_dir.airflow_home)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")


def test_what_the_caller_sets_wins(stack_dir: StackPaths) -> None:
    real = {
        **GIVEN_KEYS,
        "AWS_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com",
        "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
        "MLFLOW_TRACKING_URI": "https://mlflow.example.org",
        "SPARK_MASTER": "spark://spark-master:7077",
        "RAY_ADDRESS": "ray://head:10001",
        "MLFLOW_S3_ENDPOINT_URL": "https://other.example.org",
    }
    env = stack_environment(real)
    assert {key: env[key] for key in real} == real
    assert not stack_dir.credentials_file.exists(), "no local keys are generated when real ones are given"


def test_local_keys_fill_in_when_none_are_given(stack_dir: StackPaths) -> None:
    env = stack_environment({"PATH": "/usr/bin"})
    credentials = json.loads(stack_dir.credentials_file.read_text())
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        credentials["access_key"],
        credentials["secret_key"],
    )


def test_the_tune_state_key_is_generated_once_private_and_in_both_profiles(
    stack_dir: StackPaths, tmp_path: Path
) -> None:
    """The key that signs Tune state (ml.tune.signing): one per stack folder, so that a retried task, the CLI and
    Airflow (ray_default, stack.airflow_home) of one stack sign and check with the same key; a secret of the stack's."""
    env = stack_environment(dict(GIVEN_KEYS))
    generated = env["MLOPS_TUNE_STATE_KEY"]
    assert stat.S_IMODE(stack_dir.stack_secrets_file.stat().st_mode) == 0o600
    stored = json.loads(stack_dir.stack_secrets_file.read_text())["tune_state_key"]
    assert generated == tune_state_key(stack_dir) == stored and len(generated) >= 32
    assert stack_environment(dict(GIVEN_KEYS), profile="cluster")["MLOPS_TUNE_STATE_KEY"] == generated
    assert Settings.from_env(env).ray.state_signing_key == generated
    assert "MLOPS_TUNE_STATE_KEY" in SECRET_VARIABLES, "`python -m stack env` prints a lookup, never the key"
    assert tune_state_key(StackPaths(tmp_path / "other")) != generated, "each stack folder has a key of its own"


def test_a_tune_state_key_the_caller_sets_wins(stack_dir: StackPaths) -> None:
    given = secrets.token_urlsafe(32)
    assert stack_environment({**GIVEN_KEYS, "MLOPS_TUNE_STATE_KEY": given})["MLOPS_TUNE_STATE_KEY"] == given


def test_the_project_stays_on_the_paths(stack_dir: StackPaths) -> None:
    venv_bin = str(REPO_ROOT / ".venv" / "bin")
    env = stack_environment({**GIVEN_KEYS, "PATH": "/usr/bin", "PYTHONPATH": "/elsewhere"})
    assert env["PATH"].split(os.pathsep) == [venv_bin, "/usr/bin"]
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO_ROOT), str(REPO_ROOT / "plugins"), "/elsewhere"]
    kept = stack_environment({**GIVEN_KEYS, "PATH": f"{venv_bin}:/bin"})
    assert kept["PATH"] == f"{venv_bin}:/bin"


def test_the_environment_does_not_change_the_callers(stack_dir: StackPaths) -> None:
    before = dict(os.environ)
    stack_environment(dict(GIVEN_KEYS))
    assert dict(os.environ) == before


def test_airflow_spark_and_client_defaults_are_loopback(stack_dir: StackPaths) -> None:
    env = stack_environment(dict(GIVEN_KEYS))
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    for key in (
        "AWS_ENDPOINT_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "MLFLOW_TRACKING_URI",
        "MLOPS_SERVE_URL",
        "MLFLOW_S3_ENDPOINT_URL",
    ):
        assert _loopback(env[key]), (key, env[key])


def _record_profile(paths: StackPaths, name: str) -> None:
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.profile_file.write_text(name + "\n")


def test_the_profile_is_the_variable_then_the_one_up_started_then_local(
    stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLOPS_STACK_PROFILE", raising=False)
    assert active_profile(stack_dir, {}) == "local"
    assert active_profile(stack_dir) == "local", "os.environ when no base is given"
    _record_profile(stack_dir, "cluster")
    assert active_profile(stack_dir, {}) == "cluster"
    assert active_profile(stack_dir, {"MLOPS_STACK_PROFILE": ""}) == "cluster", "an empty variable is unset"
    assert active_profile(stack_dir, {"MLOPS_STACK_PROFILE": "local"}) == "local", "the variable wins"
    monkeypatch.setenv("MLOPS_STACK_PROFILE", "local")
    assert active_profile(stack_dir) == "local"
    assert active_profile(stack_dir, {}) == "cluster", "a base given replaces os.environ"


@pytest.mark.parametrize("where", ["variable", "file"])
def test_an_unknown_profile_names_the_profiles(stack_dir: StackPaths, where: str) -> None:
    base = {"MLOPS_STACK_PROFILE": "kubernetes"} if where == "variable" else {}
    if where == "file":
        _record_profile(stack_dir, "kubernetes")
    with pytest.raises(ValueError, match=r"unknown stack profile 'kubernetes'; the profiles are local, cluster"):
        active_profile(stack_dir, base)


def test_the_cluster_environment(stack_dir: StackPaths) -> None:
    env = stack_environment(dict(GIVEN_KEYS), profile="cluster")
    secrets = cluster_secrets(stack_dir)
    assert env["MLOPS_STACK_PROFILE"] == "cluster"
    assert env["SPARK_MASTER"] == "spark://127.0.0.1:7077"
    assert env["MLOPS_SPARK_CORES_MAX"] == "2"
    assert env["MLOPS_HIVE_METASTORE_URI"] == "thrift://127.0.0.1:9083"
    assert env["MLOPS_HIVE_METASTORE_DIR"] == "", "no embedded Derby folder, even for a reader without the URI"
    assert env["RAY_ADDRESS"] == "127.0.0.1:6380"
    assert env["RAY_AUTH_MODE"] == "token"
    token_file = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert token_file == stack_dir.ray_token_file
    assert token_file.read_text() == secrets["ray_auth_token"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == postgres_url(stack_dir, "airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__FERNET_KEY"] == secrets["airflow_fernet_key"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == secrets["airflow_jwt_secret"]
    # MLflow's and the metastore's database passwords, and the superuser's, are given to their servers only.
    for name in ("postgres_password", "mlflow_db_password", "metastore_db_password"):
        assert not any(secrets[name] in value for value in env.values()), name


def test_the_cluster_environment_reads_back_as_cluster_settings(stack_dir: StackPaths) -> None:
    env = stack_environment(dict(GIVEN_KEYS), profile="cluster")
    settings = Settings.from_env(env)
    assert settings.spark.master == "spark://127.0.0.1:7077"
    assert settings.spark.metastore_uri == "thrift://127.0.0.1:9083"
    assert settings.spark.metastore_dir is None, "no embedded Derby metastore beside a networked one"
    assert settings.spark.cores_max == 2
    assert settings.ray.address == "127.0.0.1:6380"
    assert settings.ray.auth_token == cluster_secrets(stack_dir)["ray_auth_token"]
    assert settings.ray.auth_mode == "token"


def test_the_profile_comes_from_the_callers_variable(stack_dir: StackPaths) -> None:
    env = stack_environment({**GIVEN_KEYS, "MLOPS_STACK_PROFILE": "cluster"})
    assert env["SPARK_MASTER"] == "spark://127.0.0.1:7077" and env["RAY_AUTH_MODE"] == "token"


def test_the_profile_comes_from_the_one_up_started(stack_dir: StackPaths) -> None:
    _record_profile(stack_dir, "cluster")
    assert stack_environment(dict(GIVEN_KEYS))["MLOPS_STACK_PROFILE"] == "cluster"


def test_what_the_caller_sets_wins_in_the_cluster_profile_too(stack_dir: StackPaths) -> None:
    real = {**GIVEN_KEYS, "SPARK_MASTER": "spark://spark-master:7077", "RAY_ADDRESS": "ray://head:10001"}
    env = stack_environment(real, profile="cluster")
    assert (env["SPARK_MASTER"], env["RAY_ADDRESS"]) == ("spark://spark-master:7077", "ray://head:10001")


def test_the_local_profile_has_no_cluster_settings(stack_dir: StackPaths) -> None:
    env = stack_environment(dict(GIVEN_KEYS), profile="local")
    assert env["MLOPS_STACK_PROFILE"] == "local"
    assert "RAY_AUTH_MODE" not in env, "a local Ray gets token auth (ml.tune.runtime), never switched off here"
    assert not [key for key in env if key.startswith("AIRFLOW__DATABASE__")]
    assert "RAY_AUTH_TOKEN_PATH" not in env and "RAY_ADDRESS" not in env
    assert "MLOPS_HIVE_METASTORE_URI" not in env
    assert env["SPARK_MASTER"].startswith("local")
    settings = Settings.from_env(env)
    assert settings.spark.metastore_dir == str(stack_dir.data / "hive") and settings.spark.metastore_uri is None
    assert not stack_dir.cluster_secrets_file.exists() and not stack_dir.ray_token_file.exists()


def test_the_environment_logs_in_to_the_local_broker_as_the_pipeline(stack_dir: StackPaths) -> None:
    env = stack_environment(dict(GIVEN_KEYS))
    kafka = Settings.from_env(env).kafka
    assert (kafka.bootstrap_servers, kafka.security_protocol, kafka.sasl_mechanism, kafka.username) == (
        "127.0.0.1:9092",
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
        "pipeline",
    )
    assert kafka.password == stack_secrets(stack_dir)["kafka_pipeline_password"]
    serving = Settings.from_env(stack_environment(dict(GIVEN_KEYS), identity="serving")).kafka
    assert (serving.username, serving.password) == ("serving", stack_secrets(stack_dir)["kafka_serving_password"])
    # An `eval` of `python -m stack env` exported the pipeline's login a moment ago: asking for serving still works.
    again = stack_environment(
        {**GIVEN_KEYS, **{k: v for k, v in env.items() if k.startswith("MLOPS_KAFKA_")}}, identity="serving"
    )
    assert Settings.from_env(again).kafka == serving
    with pytest.raises(ValueError, match="not an identity of the stack's clients"):
        stack_environment(dict(GIVEN_KEYS), identity="controller")


def test_the_environment_logs_in_to_the_local_mlflow_as_the_pipeline_and_serving_holds_no_s3_key(
    stack_dir: StackPaths,
) -> None:
    env = stack_environment(dict(GIVEN_KEYS))
    mlflow = Settings.from_env(env).mlflow
    secrets = stack_secrets(stack_dir)
    assert (mlflow.tracking_uri, mlflow.username, mlflow.password) == (
        "http://127.0.0.1:5000",
        "pipeline",
        secrets["mlflow_pipeline_password"],
    )
    assert env["AWS_ACCESS_KEY_ID"] == GIVEN_KEYS["AWS_ACCESS_KEY_ID"]
    serving_env = stack_environment(dict(GIVEN_KEYS), identity="serving")
    serving = Settings.from_env(serving_env).mlflow
    assert (serving.username, serving.password) == ("serving", secrets["mlflow_serving_password"])
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(serving_env)
    # An `eval` of `python -m stack env` exported the pipeline's login a moment ago: asking for serving still works.
    exported = {k: v for k, v in env.items() if k.startswith("MLFLOW_TRACKING_")}
    assert Settings.from_env(stack_environment({**GIVEN_KEYS, **exported}, identity="serving")).mlflow == serving
    # A server of your own, or a login of your own, is left alone.
    own_server = stack_environment({**GIVEN_KEYS, "MLFLOW_TRACKING_URI": "http://mlflow.example:5000"})
    assert "MLFLOW_TRACKING_USERNAME" not in own_server
    own_login = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": uuid.uuid4().hex}
    assert Settings.from_env(stack_environment({**GIVEN_KEYS, **own_login})).mlflow.username == "alice"


@pytest.mark.parametrize(
    "own",
    [
        {"KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9092"},  # a broker of your own, without logins
        {"MLOPS_KAFKA_USERNAME": "alice", "MLOPS_KAFKA_PASSWORD": uuid.uuid4().hex},  # your own login
    ],
)
def test_a_callers_own_kafka_gets_no_stack_login(stack_dir: StackPaths, own: dict[str, str]) -> None:
    env = stack_environment({**GIVEN_KEYS, **own})
    assert {key: env.get(key) for key in own} == own
    assert env.get("MLOPS_KAFKA_PASSWORD") in (None, own.get("MLOPS_KAFKA_PASSWORD"))
    kafka_passwords = [value for name, value in stack_secrets(stack_dir).items() if name.startswith("kafka_")]
    assert not [v for v in kafka_passwords if v in env.values()], "no stack Kafka password leaks in"


def test_the_monitor_identity_logs_in_as_the_monitor_everywhere(stack_dir: StackPaths) -> None:
    """`monitor` (the streaming drift monitor, `python -m stack run --as monitor`): the monitor's Kafka and MLflow
    logins and, on the stack's own S3 server, the monitor's S3 key instead of the root key."""
    from stack.config import local_credentials, s3_user_keys

    env = stack_environment({"PATH": "/usr/bin"}, identity="monitor")
    settings, stored = Settings.from_env(env), stack_secrets(stack_dir)
    assert (settings.kafka.username, settings.kafka.password) == ("monitor", stored["kafka_monitor_password"])
    assert (settings.mlflow.username, settings.mlflow.password) == ("monitor", stored["mlflow_monitor_password"])
    keys = s3_user_keys(stack_dir, "monitor")
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (keys["access_key"], keys["secret_key"])
    assert local_credentials(stack_dir)["secret_key"] not in env.values()
    # Another S3's keys are the operator's: kept.
    assert stack_environment(dict(GIVEN_KEYS), identity="monitor")["AWS_ACCESS_KEY_ID"] == "given-id"


def test_as_identity_turns_the_pipelines_environment_into_the_monitors(stack_dir: StackPaths) -> None:
    """What a service's preparation does with its copy of the stack environment (stack.services.DRIFT_MONITOR)."""
    from stack.config import as_identity

    pipeline = stack_environment({"PATH": "/usr/bin"})
    monitor = as_identity(stack_dir, dict(pipeline), "monitor")
    assert monitor == stack_environment({"PATH": "/usr/bin"}, identity="monitor")
    assert as_identity(stack_dir, dict(pipeline), "pipeline") == pipeline
    with pytest.raises(ValueError, match="not an identity"):
        as_identity(stack_dir, dict(pipeline), "admin")
