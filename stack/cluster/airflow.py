"""Airflow as its separate components (api-server, scheduler, dag-processor, triggerer): the local profile's Airflow
service, each with its own command; the cluster profile's environment (stack.config) puts them on PostgreSQL."""

from __future__ import annotations

import dataclasses

from stack.cluster.paths import VENV_BIN
from stack.process import Service, http_ok
from stack.services import AIRFLOW


def _airflow_component(command: str, *, last: bool = False) -> Service:
    # No port of its own; the last one started waits until the api-server reports every component healthy.
    return dataclasses.replace(
        AIRFLOW,
        name=f"airflow-{command}",
        port=0,
        command=lambda paths, env: [str(VENV_BIN / "airflow"), command],
        is_healthy=AIRFLOW.is_healthy if last else (lambda env: True),
        url=f"airflow {command}",
    )


def _airflow_api_healthy(env: dict[str, str]) -> bool:
    return http_ok("http://127.0.0.1:8080/api/v2/version")


AIRFLOW_API_SERVER = dataclasses.replace(
    AIRFLOW,
    name="airflow-api-server",
    command=lambda paths, env: [str(VENV_BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", "8080"],
    is_healthy=_airflow_api_healthy,
)
AIRFLOW_COMPONENTS: tuple[Service, ...] = (
    AIRFLOW_API_SERVER,
    _airflow_component("scheduler"),
    _airflow_component("dag-processor"),
    _airflow_component("triggerer", last=True),
)
