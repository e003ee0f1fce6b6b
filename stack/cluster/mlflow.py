"""MLflow on PostgreSQL: the local profile's MLflow server with its backend store in the `mlflow` database."""

from __future__ import annotations

import dataclasses

from stack.config import StackPaths, postgres_url
from stack.services import MLFLOW


def _mlflow_on_postgres(paths: StackPaths, env: dict[str, str]) -> None:
    MLFLOW.prepare(paths, env)
    # Through the environment: a command line is readable by every local user.
    env["MLFLOW_BACKEND_STORE_URI"] = postgres_url(paths, "mlflow")


MLFLOW_CLUSTER = dataclasses.replace(MLFLOW, prepare=_mlflow_on_postgres, url=f"{MLFLOW.url} (on PostgreSQL)")
