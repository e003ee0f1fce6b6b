"""The stack's two profiles as sets of services: what `up` starts, what `up --airflow` adds, and what differs."""

from __future__ import annotations

from dataclasses import dataclass

from stack.process import Service


@dataclass(frozen=True)
class Profile:
    name: str
    services: tuple[Service, ...]  # started by `up`, in this order
    airflow: tuple[Service, ...]  # added by `up --airflow`
    # Concurrent Spark jobs that may write Hive tables: an embedded Derby metastore admits one JVM at a time; a
    # networked metastore admits many (the DAG's `spark_metastore` pool).
    metastore_writers: int

    @property
    def all_services(self) -> tuple[Service, ...]:
        return (*self.services, *self.airflow)


def profile_named(name: str) -> Profile:
    from stack.cluster import AIRFLOW_COMPONENTS, CLUSTER_SERVICES
    from stack.services import AIRFLOW, SERVICES

    if name == "local":
        return Profile("local", SERVICES, (AIRFLOW,), metastore_writers=1)
    if name == "cluster":
        return Profile("cluster", CLUSTER_SERVICES, AIRFLOW_COMPONENTS, metastore_writers=8)
    raise ValueError(f"unknown stack profile {name!r}")


def every_service() -> tuple[Service, ...]:
    """Each service of either profile once (by name), in start order: what `down` may have to stop (in reverse, so
    the cluster's services come first here: PostgreSQL must outlive MLflow, which shares a name with the local one)."""
    seen: dict[str, Service] = {}
    for name in ("cluster", "local"):
        for service in profile_named(name).all_services:
            seen.setdefault(service.name, service)
    return tuple(seen.values())
