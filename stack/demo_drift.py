"""The demo's speed-layer step (`python -m stack.demo_drift`, after `make demo`): drift injected into live requests
produces a drift event, and the drift retrains the dataset.

It starts the prediction service for the penguins champion (`python -m ml serve` as the `serving` user, every
request's inputs sampled onto mlops.serving.metrics.v1), sends it penguins rows as they are for a while, then the
same rows with `bill_length_mm` shifted by SHIFT_MM, and prints the drift monitor's verdicts (mlops.drift.v1, one per
window) as they come; once a window drifted, it follows the mlops_training run that drift_retraining starts for
penguins (its route says `on_drift: retrain`). On unchanged raw data that run takes the reuse path: drift says the
world moved; new labelled data is what a better model needs. The stack's monitor closes a window 30 s after its end
(its watermark), so the first verdict comes about 90 s after the traffic starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from typing import Any

from ml.clock import SYSTEM_CLOCK, Clock
from ml.settings import Settings
from stack.config import REPO_ROOT, apply_stack_environment, stack_environment
from stack.demo import AIRFLOW, DAG_ID, AirflowApi, admin_password, follow

MODEL = "penguins-classification"
SHIFT_MM = 25.0  # penguins' bills are 32-60 mm long: every shifted one lies beyond the training range
ROWS_PER_REQUEST = 20


def start_service(model: str, port: int) -> subprocess.Popen[bytes]:
    env = {**stack_environment(identity="serving"), "MLOPS_SERVE_PAYLOAD_SAMPLE_RATE": "1"}
    command = [sys.executable, "-m", "ml", "serve", "--model", model, "--port", str(port)]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def post(url: str, rows: list[dict[str, Any]]) -> int:
    request = urllib.request.Request(  # noqa: S310 - the local service
        f"{url}/predict", json.dumps({"rows": rows}).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return int(response.status)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310
            return int(response.status) == 200
    except OSError:
        return False


def request_rows(shift: float) -> list[dict[str, Any]]:
    from ml.datasets import SHIPPED, load_shipped

    frame = load_shipped("penguins").drop(columns=[SHIPPED["penguins"][1]])
    frame = frame.astype(object).where(frame.notna(), None)
    rows: list[dict[str, Any]] = frame.to_dict("records")
    for row in rows:
        if shift and row.get("bill_length_mm") is not None:
            row["bill_length_mm"] = float(row["bill_length_mm"]) + shift
    return rows


def verdicts(follower: Any, model: str) -> list[dict[str, Any]]:
    """`model`'s drift events polled since the last call."""
    found = []
    for batch in follower.poll(timeout_ms=500).values():
        for record in batch:
            payload = json.loads(record.value)["payload"]
            if payload["model_name"] == model:
                found.append(payload)
    return found


def print_verdict(payload: dict[str, Any]) -> None:
    worst = max(payload["features"], key=lambda f: f["psi"] or 0.0, default=None)
    detail = f"; largest PSI {worst['name']} {worst['psi']:.2f}" if worst and worst["psi"] is not None else ""
    state = f"DRIFT in {', '.join(payload['drifted_features'])}" if payload["drifted"] else "no drift"
    print(f"  window {payload['window_start']}: {payload['rows']} rows, {state}{detail}", flush=True)


def drift_step(
    api: AirflowApi,
    settings: Settings,
    *,
    model: str = MODEL,
    port: int = 8000,
    normal_s: float = 75,
    timeout_s: float = 600,
    clock: Clock = SYSTEM_CLOCK,
) -> str:
    """Serve `model`, send normal then shifted traffic until the monitor reports drift, then follow the retraining
    run drift_retraining starts; returns that run's final state."""
    from ml.clients import close_quietly
    from ml.events.consumer import open_topic
    from ml.topics import DRIFT

    url = f"http://127.0.0.1:{port}"
    service = start_service(model, port)
    follower = open_topic(settings.kafka, DRIFT.name)  # at the topic's end
    try:
        deadline = clock.monotonic() + 120
        while not healthy(url):
            if service.poll() is not None or clock.monotonic() > deadline:
                raise RuntimeError(f"the prediction service for {model} did not start (is there a champion?)")
            clock.sleep(1)
        normal, shifted = request_rows(0.0), request_rows(SHIFT_MM)
        print(
            f"\nsending penguins rows to {model} at {url}/predict: as they are for {normal_s:g} s, then with "
            f"bill_length_mm +{SHIFT_MM:g} mm; the drift monitor's verdicts per window:",
            flush=True,
        )
        started, drifted, index = clock.monotonic(), None, 0
        while drifted is None:
            elapsed = clock.monotonic() - started
            if elapsed > normal_s + timeout_s:
                raise RuntimeError("no drift event within the timeout: is the drift monitor running (stack status)?")
            rows = normal if elapsed < normal_s else shifted
            post(url, [rows[(index + i) % len(rows)] for i in range(ROWS_PER_REQUEST)])
            index += ROWS_PER_REQUEST
            for payload in verdicts(follower, model):
                print_verdict(payload)
                drifted = drifted or (payload if payload["drifted"] else None)
            clock.sleep(0.25)
    finally:
        close_quietly(follower)
        os.killpg(service.pid, signal.SIGTERM)
        service.wait(timeout=60)

    hour = datetime.fromisoformat(drifted["window_start"].replace("Z", "+00:00")).astimezone(UTC)
    run_id = f"drift__{drifted['dataset']}__{hour.strftime('%Y%m%dT%H')}"
    deadline = clock.monotonic() + timeout_s
    while not any(run["dag_run_id"] == run_id for run in _runs(api)):
        if clock.monotonic() > deadline:
            raise RuntimeError(f"drift_retraining started no run {run_id}")
        clock.sleep(3)
    print(f"\ndrift_retraining started {DAG_ID} run {run_id}:", flush=True)
    state = follow(api, [run_id], timeout_s, clock)[run_id]
    print(f"\nrun {run_id}: {state} (the drift is in its conf and, when it registers a version, in its tags)")
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.demo_drift", description=__doc__)
    parser.add_argument("--model", default=MODEL, help="a registered model of penguins with a champion")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--normal-s", type=float, default=75, help="seconds of unshifted traffic first")
    parser.add_argument("--timeout-s", type=float, default=600, help="for the drift event, then for the run")
    args = parser.parse_args(argv)
    settings = Settings.from_env(apply_stack_environment())
    api = AirflowApi(AIRFLOW, "admin", admin_password())
    state = drift_step(
        api, settings, model=args.model, port=args.port, normal_s=args.normal_s, timeout_s=args.timeout_s
    )
    return 0 if state == "success" else 1


def _runs(api: AirflowApi) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100&order_by=-id")["dag_runs"]
    return runs


if __name__ == "__main__":
    sys.exit(main())
