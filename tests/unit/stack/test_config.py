"""stack/config.py: where the stack lives, its generated keys, and the one environment every process shares (the
endpoints are ml.settings' defaults, written down once; anything the caller sets wins)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ml.settings import Settings
from stack.config import (
    REPO_ROOT,
    StackPaths,
    local_credentials,
    stack_environment,
    stack_paths,
)

GIVEN_KEY = "given-key-value"
GIVEN_KEYS = {"AWS_ACCESS_KEY_ID": "given-id", "AWS_SECRET_ACCESS_KEY": GIVEN_KEY}


def _loopback(address: str) -> bool:
    """host:port, scheme://host:port/... or host: whether the host is 127.0.0.1 (or localhost)."""
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", address).split("/")[0]
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return host in ("127.0.0.1", "localhost")


def test_the_stack_folder_is_configurable(stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    assert stack_paths() == stack_dir
    assert stack_dir.spark_s3a_classpath_file == stack_dir.root / "jars" / "spark-s3a.classpath"
    monkeypatch.delenv("MLOPS_STACK_DIR")
    assert stack_paths().root == (REPO_ROOT / ".stack").resolve()


def test_local_credentials_are_generated_once_and_private(stack_dir: StackPaths, tmp_path: Path) -> None:
    first = local_credentials(stack_dir)
    assert stack_dir.credentials_file.stat().st_mode & 0o077 == 0, "credentials.json is readable by others"
    assert local_credentials(stack_dir) == first == json.loads(stack_dir.credentials_file.read_text())
    assert first["access_key"].startswith("mlops-") and len(first["secret_key"]) >= 30
    other = local_credentials(StackPaths(tmp_path / "other"))
    assert other["secret_key"] != first["secret_key"], "each stack folder has keys of its own"


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
