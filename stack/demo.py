"""`make demo`: the main job end to end on this machine, through Airflow's REST API as a user would drive it.

Unpauses `mlops_training` and uploads the demo dataset to the raw bucket: the upload itself starts the run (the S3
server notifies it through Kafka, Airflow's asset watcher and raw_data_events start the dataset's training with its
params from dags/event_routes.yaml), which the demo follows, then prints a summary with where to look. Then it uploads
a second dataset and follows the run that upload starts. A dataset no route covers is triggered through the REST API
instead. Last, the speed layer (stack.demo_drift, `--no-drift` skips it): the penguins champion serves live requests,
drift injected into them gives a drift event, and drift_retraining retrains penguins. Assumes `python -m stack up
--airflow` ran (the Makefile does it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ml.clock import SYSTEM_CLOCK, Clock
from ml.settings import Settings
from stack.config import apply_stack_environment, stack_paths

AIRFLOW = "http://127.0.0.1:8080"
DAG_ID = "mlops_training"
ROUTES = Path(__file__).resolve().parents[1] / "dags" / "event_routes.yaml"


class AirflowApi:
    """The few REST calls the demo needs (JWT from /auth/token, then Bearer)."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        body = json.dumps({"username": username, "password": password}).encode()
        token = self._call("POST", "/auth/token", body, {"Content-Type": "application/json"})["access_token"]
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    # The local Airflow keeps its metadata in SQLite, which answers "database is locked" (HTTP 500, nothing written)
    # while its scheduler holds a write: such a call is tried again, a few times.
    transient_attempts = 5
    transient_pause_s = 1.0  # times the attempt number

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        for attempt in range(1, self.transient_attempts + 1):
            request = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers or {})  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - local API server
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as error:
                text = error.read().decode()[:500]
                if error.code in (500, 503) and "database" in text.lower() and attempt < self.transient_attempts:
                    time.sleep(attempt * self.transient_pause_s)
                    continue
                raise RuntimeError(f"{method} {path}: HTTP {error.code}: {text}") from None
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, payload: Any = None) -> Any:
        body = json.dumps(payload).encode() if payload is not None else None
        return self._call(method, path, body, self.headers)

    def xcom(self, run_id: str, task_id: str) -> Any:
        from urllib.parse import quote

        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id)}/taskInstances/{task_id}/xcomEntries/return_value"
        try:
            return self.request("GET", path).get("value")
        except RuntimeError:
            return None


def admin_password_file() -> Path:
    """The simple auth manager's password file (0600); the demo names it rather than printing the password."""
    from stack.airflow_home import SIMPLE_AUTH_FILE

    return stack_paths().airflow_home / SIMPLE_AUTH_FILE


def admin_password() -> str:
    return str(json.loads(admin_password_file().read_text())["admin"])


def wait_for_dag(api: AirflowApi, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            api.request("GET", f"/api/v2/dags/{DAG_ID}")
            return
        except RuntimeError:
            time.sleep(2)
    raise RuntimeError(f"{DAG_ID} did not appear in Airflow within {timeout_s:.0f} s (see .stack/logs/airflow.log)")


def trigger(api: AirflowApi, conf: dict[str, Any], dag_id: str = DAG_ID) -> str:
    """Unpause the DAG and trigger a run with `conf`; returns its run id."""
    api.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    run = api.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
    run_id: str = run["dag_run_id"]
    print(f"triggered {dag_id} run {run_id}", flush=True)
    return run_id


def follow(
    api: AirflowApi, run_ids: list[str], timeout_s: float, clock: Clock = SYSTEM_CLOCK, dag_id: str = DAG_ID
) -> dict[str, str]:
    """Print each task's state changes of the given runs until all have ended; returns {run_id: state}."""
    from urllib.parse import quote

    seen: dict[tuple[str, str], str] = {}
    ended: dict[str, str] = {}
    deadline = clock.monotonic() + timeout_s
    while clock.monotonic() < deadline:
        for run_id in [r for r in run_ids if r not in ended]:
            path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}"
            tis = api.request("GET", f"{path}/taskInstances")["task_instances"]
            for ti in sorted(tis, key=lambda t: t.get("start_date") or "9999"):
                if ti["state"] and seen.get((run_id, ti["task_id"])) != ti["state"]:
                    seen[(run_id, ti["task_id"])] = ti["state"]
                    label = f"{run_id}  " if len(run_ids) > 1 else ""
                    print(f"  {time.strftime('%H:%M:%S')}  {label}{ti['task_id']:28} {ti['state']}", flush=True)
            state = api.request("GET", path)["state"]
            if state in ("success", "failed"):
                ended[run_id] = state
        if len(ended) == len(run_ids):
            return ended
        clock.sleep(3)
    running = [r for r in run_ids if r not in ended]
    raise RuntimeError(f"runs {running} did not finish within {timeout_s:.0f} s; they are still visible at {AIRFLOW}")


def trigger_and_follow(api: AirflowApi, conf: dict[str, Any], timeout_s: float) -> tuple[str, str]:
    """Trigger a run and print each task's state changes until the run ends; returns (run_id, state)."""
    run_id = trigger(api, conf)
    return run_id, follow(api, [run_id], timeout_s)[run_id]


def runs_started_by(api: AirflowApi, uris: set[str]) -> list[dict[str, Any]]:
    """The latest runs (100) whose conf lists any of `uris` as an upload that started them (raw_data_events)."""
    runs = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100&order_by=-id")["dag_runs"]
    return [run for run in runs if uris & set(((run.get("conf") or {}).get("event") or {}).get("objects", []))]


def wait_for_upload_run(api: AirflowApi, uri: str, timeout_s: float, clock: Clock = SYSTEM_CLOCK) -> str:
    """The id of the run the upload of `uri` started, once it exists."""
    deadline = clock.monotonic() + timeout_s
    while clock.monotonic() < deadline:
        started = runs_started_by(api, {uri})
        if started:
            run_id: str = started[0]["dag_run_id"]
            print(f"the upload of {uri} started {DAG_ID} run {run_id}", flush=True)
            return run_id
        clock.sleep(3)
    raise RuntimeError(
        f"no {DAG_ID} run started for {uri} within {timeout_s:.0f} s: see the raw_data_events DAG at {AIRFLOW} and "
        f"the triggerer's log (.stack/logs/airflow.log)"
    )


def _run_dataset(api: AirflowApi, settings: Settings, dataset: str, timeout_s: float) -> tuple[str, str, str]:
    """Upload a shipped dataset and follow the run it starts (or, under no route, a triggered one); returns
    (run_id, state, task)."""
    from ml.clients import s3_client
    from ml.datasets import SHIPPED, load_shipped, upload_frame
    from ml.events.routes import load_routes
    from ml.events.s3_notifications import CreatedObject
    from ml.storage import S3Uri

    raw_key = S3Uri(settings.lake.raw_bucket, f"{dataset}/{dataset}.csv")
    route = load_routes(ROUTES).route_for(CreatedObject(raw_key.bucket, raw_key.key, None, None, "", ""))
    uploaded = upload_frame(load_shipped(dataset), raw_key, s3_client(settings.s3))
    print(f"\nuploaded {uploaded['rows']} rows of {dataset} to {uploaded['uri']}", flush=True)
    if route is not None:
        run_id = wait_for_upload_run(api, uploaded["uri"], timeout_s=600)
        return run_id, follow(api, [run_id], timeout_s)[run_id], route.task
    target = SHIPPED[dataset][1]
    task = "regression" if dataset == "cars" else "classification"
    print(f"no route in {ROUTES} covers {uploaded['uri']}: triggering the run through the REST API")
    conf = {"raw_uri": f"s3://{raw_key.bucket}/{dataset}/", "dataset": dataset, "target": target, "task": task}
    run_id, state = trigger_and_follow(api, conf, timeout_s)
    return run_id, state, task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.demo", description=__doc__)
    parser.add_argument("--dataset", default="penguins", choices=["penguins", "cars"], help="the main run's dataset")
    parser.add_argument(
        "--second-dataset", default=None, choices=["penguins", "cars", "none"], help="default: the other one"
    )
    parser.add_argument("--timeout-s", type=float, default=1800, help="for each run")
    parser.add_argument(
        "--drift",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after a successful penguins run: serve it, inject drift into live requests, follow the retraining",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env(apply_stack_environment())
    second = args.second_dataset or ("cars" if args.dataset == "penguins" else "penguins")

    api = AirflowApi(AIRFLOW, "admin", admin_password())
    wait_for_dag(api)
    api.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})  # runs started while paused would queue
    run_id, state, task = _run_dataset(api, settings, args.dataset, args.timeout_s)
    summary = api.xcom(run_id, "publish_run_summary")
    print(f"\nrun {run_id}: {state}")
    if summary:
        print(json.dumps(summary, indent=2, default=str))
    states = [state]
    if second != "none" and state == "success":
        second_run, second_state, _ = _run_dataset(api, settings, second, args.timeout_s)
        print(f"\nrun {second_run} (started by the upload of {second}): {second_state}")
        states.append(second_state)
    trained = dict(zip([args.dataset, second], states, strict=False))
    if args.drift and trained.get("penguins") == "success":
        from stack.demo_drift import drift_step

        states.append(drift_step(api, settings, timeout_s=min(args.timeout_s, 900)))
    print(f"""
Where to look:
  Airflow UI        {AIRFLOW}  (user admin, password in {admin_password_file()}, readable by you only)
                    DAGs mlops_training, raw_data_events, drift_retraining; Assets: raw_uploads, model_drift
  tuning report     {AIRFLOW}/mlops/tuning-report?run_id={run_id}
  MLflow            http://127.0.0.1:5000  (experiment {args.dataset}, model {args.dataset}-{task})
  object store      http://127.0.0.1:9001  (versitygw console; keys in .stack/credentials.json)
  Kafka events      make tail-metrics   /   python -m ml events tail mlops.pipeline.events.v1 --from-beginning
  drift monitor     http://127.0.0.1:4041/StreamingQuery/  /  python -m ml events tail mlops.drift.v1
  predictions       make serve, then POST http://127.0.0.1:8000/predict""")
    return 0 if all(s == "success" for s in states) else 1


if __name__ == "__main__":
    sys.exit(main())
