"""docker-compose.yaml's MLflow runs the local stack's basic-auth set-up (stack.mlflow_auth): the same app, the same
configuration (docker/mlflow/basic_auth.ini is auth_config_text's), the same server variables, users set up by
mlflow-init with the generated passwords, and every client logged in as its own user: Airflow's tasks as pipeline,
the prediction service as serving (read-only, and without an S3 key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stack.compose_env import SECRETS
from stack.mlflow_auth import COMPOSE_AUTH_DATABASE, PASSWORD_VARIABLES, auth_config_text, server_environment
from tests.unit.stack.test_docker_compose import (
    COMPOSE_ENV,
    REPO_ROOT,
    connection,
    environment,
    interpolate,
    load_compose,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_the_server_runs_the_basic_auth_app_with_the_stacks_configuration(compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    assert mlflow["command"][:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    env = {key: interpolate(value) for key, value in environment(mlflow).items()}
    expected = server_environment(
        Path(env["MLFLOW_AUTH_CONFIG_PATH"]),
        COMPOSE_ENV["MLOPS_MLFLOW_ADMIN_PASSWORD"],
        COMPOSE_ENV["MLOPS_MLFLOW_FLASK_SECRET_KEY"],
    )
    assert {key: env.get(key) for key in expected} == expected
    mounted = {volume.split(":")[1]: volume.split(":")[0] for volume in mlflow["volumes"]}
    config = REPO_ROOT / mounted[env["MLFLOW_AUTH_CONFIG_PATH"]]
    assert config.read_text().split("\n", 2)[2] == auth_config_text(COMPOSE_AUTH_DATABASE)
    database_folder = COMPOSE_AUTH_DATABASE.removeprefix("sqlite:///").rsplit("/", 1)[0]
    assert mounted[database_folder] == "mlflow-auth", "the users outlive the container"


def test_mlflow_init_sets_the_users_up_with_the_generated_passwords(compose: dict[str, Any]) -> None:
    init = compose["services"]["mlflow-init"]
    assert init["command"] == ["python", "-m", "stack.mlflow_auth"]
    assert init["depends_on"]["mlflow"]["condition"] == "service_healthy"
    env = {key: interpolate(value) for key, value in environment(init).items()}
    assert {name: env[name] for name in PASSWORD_VARIABLES.values()} == {
        name: COMPOSE_ENV[name] for name in PASSWORD_VARIABLES.values()
    }
    assert set(PASSWORD_VARIABLES.values()) <= set(SECRETS)


def test_every_mlflow_client_logs_in_as_its_own_user(compose: dict[str, Any]) -> None:
    mlflow_default = connection(compose, "AIRFLOW_CONN_MLFLOW_DEFAULT")
    assert (mlflow_default["login"], mlflow_default["password"]) == (
        "pipeline",
        COMPOSE_ENV["MLOPS_MLFLOW_PIPELINE_PASSWORD"],
    )
    project = {key: interpolate(value) for key, value in environment({"environment": compose["x-mlops-env"]}).items()}
    assert (project["MLFLOW_TRACKING_USERNAME"], project["MLFLOW_TRACKING_PASSWORD"]) == (
        "pipeline",
        COMPOSE_ENV["MLOPS_MLFLOW_PIPELINE_PASSWORD"],
    )
    serve = {key: interpolate(value) for key, value in environment(compose["services"]["serve"]).items()}
    assert (serve["MLFLOW_TRACKING_USERNAME"], serve["MLFLOW_TRACKING_PASSWORD"]) == (
        "serving",
        COMPOSE_ENV["MLOPS_MLFLOW_SERVING_PASSWORD"],
    )
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(serve)
    monitor = {key: interpolate(value) for key, value in environment(compose["services"]["drift-monitor"]).items()}
    assert (monitor["MLFLOW_TRACKING_USERNAME"], monitor["MLFLOW_TRACKING_PASSWORD"]) == (
        "monitor",
        COMPOSE_ENV["MLOPS_MLFLOW_MONITOR_PASSWORD"],
    )
