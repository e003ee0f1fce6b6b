"""stack/cluster/spark.py: the master's and workers' commands (loopback, a work folder each), the daemons'
environment (the s3a jars, no credentials), and the health probes over the master's JSON API, which is a fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stack.cluster import spark
from stack.cluster.spark import SPARK_MASTER, SPARK_WORKERS
from stack.config import SPARK_WORKER_UI_PORTS, StackPaths
from stack.process import StackError
from tests.unit.stack.cluster.support import S3_KEY, S3A_JARS, flag


def test_the_spark_master_binds_loopback(stack: StackPaths, env: dict[str, str]) -> None:
    command = SPARK_MASTER.command(stack, env)
    assert command[1] == "org.apache.spark.deploy.master.Master"
    assert (flag(command, "--host"), flag(command, "--port"), flag(command, "--webui-port")) == (
        "127.0.0.1",
        "7077",
        "8090",
    )
    assert SPARK_MASTER.ports == (7077, 8090)


def test_the_spark_workers(stack: StackPaths, env: dict[str, str]) -> None:
    work_dirs = []
    assert [worker.port for worker in SPARK_WORKERS] == list(SPARK_WORKER_UI_PORTS)
    for worker, ui_port in zip(SPARK_WORKERS, SPARK_WORKER_UI_PORTS, strict=True):
        command = worker.command(stack, env)
        assert command[1] == "org.apache.spark.deploy.worker.Worker"
        assert flag(command, "--host") == "127.0.0.1"
        assert flag(command, "--cores") == "1"
        assert flag(command, "--webui-port") == str(ui_port)
        assert command[-1] == "spark://127.0.0.1:7077"
        work_dir = Path(flag(command, "--work-dir"))
        assert work_dir.is_relative_to(stack.root) and work_dir.is_dir()
        work_dirs.append(work_dir)
    assert len(set(work_dirs)) == len(SPARK_WORKERS), "each worker has a work folder of its own"


def test_the_spark_daemons_environment(stack: StackPaths) -> None:
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": S3_KEY, "AWS_SESSION_TOKEN": "t", "KEEP": "me"}
    spark._spark_env(stack, env)
    assert not [key for key in env if key.startswith("AWS_")], "executors inherit the worker daemon's environment"
    assert env["SPARK_DIST_CLASSPATH"] == S3A_JARS
    assert env["SPARK_CONF_DIR"] == str(stack.data / "spark" / "conf")
    assert Path(env["SPARK_CONF_DIR"]).is_dir()
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["KEEP"] == "me"
    assert all(service.prepare is spark._spark_env for service in (SPARK_MASTER, *SPARK_WORKERS))


def test_the_spark_daemons_without_the_s3a_jars_say_how_to_get_them(stack: StackPaths) -> None:
    stack.spark_s3a_classpath_file.unlink()
    with pytest.raises(StackError, match=r"spark: .*make tools"):
        spark._spark_env(stack, {})


def _master_json(monkeypatch: pytest.MonkeyPatch, state: dict[str, Any] | None) -> None:
    monkeypatch.setattr(spark, "_spark_master_json", lambda: state)


def test_a_worker_is_alive_when_the_master_lists_it_alive_by_its_ui_port(monkeypatch: pytest.MonkeyPatch) -> None:
    _master_json(
        monkeypatch,
        {
            "workers": [
                {"id": "worker-1", "webuiaddress": "http://127.0.0.1:8091", "state": "ALIVE"},
                {"id": "worker-2", "webuiaddress": "http://127.0.0.1:8092", "state": "DEAD"},
                {"id": "worker-3", "webuiaddress": "http://127.0.0.1:18093", "state": "ALIVE"},
            ]
        },
    )
    assert spark._worker_alive(8091)
    assert not spark._worker_alive(8092), "a dead worker of that port"
    assert not spark._worker_alive(8093), "another port that ends in the same digits"
    assert not spark._worker_alive(809)
    _master_json(monkeypatch, {"workers": None})
    assert not spark._worker_alive(8091)
    _master_json(monkeypatch, None)
    assert not spark._worker_alive(8091), "a master that does not answer"


def test_the_spark_states_say_which_ui_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spark, "_ui_json", lambda port: None)
    with pytest.raises(StackError, match=r"Spark master's UI on 127\.0\.0\.1:8090 does not answer"):
        spark.spark_master_state()
    with pytest.raises(StackError, match=r"Spark worker's UI on 127\.0\.0\.1:8092 does not answer"):
        spark.spark_worker_state(8092)
