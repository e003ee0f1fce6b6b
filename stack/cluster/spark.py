"""Spark standalone: a master and two workers, their daemons' environment and the JSON APIs of their UIs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from stack.cluster.paths import VENV_BIN, classpath_file
from stack.config import (
    SPARK_MASTER_PORT,
    SPARK_MASTER_UI_PORT,
    SPARK_WORKER_CORES,
    SPARK_WORKER_UI_PORTS,
    StackPaths,
)
from stack.process import Service, StackError


def _spark_env(paths: StackPaths, env: dict[str, str]) -> None:
    conf_dir = paths.data / "spark" / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)  # the pip wheel has no conf/; without one Spark looks in site-packages
    env["SPARK_CONF_DIR"] = str(conf_dir)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    # The workers' installation carries the s3a connector, as a Spark image ships hadoop-aws in $SPARK_HOME/jars:
    # executors take it from the worker daemon, so no path of the submitting host is in a job's configuration.
    env["SPARK_DIST_CLASSPATH"] = classpath_file(paths.spark_s3a_classpath_file, "spark")
    # Executors and their Python workers inherit the worker daemon's environment: no credentials in it.
    for key in [key for key in env if key.startswith("AWS_")]:
        env.pop(key)


def _ui_json(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=2) as response:
            found: dict[str, Any] = json.loads(response.read())
            return found
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _spark_master_json() -> dict[str, Any] | None:
    return _ui_json(SPARK_MASTER_UI_PORT)


def spark_master_state() -> dict[str, Any]:
    """The Spark master's JSON API (workers, active and completed applications)."""
    state = _spark_master_json()
    if state is None:
        raise StackError(f"the Spark master's UI on 127.0.0.1:{SPARK_MASTER_UI_PORT} does not answer")
    return state


def spark_worker_state(ui_port: int) -> dict[str, Any]:
    """A Spark worker's JSON API (its executors, running and finished)."""
    state = _ui_json(ui_port)
    if state is None:
        raise StackError(f"the Spark worker's UI on 127.0.0.1:{ui_port} does not answer")
    return state


def _worker_alive(ui_port: int) -> bool:
    state = _spark_master_json()
    if state is None:
        return False
    return any(
        worker.get("state") == "ALIVE" and str(worker.get("webuiaddress", "")).endswith(f":{ui_port}")
        for worker in state.get("workers") or []
    )


SPARK_MASTER = Service(
    name="spark-master",
    port=SPARK_MASTER_PORT,
    extra_ports=(SPARK_MASTER_UI_PORT,),
    command=lambda paths, env: [
        str(VENV_BIN / "spark-class"),
        "org.apache.spark.deploy.master.Master",
        *("--host", "127.0.0.1", "--port", str(SPARK_MASTER_PORT), "--webui-port", str(SPARK_MASTER_UI_PORT)),
    ],
    prepare=_spark_env,
    is_healthy=lambda env: _spark_master_json() is not None,
    start_timeout_s=90,
    url=f"spark://127.0.0.1:{SPARK_MASTER_PORT} (UI http://127.0.0.1:{SPARK_MASTER_UI_PORT})",
)


def _spark_worker(number: int, ui_port: int) -> Service:
    def command(paths: StackPaths, env: dict[str, str]) -> list[str]:
        work_dir = paths.data / "spark" / f"work-{number}"
        work_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(VENV_BIN / "spark-class"),
            "org.apache.spark.deploy.worker.Worker",
            *("--host", "127.0.0.1", "--cores", str(SPARK_WORKER_CORES), "--memory", "3g"),
            *("--webui-port", str(ui_port), "--work-dir", str(work_dir)),
            f"spark://127.0.0.1:{SPARK_MASTER_PORT}",
        ]

    return Service(
        name=f"spark-worker-{number}",
        port=ui_port,
        command=command,
        prepare=_spark_env,
        is_healthy=lambda env: _worker_alive(ui_port),
        start_timeout_s=90,
        url=f"http://127.0.0.1:{ui_port} (worker {number}, {SPARK_WORKER_CORES} core)",
    )


SPARK_WORKERS = tuple(_spark_worker(number, port) for number, port in enumerate(SPARK_WORKER_UI_PORTS, start=1))
