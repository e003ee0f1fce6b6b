"""stack/cluster/__init__.py: no cluster service gets a secret on its command line, and the package re-exports what
the rest of the repository imports from it (their start order: tests/unit/stack/test_profiles.py)."""

from __future__ import annotations

import pytest

from stack import cluster
from stack.cluster import airflow, metastore, postgres, ray, spark
from stack.config import StackPaths, cluster_secrets
from tests.unit.stack.cluster.support import S3_KEY

# Preparations that only write into the stack folder or change the environment (PostgreSQL's runs initdb, Kafka's its
# storage tool, the metastore's connects to PostgreSQL: their own tests fake those).
HARMLESS_PREPARE = {"s3", "mlflow", "spark-master", "spark-worker-1", "spark-worker-2", "ray-head", "ray-worker"}


def test_no_secret_on_a_cluster_service_command_line(
    stack: StackPaths, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {**cluster_secrets(stack), "s3": S3_KEY}
    for service in (*cluster.CLUSTER_SERVICES, *cluster.AIRFLOW_COMPONENTS):
        service_env = dict(env)
        if service.name in HARMLESS_PREPARE or service.name.startswith("airflow"):
            service.prepare(stack, service_env)
        command = " ".join(service.command(stack, service_env))
        leaked = [name for name, value in secrets.items() if value in command]
        assert not leaked, f"{service.name} gets {leaked} in argv: {command}"


def test_the_package_re_exports_what_its_callers_import() -> None:
    owners = {
        airflow: ["AIRFLOW_COMPONENTS"],
        metastore: ["METASTORE"],
        postgres: ["DATABASES", "POSTGRES", "create_databases", "postgres_connect"],
        ray: ["RAY_HEAD", "RAY_WORKER", "ray_state"],
        spark: ["SPARK_MASTER", "SPARK_WORKERS", "spark_master_state", "spark_worker_state"],
    }
    for module, names in owners.items():
        for name in names:
            assert getattr(cluster, name) is getattr(module, name), name
    assert sorted(cluster.__all__) == sorted(
        ["CLUSTER_SERVICES", *(name for names in owners.values() for name in names)]
    )
