"""Ray: a head and a worker node with token authentication, their environment and the cluster's state API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from stack.cluster.paths import VENV_BIN, env_paths
from stack.config import RAY_CLIENT_PORT, RAY_DASHBOARD_PORT, RAY_GCS_PORT, StackPaths
from stack.process import Service

# Ray's GCS forgets a finished job's actors 5 minutes after the job ends; a run's trials stay visible in the dashboard
# and the state API for an hour instead (a run's later tasks, and whoever inspects it, come after its tune task).
FINISHED_JOB_ACTORS_KEPT_MS = 60 * 60 * 1000


def _ray_env(paths: StackPaths, env: dict[str, str]) -> None:
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(paths.ray_token_file)
    # Ray's workers get the code and the S3 keys from each job's runtime_env (ml.tune.runtime), not from the nodes.
    for key in [key for key in env if key.startswith("AWS_") or key == "RAY_ADDRESS"]:
        env.pop(key)
    env["PYTHONPATH"] = ""
    env["OMP_NUM_THREADS"] = "1"
    env["RAY_gcs_actor_table_min_duration_ms"] = str(FINISHED_JOB_ACTORS_KEPT_MS)


def _ray_node_command(paths: StackPaths, head: bool) -> list[str]:
    common = ["--block", "--num-cpus", "1", "--memory", str(6 * 10**9), "--object-store-memory", str(10**9)]
    common += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    if head:
        ports = ["--port", str(RAY_GCS_PORT), "--min-worker-port", "10002", "--max-worker-port", "10999"]
        dashboard = ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(RAY_DASHBOARD_PORT)]
        client = ["--ray-client-server-port", str(RAY_CLIENT_PORT)]
        client += ["--temp-dir", str(paths.data / "ray")]  # the worker node takes it from the head
        return [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            *common,
            *ports,
            *dashboard,
            *client,
            "--resources",
            json.dumps({"head_node": 1}),
        ]
    ports = ["--min-worker-port", "11000", "--max-worker-port", "11999", "--dashboard-agent-listen-port", "52366"]
    return [
        str(VENV_BIN / "ray"),
        "start",
        f"--address=127.0.0.1:{RAY_GCS_PORT}",
        *common,
        *ports,
        "--resources",
        json.dumps({"worker_node": 1}),
    ]


def ray_state(paths: StackPaths, resource: str, detail: bool = False) -> list[dict[str, Any]]:
    """One list of the Ray cluster's state API (`nodes`, `actors`, `tasks`, ...), signed with the stack's token."""
    token = paths.ray_token_file.read_text().strip()
    query = f"limit=10000&detail={str(detail).lower()}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{RAY_DASHBOARD_PORT}/api/v0/{resource}?{query}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        body = json.loads(response.read())
    return list(body.get("data", {}).get("result", {}).get("result", []))


def _alive_ray_nodes(env: dict[str, str]) -> int:
    try:
        return sum(1 for node in ray_state(env_paths(env), "nodes") if node.get("state") == "ALIVE")
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return 0


RAY_HEAD = Service(
    name="ray-head",
    port=RAY_GCS_PORT,
    extra_ports=(RAY_DASHBOARD_PORT, RAY_CLIENT_PORT),
    command=lambda paths, env: _ray_node_command(paths, head=True),
    prepare=_ray_env,
    is_healthy=lambda env: _alive_ray_nodes(env) >= 1,
    start_timeout_s=120,
    url=f"127.0.0.1:{RAY_GCS_PORT} (dashboard http://127.0.0.1:{RAY_DASHBOARD_PORT}, client ray://127.0.0.1:"
    f"{RAY_CLIENT_PORT}; token in .stack/ray/auth_token)",
)

RAY_WORKER = Service(
    name="ray-worker",
    port=52366,
    command=lambda paths, env: _ray_node_command(paths, head=False),
    prepare=_ray_env,
    is_healthy=lambda env: _alive_ray_nodes(env) >= 2,
    start_timeout_s=120,
    url="a second Ray node (1 CPU)",
)
