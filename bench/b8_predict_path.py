"""B8: the prediction path: FeatureSpec.transform column by column / row by row; /predict / a bare endpoint.

(a) Transform. `FeatureSpec.transform` (ml.features.columnar: numpy, `normalise_category` once per distinct value)
against the row-wise rule it replaced (tests/support/rowwise_transform.py: `to_float` and `normalise_category` per
value), on one spec and the same rows: B9's shape of data (26 numeric columns, 1% null; 4 categorical columns of 10
kept levels, 2 unseen levels sent too), rows as a client sends them (JSON-parsed floats, None, strings). Inputs of
1 row (what most requests carry) and `--rows` rows (1000: the service's max_rows). Both sides are checked to give the
same bytes, then timed in alternating rounds (ABBA), each a loop of ~`--seconds`; medians of rows/s. `ratio` = columnar
/ row-wise rows/s at `--rows` rows; `single_row_ratio` the same at 1 row.

(b) The request, in process: what /predict runs per request (`parse_body` + `validate_rows` + transform +
`ml.models.predict`, a 2x64 MLP as B2's searches train) with either transform, to show the transform's share of it.

(c) Through gunicorn (skipped by `--transform-only`): `python -m ml serve`'s settings (1 worker, 4 threads) serving
`ml.serve.app.build_app` with a model written to a temporary folder and injected (no MLflow, no Kafka, watcher off),
once with each transform, and the same gunicorn settings serving a bare Flask app whose /predict answers a constant.
Each server listens on a free port of 127.0.0.1 picked here. 8 client processes, a connection per request (with
keep-alive, gthread starved the clients beyond its threads), send single-row requests for `--http-seconds` per phase
after 1 s of warm-up, phases alternating between the servers;
requests/s and p50/p99 latency. `http_ratio` = /predict requests/s (columnar) / the bare endpoint's.
No stack needed: nothing here talks to S3, MLflow or Kafka.

    .venv/bin/python -m bench.b8_predict_path --transform-only     # (a) and (b): a minute
    .venv/bin/python -m bench.b8_predict_path                      # and (c)
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, argument_parser, benchmark_settings, ensure_repo_on_path, ratio, report
from ml.features import CategoricalFeature, FeatureSpec, NumericFeature
from ml.settings import Settings

ensure_repo_on_path()  # tests.support (the row-wise oracle) lives at the repository root

NUMERIC, CATEGORICAL, LEVELS = 26, 4, 10
CLIENTS = 8
MODEL_DIR_VARIABLE = "MLOPS_B8_MODEL_DIR"  # the gunicorn app factory's model folder (checkpoint + feature_spec.json)
TRANSFORM_VARIABLE = "MLOPS_B8_TRANSFORM"  # "rowwise": serve with the row-wise transform
# Ports this benchmark must not take (the shared stack's and Ray's), should the kernel offer one.
AVOID = {5000, 8000, 8080, 6379, 8265, 10001, 52365, 52366, *range(9000, 9095), *range(10002, 20000)}


def bench_spec() -> FeatureSpec:
    """A spec shaped like B9's data."""
    return FeatureSpec(
        dataset="b8",
        snapshot_id="local",
        task="classification",
        target="target",
        numeric=[NumericFeature(f"x{i}", fill=0.1 * i, mean=0.1 * i, std=1.0 + 0.05 * i) for i in range(NUMERIC)],
        categorical=[CategoricalFeature(f"c{i}", [f"level_{j}" for j in range(LEVELS)]) for i in range(CATEGORICAL)],
        classes=["a", "b", "c"],
    )


def client_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Rows as JSON parsing gives them: floats, 1% None, category strings (2 of 12 levels unseen in training)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        row: dict[str, Any] = {
            f"x{i}": None if rng.random() < 0.01 else rng.gauss(0.1 * i, 1.0) for i in range(NUMERIC)
        }
        row.update({f"c{i}": f"level_{rng.randrange(LEVELS + 2)}" for i in range(CATEGORICAL)})
        rows.append(row)
    return rows


def rows_per_second(function: Callable[[], Any], rows: int, seconds: float) -> float:
    """Call `function` in a loop for about `seconds` (at least 3 calls); rows/s."""
    calls, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds or calls < 3:
        function()
        calls += 1
    return calls * rows / elapsed


def alternating(sides: dict[str, Callable[[], Any]], rows: int, rounds: int, seconds: float) -> dict[str, list[float]]:
    """rows/s of each side, rounds in ABBA order (a drift of the machine's load weighs on both sides alike)."""
    names = list(sides)
    measured: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            measured[name].append(rows_per_second(sides[name], rows, seconds))
    return measured


def columnar_vs_rowwise(
    columnar: Callable[[], Any], rowwise: Callable[[], Any], rows: int, rounds: int, seconds: float
) -> tuple[float, float, dict[str, list[float]]]:
    """Median rows/s of the two sides, alternating rounds, and every round's figure."""
    measured = alternating({"columnar": columnar, "rowwise": rowwise}, rows, rounds, seconds)
    return statistics.median(measured["columnar"]), statistics.median(measured["rowwise"]), measured


def transform_throughput(spec: FeatureSpec, sizes: list[int], rounds: int, seconds: float) -> list[dict[str, Any]]:
    from tests.support.rowwise_transform import rowwise_transform

    results = []
    for size in sizes:
        records = client_rows(size, seed=size)
        if spec.transform(records).tobytes() != rowwise_transform(spec, records).tobytes():
            raise AssertionError(f"{size} rows: the columnar transform's bytes differ from the row-wise rule's")
        columnar, rowwise, measured = columnar_vs_rowwise(
            partial(spec.transform, records), partial(rowwise_transform, spec, records), size, rounds, seconds
        )
        results.append(
            {
                "rows": size,
                "columnar_rows_per_s": round(columnar),
                "rowwise_rows_per_s": round(rowwise),
                "ratio": ratio(columnar, rowwise),
                "columnar_us_per_call": round(size / columnar * 1e6, 1),
                "rowwise_us_per_call": round(size / rowwise * 1e6, 1),
                "rounds_rows_per_s": {name: [round(x) for x in values] for name, values in measured.items()},
            }
        )
    return results


def write_model(spec: FeatureSpec, folder: Path) -> Path:
    """A 2x64 MLP (untrained: the weights do not change the work) and the spec, as a registered version holds them."""
    from ml.models import ModelConfig, build_model, save_checkpoint

    config = ModelConfig(len(spec.feature_columns), spec.num_outputs, spec.task, num_layers=2, hidden_size=64)
    save_checkpoint(build_model(config), config, folder / "checkpoint")
    (folder / "feature_spec.json").write_text(spec.to_json())
    return folder


def request_path(
    spec: FeatureSpec, folder: Path, sizes: list[int], rounds: int, seconds: float
) -> list[dict[str, Any]]:
    """(b): what /predict does per request, in process, with either transform."""
    from ml.predictor import TabularPredictor
    from ml.serve.validation import parse_body, validate_rows
    from tests.support.rowwise_transform import rowwise_transform

    predictor = TabularPredictor.from_files(folder / "checkpoint", folder / "feature_spec.json")
    results = []
    for size in sizes:
        body = json.dumps({"rows": client_rows(size, seed=size + 1)}).encode()

        def handle(transform: Callable[[Any], Any], body: bytes = body, size: int = size) -> Any:
            rows = validate_rows(parse_body(body), spec, max(size, 1000))
            return predictor.predict_matrix(transform(rows))

        columnar, rowwise, _ = columnar_vs_rowwise(
            partial(handle, spec.transform), partial(handle, partial(rowwise_transform, spec)), size, rounds, seconds
        )
        results.append(
            {
                "rows": size,
                "columnar_us_per_request": round(size / columnar * 1e6, 1),
                "rowwise_us_per_request": round(size / rowwise * 1e6, 1),
                "ratio": ratio(columnar, rowwise),
            }
        )
    return results


# --- (c) gunicorn ------------------------------------------------------------------------------------------------


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
    factory: str, port: int, env: dict[str, str], module: str = "bench.b8_predict_path"
) -> subprocess.Popen[bytes]:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    command = [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"]
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


def client(port: int, bodies: list[bytes], seconds: float, ready: Any, go: Any, start: Any, out: Any) -> None:
    """One client: single-row requests, one connection each (gunicorn's gthread worker starved keep-alive clients
    beyond its 4 threads: a bare phase fell to ~15 requests/s with 30-s stalls), from the start the parent sets once
    every client is ready: 1 s of warm-up, then `seconds` measured. Latency includes the connection's set-up."""
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
                    headers={"Content-Type": "application/json", "Connection": "close"},
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


def http_phase(port: int, bodies: list[bytes], seconds: float) -> dict[str, Any]:
    # fork: the clients start at once, without importing anything (they use sockets only, never torch).
    context = multiprocessing.get_context("fork")
    ready, out, go, start = context.Queue(), context.Queue(), context.Event(), context.Value("d", 0.0)
    arguments = (port, bodies, seconds, ready, go, start, out)
    clients = [context.Process(target=client, args=arguments) for _ in range(CLIENTS)]
    for process in clients:
        process.start()
    for _ in clients:
        ready.get(timeout=60)
    start.value = time.monotonic()
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in clients]
    for process in clients:
        process.join()
    latencies = sorted(x for found, _ in results for x in found)
    return {
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1e3, 2) if latencies else None,
        "failures": sum(failed for _, failed in results),
    }


def http_throughput(folder: Path, rounds: int, seconds: float) -> dict[str, Any]:
    bodies = [json.dumps({"rows": [row]}).encode() for row in client_rows(64, seed=7)]
    servers = {
        "predict": ("served_app()", {MODEL_DIR_VARIABLE: str(folder)}),
        "predict_rowwise": ("served_app()", {MODEL_DIR_VARIABLE: str(folder), TRANSFORM_VARIABLE: "rowwise"}),
        "bare": ("bare_app()", {}),
    }
    ports = {name: free_port() for name in servers}
    running = {}
    try:
        for name, (factory, env) in servers.items():
            running[name] = start_server(factory, ports[name], env)
        phases: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for round_ in range(rounds):
            for name in list(servers) if round_ % 2 == 0 else list(servers)[::-1]:
                phases[name].append(http_phase(ports[name], bodies, seconds))
    finally:
        for server in running.values():
            server.terminate()
            server.wait(timeout=30)
    medians = {name: statistics.median(p["requests_per_s"] for p in runs) for name, runs in phases.items()}
    return {
        "method": f"gunicorn 1 worker x 4 threads per server, {CLIENTS} client processes on 127.0.0.1, "
        "a connection per request, "
        f"single-row requests, {seconds:g} s per phase after 1 s of warm-up, phases alternating; medians",
        "requests_per_s": {name: round(value, 1) for name, value in medians.items()},
        "predict_vs_bare": ratio(medians["predict"], medians["bare"]),
        "columnar_vs_rowwise": ratio(medians["predict"], medians["predict_rowwise"]),
        "phases": phases,
    }


def main(argv: list[str] | None, settings: Settings) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--rows", type=int, default=1000, help="rows of the large input (the service's max_rows)")
    parser.add_argument("--rounds", type=int, default=6, help="(a, b) alternating rounds per size")
    parser.add_argument("--seconds", type=float, default=1.0, help="(a, b) seconds per round and side")
    parser.add_argument("--transform-only", action="store_true", help="skip (c), the gunicorn servers")
    parser.add_argument("--http-rounds", type=int, default=2, help="(c) phases per server")
    parser.add_argument("--http-seconds", type=float, default=10.0, help="(c) seconds measured per phase")
    args = parser.parse_args(argv)
    del settings  # nothing here uses the stack

    spec = bench_spec()
    sizes = [1, args.rows]
    transform = transform_throughput(spec, sizes, args.rounds, args.seconds)
    with tempfile.TemporaryDirectory(prefix="b8-model-") as temporary:
        folder = write_model(spec, Path(temporary))
        in_process = request_path(spec, folder, sizes, args.rounds, args.seconds)
        served = None if args.transform_only else http_throughput(folder, args.http_rounds, args.http_seconds)
    large, single = transform[1], transform[0]
    result = {
        "name": "B8 FeatureSpec.transform rows/s, column by column / row by row (same spec, same rows); "
        "/predict requests/s through gunicorn / a bare Flask endpoint",
        "ratio": large["ratio"],
        "target": f">= 3 at {args.rows} rows",
        "single_row_ratio": single["ratio"],
        "single_row_target": ">= 1.0 (no slower for the 1-row requests most clients send)",
        "http_ratio": served["predict_vs_bare"] if served else None,
        "spec": f"{NUMERIC} numeric + {CATEGORICAL} categorical columns ({LEVELS} levels + OTHER): "
        f"{len(spec.feature_columns)} model inputs",
        "transform": transform,
        "request_in_process": {
            "method": "parse_body + validate_rows + transform + ml.models.predict (2x64 MLP) per request, in process, "
            "alternating rounds, medians",
            "runs": in_process,
        },
        "http": served,
        "notes": [
            "Both transforms are checked to give the same bytes on the timed rows before timing.",
            "The columnar transform remembers up to 10k raw category strings per feature across calls: after the "
            "first call, a known category costs a dictionary look-up; the row-wise rule calls normalise_category "
            "for every value.",
            "(c) skipped: --transform-only"
            if served is None
            else "(c) ran on this machine's loopback, clients and "
            "servers sharing its cores: requests/s are this machine's, the ratio is the comparison.",
        ],
    }
    return report("b8_predict_path", result, packages=("numpy", "pyarrow", "flask", "gunicorn", "torch"))


if __name__ == "__main__":
    main(sys.argv[1:], benchmark_settings())
