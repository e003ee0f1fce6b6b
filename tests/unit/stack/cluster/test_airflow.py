"""stack/cluster/airflow.py: Airflow's components, their commands and their environment (PostgreSQL, no S3 keys)."""

from __future__ import annotations

from pathlib import Path

from stack.cluster.airflow import AIRFLOW_COMPONENTS
from stack.config import StackPaths, postgres_url
from tests.unit.stack.cluster.support import S3_KEY


def test_airflows_components(stack: StackPaths, env: dict[str, str]) -> None:
    commands = {service.name: service.command(stack, env) for service in AIRFLOW_COMPONENTS}
    assert {name: command[1:] for name, command in commands.items()} == {
        "airflow-api-server": ["api-server", "--host", "127.0.0.1", "--port", "8080"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-triggerer": ["triggerer"],
    }
    assert all(Path(command[0]).name == "airflow" for command in commands.values())
    for service in AIRFLOW_COMPONENTS:  # the endpoint and key variables are unset for each, as for standalone
        service_env = dict(env)
        service.prepare(stack, service_env)
        assert S3_KEY not in service_env.values() and "RAY_AUTH_TOKEN_PATH" not in service_env, service.name
        assert service_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == postgres_url(stack, "airflow")
