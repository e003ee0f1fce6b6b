"""stack/cluster/mlflow.py: MLflow's database URL reaches the server through its environment, never its command line."""

from __future__ import annotations

from stack.cluster.mlflow import MLFLOW_CLUSTER
from stack.config import StackPaths, postgres_url
from stack.services import MLFLOW, _mlflow_command
from tests.unit.stack.cluster.support import flag


def test_mlflow_gets_its_database_through_its_environment(stack: StackPaths, env: dict[str, str]) -> None:
    assert "MLFLOW_BACKEND_STORE_URI" not in env, "the shared environment has no MLflow database URL"
    sqlite = _mlflow_command(stack, dict(env))
    assert flag(sqlite, "--backend-store-uri") == f"sqlite:///{stack.data / 'mlflow' / 'mlflow.db'}"

    service_env = dict(env)
    MLFLOW_CLUSTER.prepare(stack, service_env)
    assert service_env["MLFLOW_BACKEND_STORE_URI"] == postgres_url(stack, "mlflow")
    assert service_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false", "the local MLflow's preparation too"
    command = MLFLOW_CLUSTER.command(stack, service_env)
    assert "--backend-store-uri" not in command
    assert flag(command, "--host") == "127.0.0.1"
    assert (MLFLOW_CLUSTER.name, MLFLOW_CLUSTER.port, MLFLOW_CLUSTER.command) == (
        MLFLOW.name,
        MLFLOW.port,
        MLFLOW.command,
    )
