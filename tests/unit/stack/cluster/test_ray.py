"""stack/cluster/ray.py: the head's and worker's commands (loopback, distinct worker port ranges), the nodes'
environment (token authentication, no keys) and the state API signed with the stack's token; Ray's dashboard is a
fake."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from stack.cluster import AIRFLOW_COMPONENTS, CLUSTER_SERVICES, ray
from stack.cluster.ray import RAY_HEAD, RAY_WORKER
from stack.config import RAY_GCS_PORT, StackPaths
from tests.unit.stack.cluster.support import S3_KEY, flag


def _port_range(command: list[str]) -> range:
    return range(int(flag(command, "--min-worker-port")), int(flag(command, "--max-worker-port")) + 1)


def test_the_ray_head(stack: StackPaths, env: dict[str, str]) -> None:
    command = RAY_HEAD.command(stack, env)
    assert command[1:3] == ["start", "--head"]
    assert "--block" in command and "--disable-usage-stats" in command
    assert flag(command, "--node-ip-address") == "127.0.0.1"
    assert flag(command, "--port") == str(RAY_GCS_PORT) == "6380"
    assert (flag(command, "--dashboard-host"), flag(command, "--dashboard-port")) == ("127.0.0.1", "8265")
    assert flag(command, "--ray-client-server-port") == "10001"
    assert flag(command, "--num-cpus") == "1"
    assert Path(flag(command, "--temp-dir")).is_relative_to(stack.root)
    assert json.loads(flag(command, "--resources")) == {"head_node": 1}
    assert RAY_HEAD.ports == (6380, 8265, 10001)


def test_the_ray_worker(stack: StackPaths, env: dict[str, str]) -> None:
    command = RAY_WORKER.command(stack, env)
    assert command[1] == "start" and "--head" not in command
    assert "--address=127.0.0.1:6380" in command
    assert "--block" in command
    assert flag(command, "--node-ip-address") == "127.0.0.1"
    assert flag(command, "--num-cpus") == "1"
    assert json.loads(flag(command, "--resources")) == {"worker_node": 1}
    assert int(flag(command, "--dashboard-agent-listen-port")) == RAY_WORKER.port


def test_the_ray_nodes_worker_port_ranges_are_distinct_and_free_of_service_ports(
    stack: StackPaths, env: dict[str, str]
) -> None:
    head, worker = _port_range(RAY_HEAD.command(stack, env)), _port_range(RAY_WORKER.command(stack, env))
    assert len(head) > 100 and len(worker) > 100
    assert not set(head) & set(worker)
    claimed = {port for service in (*CLUSTER_SERVICES, *AIRFLOW_COMPONENTS) for port in service.ports}
    assert not claimed & (set(head) | set(worker)), "a Ray worker would take a service's port"


def test_the_ray_nodes_environment(stack: StackPaths) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": S3_KEY,
        "RAY_ADDRESS": "127.0.0.1:6380",
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": "/repo",
        "KEEP": "me",
    }
    ray._ray_env(stack, env)
    assert not [key for key in env if key.startswith("AWS_")]
    assert "RAY_ADDRESS" not in env, "`ray start` would take it for the cluster to join"
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(stack.ray_token_file)
    assert env["PYTHONPATH"] == "", "Ray's workers get the code from each job's runtime_env"
    assert env["KEEP"] == "me"
    assert int(env["RAY_gcs_actor_table_min_duration_ms"]) >= 30 * 60 * 1000, "a run's trials outlive its tune task"
    assert RAY_HEAD.prepare is ray._ray_env and RAY_WORKER.prepare is ray._ray_env


class _Response:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self) -> bytes:
        return self.body


def _ray_dashboard(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[urllib.request.Request]:
    requests: list[urllib.request.Request] = []

    def urlopen(request: urllib.request.Request, timeout: float = 0) -> _Response:
        requests.append(request)
        if isinstance(answer, BaseException):
            raise answer
        return _Response(json.dumps(answer).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requests


NODES = {"data": {"result": {"result": [{"node_id": "a", "state": "ALIVE"}, {"node_id": "b", "state": "DEAD"}]}}}


def test_ray_state_asks_the_dashboard_with_the_stacks_token(stack: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.ray_token_file.parent.mkdir(parents=True)
    stack.ray_token_file.write_text("f" * 64 + "\n")
    requests = _ray_dashboard(monkeypatch, NODES)
    assert ray.ray_state(stack, "nodes") == NODES["data"]["result"]["result"]
    [request] = requests
    assert request.full_url == "http://127.0.0.1:8265/api/v0/nodes?limit=10000&detail=false"
    assert request.get_header("Authorization") == "Bearer " + "f" * 64
    ray.ray_state(stack, "actors", detail=True)
    assert requests[-1].full_url.endswith("/api/v0/actors?limit=10000&detail=true")


def test_ray_state_of_an_answer_without_results_is_empty(stack: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.ray_token_file.parent.mkdir(parents=True)
    stack.ray_token_file.write_text("token")
    _ray_dashboard(monkeypatch, {"result": False, "msg": "no"})
    assert ray.ray_state(stack, "nodes") == []


def test_the_ray_nodes_health_counts_alive_nodes(stack: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.ray_token_file.parent.mkdir(parents=True)
    stack.ray_token_file.write_text("token")
    env = {"MLOPS_STACK_DIR": str(stack.root)}
    _ray_dashboard(monkeypatch, NODES)
    assert ray._alive_ray_nodes(env) == 1
    assert RAY_HEAD.is_healthy(env) and not RAY_WORKER.is_healthy(env), "the worker waits for a second live node"
    _ray_dashboard(monkeypatch, urllib.error.URLError("connection refused"))
    assert ray._alive_ray_nodes(env) == 0 and not RAY_HEAD.is_healthy(env)
