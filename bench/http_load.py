"""gunicorn servers on free ports of 127.0.0.1 and concurrent client processes: what B8 and B10 measure /predict with.

`start_server` runs a factory of this module (or another's) under gunicorn, by default with `python -m ml serve`'s
settings (1 worker, 4 threads); `running_servers` starts several and stops them after the block; `http_phase` sends
POST /predict from `CLIENTS` forked client processes for a number of seconds and returns requests/s and p50/p99
latency.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT
from ml.serve.cli import DEFAULT_THREADS, DEFAULT_WORKERS

CLIENTS = 8
Shape = tuple[int, int]  # gunicorn's (workers, threads per worker)
SERVICE_SHAPE: Shape = (DEFAULT_WORKERS, DEFAULT_THREADS)  # `python -m ml serve`'s
MODEL_DIR_VARIABLE = "MLOPS_B8_MODEL_DIR"  # the gunicorn app factory's model folder (checkpoint + feature_spec.json)
TRANSFORM_VARIABLE = "MLOPS_B8_TRANSFORM"  # "rowwise": serve with the row-wise transform
# Ports this benchmark must not take (the shared stack's and Ray's), should the kernel offer one.
AVOID = {5000, 8000, 8080, 6379, 8265, 10001, 52365, 52366, *range(9000, 9095), *range(10002, 20000)}


def served_app() -> Any:
    """gunicorn's factory for /predict: the model in $MLOPS_B8_MODEL_DIR injected, no registry, no Kafka (no watcher,
    no metrics messages)."""
    from ml.predictor import LoadedModel, TabularPredictor
    from ml.serve.app import ServeSettings, build_app
    from ml.settings import KafkaSettings, MlflowSettings

    folder = Path(os.environ[MODEL_DIR_VARIABLE])
    predictor = TabularPredictor.from_files(folder / "checkpoint", folder / "feature_spec.json")
    if os.environ.get(TRANSFORM_VARIABLE) == "rowwise":
        from tests.support.rowwise_transform import rowwise_transform

        predictor.spec.__class__.transform = rowwise_transform  # type: ignore[method-assign,assignment]  # here only
    return build_app(
        ServeSettings("b8-local", metrics_enabled=False),  # /predict itself: publishing's cost is B10's to measure
        mlflow=MlflowSettings("http://mlflow.invalid"),  # never called: the model is injected, no watcher
        kafka=KafkaSettings("kafka.invalid:9092"),
        loaded=LoadedModel("b8-local", "1", predictor, {"gate.decision": "first_model"}),
        watch_promotions=False,
    )


def bare_app() -> Any:
    """gunicorn's factory for the baseline: Flask answering a constant."""
    from flask import Flask, jsonify

    app = Flask(__name__)
    answer = {"model": "bare", "version": "1", "predictions": ["a"], "probabilities": [[0.2, 0.3, 0.5]]}

    @app.post("/predict")
    def predict() -> Any:
        return jsonify(answer)

    @app.get("/health")
    def health() -> Any:
        return jsonify({"status": "ok"})

    return app


def free_port() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in AVOID:
            return port
    raise RuntimeError("no free port outside the stack's and Ray's")


def start_server(
    factory: str, port: int, env: dict[str, str], module: str = "bench.http_load", shape: Shape = SERVICE_SHAPE
) -> subprocess.Popen[bytes]:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    workers, threads = shape
    command = [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads)]
    command += ["--log-level", "warning", f"{module}:{factory}"]
    server = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn {factory} exited with {server.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError(f"gunicorn {factory} did not answer on port {port}")


@contextmanager
def running_servers(
    servers: Mapping[str, tuple[str, dict[str, str]]], shape: Shape = SERVICE_SHAPE
) -> Iterator[dict[str, int]]:
    """Start each named (factory, environment) server on a free port, `shape` = (workers, threads); yield the ports by
    name; stop them all after."""
    ports = {name: free_port() for name in servers}
    running = []
    try:
        for name, (factory, env) in servers.items():
            running.append(start_server(factory, ports[name], env, shape=shape))
        yield ports
    finally:
        for server in running:
            server.terminate()
            server.wait(timeout=30)


def client(
    port: int, bodies: list[bytes], seconds: float, ready: Any, go: Any, start: Any, out: Any, content_type: str
) -> None:
    """One client: POST /predict with `bodies` (of `content_type`) in turn, one connection each (gunicorn's gthread
    worker starved keep-alive clients beyond its threads: a bare phase fell to ~15 requests/s with 30-s stalls), from
    the start the parent sets once every client is ready: 1 s of warm-up, then `seconds` measured. Latency includes
    the connection's set-up."""
    latencies: list[float] = []
    failures = index = 0
    try:
        ready.put(True)
        go.wait()
        measure_from = start.value + 1.0
        end = measure_from + seconds
        while (began := time.monotonic()) < end:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request(
                    "POST",
                    "/predict",
                    body=bodies[index % len(bodies)],
                    headers={"Content-Type": content_type, "Connection": "close"},
                )
                response = connection.getresponse()
                response.read()
            finally:
                connection.close()
            index += 1
            finished = time.monotonic()
            failures += response.status != 200
            if began >= measure_from and finished <= end:
                latencies.append(finished - began)
    finally:
        out.put((latencies, failures))


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and its living descendants have used so far, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            # After the command's closing parenthesis: state is field 3, utime and stime fields 14 and 15.
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
    return total


def http_phase(
    port: int,
    bodies: list[bytes],
    seconds: float,
    server_pid: int | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """One phase; with `server_pid`, also the server's CPU per answered request over the measured seconds (its
    gunicorn master and workers: what /predict costs the machine apart from the clients)."""
    # fork: the clients start at once, without importing anything (they use sockets only, never torch).
    context = multiprocessing.get_context("fork")
    ready, out, go, start = context.Queue(), context.Queue(), context.Event(), context.Value("d", 0.0)
    arguments = (port, bodies, seconds, ready, go, start, out, content_type)
    clients = [context.Process(target=client, args=arguments) for _ in range(CLIENTS)]
    for process in clients:
        process.start()
    for _ in clients:
        ready.get(timeout=60)
    start.value = time.monotonic()
    go.set()
    server_cpu_s = None
    if server_pid is not None:
        time.sleep(max(0.0, start.value + 1.0 - time.monotonic()))  # the clients' warm-up
        before = process_tree_cpu_s(server_pid)
        time.sleep(max(0.0, start.value + 1.0 + seconds - time.monotonic()))
        server_cpu_s = process_tree_cpu_s(server_pid) - before
    results = [out.get(timeout=seconds + 120) for _ in clients]
    for process in clients:
        process.join()
    latencies = sorted(x for found, _ in results for x in found)
    return {
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1e3, 2) if latencies else None,
        "failures": sum(failed for _, failed in results),
        **(
            {"server_cpu_ms_per_request": round(server_cpu_s * 1e3 / len(latencies), 3) if latencies else None}
            if server_cpu_s is not None
            else {}
        ),
    }
