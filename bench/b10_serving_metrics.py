"""B10: /predict throughput with run-time metrics published to Kafka / with publishing off, broker up and broker down.

Each /predict request of the prediction service puts one message on `mlops.serving.metrics.v1` through librdkafka's
bounded queue, one producer per worker (ml.serve.telemetry, ml.events.publisher), so that a request never waits
for Kafka. This measures what that costs a request: B8's server (gunicorn, by default `python -m ml serve`'s settings:
1 worker, 4 threads; `--shape 2x1` for another) with B8's model and single-row requests from 8 client processes on
127.0.0.1, a connection per request, run three times, side by side in one run, phases alternating:

  off    metrics publishing off (MLOPS_SERVE_METRICS=0): the baseline
  up     publishing to the stack's broker (the settings' Kafka login), payload sampling off (the default)
  down   publishing to a broker that is down (a port of 127.0.0.1 nothing listens on): the queue fills and drops

`ratio` = up / off requests/s (target >= 0.95); `broker_down_ratio` = down / off (target >= 0.95 too: a dead broker
must not slow requests). The messages' delivery is counted from each server's /metrics at the end (delivered,
dropped), so a run in which nothing reached the broker does not pass for a cheap one.

    python -m stack run -- .venv/bin/python -m bench.b10_serving_metrics     # needs the stack's Kafka
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.b8_predict_path import bench_spec, client_rows, parse_shape, write_model
from bench.common import argument_parser, benchmark_settings, ratio, report
from bench.http_load import CLIENTS, MODEL_DIR_VARIABLE, SERVICE_SHAPE, free_port, http_phase, start_server
from ml.settings import Settings

KAFKA_VARIABLE = "MLOPS_B10_KAFKA"  # "off", "up" (the benchmark's settings) or "down" (a closed port)
DOWN_PORT_VARIABLE = "MLOPS_B10_DOWN_PORT"


def served_app() -> Any:
    """gunicorn's factory: B8's model injected, metrics publishing as $MLOPS_B10_KAFKA says, no promotion watcher."""
    from ml.predictor import LoadedModel, TabularPredictor
    from ml.serve.app import ServeSettings, build_app
    from ml.settings import KafkaSettings, MlflowSettings

    folder = Path(os.environ[MODEL_DIR_VARIABLE])
    predictor = TabularPredictor.from_files(folder / "checkpoint", folder / "feature_spec.json")
    mode = os.environ[KAFKA_VARIABLE]
    if mode == "up":
        kafka = benchmark_settings().kafka  # the gunicorn worker is this benchmark's entry point
    else:
        kafka = KafkaSettings(f"127.0.0.1:{os.environ.get(DOWN_PORT_VARIABLE, '9')}")
    return build_app(
        ServeSettings("b10-local", metrics_enabled=mode != "off"),
        mlflow=MlflowSettings("http://mlflow.invalid"),  # never called: the model is injected, no watcher
        kafka=kafka,
        loaded=LoadedModel("b10-local", "1", predictor, {"gate.decision": "first_model"}),
        watch_promotions=False,
    )


def kafka_counts(port: int) -> dict[str, float]:
    """mlops_serve_kafka_events_total by outcome, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlops_serve_kafka_events_total":
                counts[sample.labels["outcome"]] = counts.get(sample.labels["outcome"], 0.0) + sample.value
    return counts


def main(argv: list[str] | None, settings: Settings) -> dict[str, Any]:
    del settings  # the gunicorn workers read them as this process did (benchmark_settings)
    parser = argument_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="phases per server")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds measured per phase")
    parser.add_argument(
        "--shape",
        type=parse_shape,
        default=SERVICE_SHAPE,
        help="gunicorn's WORKERSxTHREADS (default: the service's, %(default)s)",
    )
    args = parser.parse_args(argv)
    workers, threads = args.shape

    spec = bench_spec()
    bodies = [json.dumps({"rows": [row]}).encode() for row in client_rows(64, seed=7)]
    modes = ("off", "up", "down")
    ports = {mode: free_port() for mode in modes}
    down_port = free_port()  # nothing listens there: a broker that is down
    with tempfile.TemporaryDirectory(prefix="b10-model-") as temporary:
        folder = write_model(spec, Path(temporary))
        running = {}
        try:
            for mode in modes:
                # The worker finds the Kafka settings as this process did (the runner's settings, or the environment).
                env = {MODEL_DIR_VARIABLE: str(folder), KAFKA_VARIABLE: mode, DOWN_PORT_VARIABLE: str(down_port)}
                running[mode] = start_server(
                    "served_app()", ports[mode], env, module="bench.b10_serving_metrics", shape=args.shape
                )
            phases: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
            for round_ in range(args.rounds):
                for mode in modes if round_ % 2 == 0 else modes[::-1]:
                    phases[mode].append(http_phase(ports[mode], bodies, args.seconds, running[mode].pid))
            delivery = {mode: kafka_counts(ports[mode]) for mode in modes}
        finally:
            for server in running.values():
                server.terminate()
                server.wait(timeout=30)
    medians = {mode: statistics.median(p["requests_per_s"] for p in runs) for mode, runs in phases.items()}
    result = {
        "name": "B10 /predict requests/s with serving metrics published to Kafka / publishing off (broker up; and "
        "broker down)",
        "ratio": ratio(medians["up"], medians["off"]),
        "target": ">= 0.95",
        "broker_down_ratio": ratio(medians["down"], medians["off"]),
        "broker_down_target": ">= 0.95",
        "method": f"B8's gunicorn server ({workers} worker(s) x {threads} threads) and model, {CLIENTS} client "
        f"processes on 127.0.0.1, a connection per request, single-row requests, {args.seconds:g} s per phase after "
        "1 s of warm-up, "
        f"{args.rounds} phases per server alternating; medians",
        "requests_per_s": {mode: round(value, 1) for mode, value in medians.items()},
        "p50_ms": {mode: statistics.median(p["p50_ms"] for p in runs) for mode, runs in phases.items()},
        "p99_ms": {mode: statistics.median(p["p99_ms"] for p in runs) for mode, runs in phases.items()},
        # Less noisy than requests/s on a machine the clients share: what a request costs the server itself.
        "server_cpu_ms_per_request": {
            mode: statistics.median(p["server_cpu_ms_per_request"] for p in runs) for mode, runs in phases.items()
        },
        "kafka_events": delivery,
        "phases": phases,
        "notes": [
            "up: every request's message was delivered to the stack's broker (kafka_events.up.delivered), payload "
            "sampling off as by default; down: the broker's port is closed, the queue drops (kafka_events.down).",
            "Clients and servers share this machine's cores: requests/s are this machine's, the ratios the comparison.",
        ],
    }
    return report("b10_serving_metrics", result, packages=("flask", "gunicorn", "confluent-kafka", "torch"))


if __name__ == "__main__":
    main(sys.argv[1:], benchmark_settings())
