"""B7: the whole DAG's wall time under Airflow / the same stages called in one process; target <= 1.3.

Both sides run the pipeline on the same data (the shipped penguins CSV under penguins/ in the raw bucket, s3://raw/ by
default, as `make demo` uploads it) with the same small search, each under a fresh dataset name (so neither finds the
other's snapshot, features or model, and both take the training branch):
  airflow      `mlops_training` triggered through the REST API (as `make demo` does, `stack.demo.trigger_and_follow`);
               its wall time is the run's `queued_at` (the trigger) -> `end_date`, from Airflow's own records;
  in-process   `python -m ml run-all`, i.e. `ml.pipeline.run_pipeline` (ingest -> spark-submit preprocessing -> Ray
               Tune -> evaluate -> register) in one fresh interpreter, timed around the process (start-up and
               imports included, once, as each Airflow task pays them once).
Pairs alternate the order (airflow first, then in-process first, ...); medians over the pairs are compared.
Each task instance's start/end (and the idle gaps between tasks) and run_pipeline's `timings_s` are reported side by
side, so the overhead can be located: task start-up (a fresh interpreter per task, the DAG file parsed again, the
callbacks' task_started/task_succeeded events sent to Kafka), scheduling gaps, and the tasks that only the DAG has
(validate_params, the S3 sensor, the model-exists branch, the run summary).

The benchmark waits (bounded) until no other mlops_training run is active, and reports any run that overlapped
either side anyway (other users of a shared machine). The datasets' lake folders, MLflow experiments and registered
models are deleted afterwards (`--keep` leaves them).

    python -m stack run -- .venv/bin/python -m bench.b7_airflow_overhead [--num-samples 2] [--max-epochs 3]
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import argument_parser, benchmark_settings, delete_run_outputs, ratio, report
from ml.settings import Settings

DAG_ID = "mlops_training"
# In the raw bucket, under a prefix no event route names (dags/event_routes.yaml): an upload under penguins/ would
# start a second, event-driven run beside the measured one.
RAW_PREFIX = "bench/b7/penguins/"
TARGET = "species"
TASK = "classification"
# DAG task -> run_pipeline stage(s) doing the same work.
STAGES = {
    "ingest_raw_data": ("ingest",),
    "preprocess_with_spark": ("preprocess",),
    "tune_models": ("tune",),
    "register_best_model": ("evaluate", "register"),
}
ACTIVE = ("queued", "running")

log = logging.getLogger("bench.b7")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 2) if start and end else None


def runs(api: Any, limit: int = 50) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.request(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit={limit}&order_by=-run_after"
    )["dag_runs"]
    return found


def wait_until_idle(api: Any, timeout_s: float) -> float:
    """Wait until no mlops_training run is queued or running; returns the seconds waited (raises after timeout_s)."""
    started = time.monotonic()
    while True:
        active = [r["dag_run_id"] for r in runs(api) if r["state"] in ACTIVE]
        if not active:
            return round(time.monotonic() - started, 1)
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"other {DAG_ID} runs still active after {timeout_s:.0f} s: {active}")
        log.warning("waiting for %d other %s run(s) to finish: %s", len(active), DAG_ID, active)
        time.sleep(10)


def overlapping(api: Any, start: datetime, end: datetime, exclude: str | None = None) -> list[str]:
    """Other mlops_training runs that were active during [start, end] (a run without an end date counts only while it
    is queued or running: a run failed before it started has none)."""
    out = []
    for run in runs(api):
        if run["dag_run_id"] == exclude:
            continue
        began, ended = _time(run.get("start_date") or run.get("queued_at")), _time(run.get("end_date"))
        if ended is None and run.get("state") not in ("queued", "running"):
            continue
        if began and began < end and (ended is None or ended > start):
            out.append(run["dag_run_id"])
    return out


def task_table(tis: list[dict[str, Any]], run_start: datetime) -> list[dict[str, Any]]:
    """Each task instance's state, start offset, duration and the idle gap before it (no task of the run running)."""
    rows = []
    ended_so_far = run_start
    for ti in sorted(tis, key=lambda t: t.get("start_date") or "9999"):
        start, end = _time(ti.get("start_date")), _time(ti.get("end_date"))
        rows.append(
            {
                "task_id": ti["task_id"],
                "state": ti["state"],
                "try_number": ti.get("try_number"),
                "start_offset_s": _seconds(run_start, start),
                "duration_s": _seconds(start, end),
                "queued_to_start_s": _seconds(_time(ti.get("queued_when")), start),
                "idle_gap_before_s": max(_seconds(ended_so_far, start) or 0.0, 0.0) if start else None,
            }
        )
        if end and end > ended_so_far:
            ended_so_far = end
    return rows


def idle_gaps(tasks: list[dict[str, Any]], tis: list[dict[str, Any]], run_end: datetime) -> float:
    """Seconds of the run during which none of its tasks was running (before each task, and after the last one)."""
    ends = [ended for ti in tis if (ended := _time(ti.get("end_date"))) is not None]
    last_end = max(ends, default=run_end)
    return round(sum(t["idle_gap_before_s"] or 0.0 for t in tasks) + max(_seconds(last_end, run_end) or 0.0, 0.0), 2)


def run_airflow(api: Any, dataset: str, conf: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    from stack.demo import trigger_and_follow

    began = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # progress lines on stderr; stdout carries the JSON only
        run_id, state = trigger_and_follow(api, {**conf, "dataset": dataset}, timeout_s)
    client_seconds = time.perf_counter() - began
    run = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id)}")
    tis = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id)}/taskInstances")["task_instances"]
    queued, start, end = _time(run.get("queued_at")), _time(run["start_date"]), _time(run["end_date"])
    if start is None or end is None:
        raise RuntimeError(f"DAG run {run_id} ended {state} without a start or end date")
    tasks = task_table(tis, start)
    durations = [t["duration_s"] for t in tasks if t["duration_s"] is not None]
    return {
        "dataset": dataset,
        "run_id": run_id,
        "state": state,
        "wall_s": _seconds(queued or start, end),
        "start_to_end_s": _seconds(start, end),
        "queued_to_start_s": _seconds(queued, start),
        "client_observed_s": round(client_seconds, 2),
        "sum_task_durations_s": round(sum(durations), 2),
        "idle_gaps_s": idle_gaps(tasks, tis, end),
        "tasks": tasks,
        "queued_at": run.get("queued_at"),
        "start_date": run["start_date"],
        "end_date": run["end_date"],
        "_window": (queued or start, end),
    }


def run_in_process(settings: Settings, dataset: str, conf: dict[str, Any]) -> dict[str, Any]:
    """`python -m ml run-all` (ml.pipeline.run_pipeline) in a fresh interpreter, as one Airflow task would start:
    imports are paid once for all stages, and never carried over from an earlier pair. The settings reach it as
    environment variables (`Settings.to_env`), which its entry point reads."""
    import json
    import subprocess
    from datetime import UTC

    command = [
        sys.executable,
        "-m",
        "ml",
        "run-all",
        "--raw-uri",
        conf["raw_uri"],
        "--dataset",
        dataset,
        "--target",
        conf["target"],
        "--task",
        conf["task"],
        "--run-name",
        f"b7-{dataset}",
        "--num-samples",
        str(conf["num_samples"]),
        "--max-concurrent",
        str(conf["max_concurrent_trials"]),
        "--max-epochs",
        str(conf["max_epochs"]),
    ]
    start = datetime.now(UTC)
    began = time.perf_counter()
    env = {**os.environ, **settings.to_env()}
    completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True, timeout=3600)
    wall = time.perf_counter() - began
    summary = json.loads(completed.stdout)
    return {
        "dataset": dataset,
        "command": "python -m ml run-all (ml.pipeline.run_pipeline)",
        "wall_s": round(wall, 2),
        "timings_s": summary["timings_s"],
        "sum_stages_s": summary["total_s"],
        "outside_stages_s": round(wall - summary["total_s"], 2),
        "num_trials": summary["num_trials"],
        "test_metrics": summary["test_metrics"],
        "_window": (start, datetime.now(UTC)),
    }


def stage_comparison(airflow: dict[str, Any], in_process: dict[str, Any]) -> list[dict[str, Any]]:
    by_task = {t["task_id"]: t for t in airflow["tasks"]}
    rows = []
    for task_id, stages in STAGES.items():
        task = by_task.get(task_id, {})
        ours = round(sum(in_process["timings_s"].get(s, 0.0) for s in stages), 2)
        took = task.get("duration_s")
        rows.append(
            {
                "stage": "+".join(stages),
                "airflow_task": task_id,
                "airflow_s": took,
                "in_process_s": ours,
                "difference_s": round((took or 0.0) - ours, 2),
            }
        )
    extra = [t for t in airflow["tasks"] if t["task_id"] not in STAGES]
    rows.append(
        {
            "stage": "(DAG only)",
            "airflow_task": ", ".join(t["task_id"] for t in extra),
            "airflow_s": round(sum(t["duration_s"] or 0.0 for t in extra), 2),
            "in_process_s": 0.0,
            "difference_s": round(sum(t["duration_s"] or 0.0 for t in extra), 2),
        }
    )
    rows.append(
        {
            "stage": "(between tasks / outside stages)",
            "airflow_task": "idle gaps + queued before start",
            "airflow_s": round(airflow["idle_gaps_s"] + (airflow["queued_to_start_s"] or 0.0), 2),
            "in_process_s": in_process["outside_stages_s"],
            "difference_s": round(
                airflow["idle_gaps_s"] + (airflow["queued_to_start_s"] or 0.0) - in_process["outside_stages_s"], 2
            ),
        }
    )
    return rows


def median_stages(tables: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per stage row, the median of each number over the pairs."""
    rows = []
    for index, first in enumerate(tables[0]):
        row = dict(first)
        for key in ("airflow_s", "in_process_s", "difference_s"):
            values = [table[index][key] for table in tables if table[index][key] is not None]
            row[key] = round(statistics.median(values), 2) if values else None
        rows.append(row)
    return rows


def main(argv: list[str] | None, settings: Settings) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="airflow/in-process pairs; the order alternates (airflow first in the first pair)",
    )
    parser.add_argument("--timeout-s", type=float, default=1200, help="for each DAG run")
    parser.add_argument("--wait-idle-s", type=float, default=900, help="wait at most this for other runs to end")
    parser.add_argument("--keep", action="store_true", help="keep the datasets' lake folders, experiments, models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    from ml.clients import s3_client
    from ml.datasets import load_shipped, upload_frame
    from ml.storage import S3Uri
    from stack.demo import AIRFLOW, AirflowApi, admin_password, wait_for_dag

    raw_uri = f"s3://{settings.lake.raw_bucket}/{RAW_PREFIX}"
    # The same bytes `make demo` uploads, so the snapshot and every later stage do the same work.
    upload_frame(
        load_shipped("penguins"), S3Uri(settings.lake.raw_bucket, f"{RAW_PREFIX}penguins.csv"), s3_client(settings.s3)
    )
    try:
        api = AirflowApi(AIRFLOW, "admin", admin_password())
    except OSError as error:  # connection refused, or no generated password file yet
        raise SystemExit(f"B7 needs Airflow at {AIRFLOW} (`make airflow-up`): {error}") from error
    wait_for_dag(api)
    conf = {
        "raw_uri": raw_uri,
        "target": TARGET,
        "task": TASK,
        "num_samples": args.num_samples,
        "max_concurrent_trials": args.max_concurrent,
        "max_epochs": args.max_epochs,
    }
    waited = 0.0
    pairs: list[dict[str, Any]] = []
    left: dict[str, list[str]] = {}
    for number in range(args.pairs):
        tag = uuid.uuid4().hex[:6]
        datasets = {"airflow": f"bench_b7_af_{tag}", "in_process": f"bench_b7_ip_{tag}"}
        order = ["airflow", "in_process"] if number % 2 == 0 else ["in_process", "airflow"]
        results: dict[str, dict[str, Any]] = {}
        try:
            for side in order:
                waited += wait_until_idle(api, args.wait_idle_s)
                log.info("B7 pair %d: %s side on dataset %s", number + 1, side, datasets[side])
                if side == "airflow":
                    results[side] = run_airflow(api, datasets[side], conf, args.timeout_s)
                    if results[side]["state"] != "success":
                        raise RuntimeError(f"DAG run {results[side]['run_id']} ended {results[side]['state']}")
                else:
                    results[side] = run_in_process(settings, datasets[side], conf)
        finally:
            if not args.keep:
                left.update({name: delete_run_outputs(settings, name, TASK) for name in datasets.values()})
        overlaps = {}
        for side in order:
            window_start, window_end = results[side].pop("_window")
            overlaps[side] = overlapping(api, window_start, window_end, exclude=results[side].get("run_id"))
        airflow, in_process = results["airflow"], results["in_process"]
        pairs.append(
            {
                "order": order,
                "ratio": ratio(airflow["wall_s"], in_process["wall_s"]),
                "airflow_wall_s": airflow["wall_s"],
                "in_process_wall_s": in_process["wall_s"],
                "stages": stage_comparison(airflow, in_process),
                "airflow": airflow,
                "in_process": in_process,
                "other_runs_overlapping": overlaps,
            }
        )

    airflow_wall = round(statistics.median(p["airflow_wall_s"] for p in pairs), 2)
    in_process_wall = round(statistics.median(p["in_process_wall_s"] for p in pairs), 2)
    stages = median_stages([p["stages"] for p in pairs])
    result = {
        "name": "B7 whole DAG wall time under Airflow / the same stages in one process (ml.pipeline.run_pipeline)",
        "ratio": ratio(airflow_wall, in_process_wall),
        "target": "<= 1.15 (issue 17; DESIGN.md: <= 1.3)",
        "airflow_wall_s": airflow_wall,
        "in_process_wall_s": in_process_wall,
        "overhead_s": round(airflow_wall - in_process_wall, 2),
        "ratio_per_pair": [p["ratio"] for p in pairs],
        "ratio_start_to_end": ratio(statistics.median(p["airflow"]["start_to_end_s"] for p in pairs), in_process_wall),
        "ratio_same_stages": ratio(
            sum(r["airflow_s"] or 0.0 for r in stages[: len(STAGES)]),
            sum(r["in_process_s"] or 0.0 for r in stages[: len(STAGES)]),
        ),
        "data": f"{raw_uri} (shipped penguins, 344 rows)",
        "search": {
            "num_samples": args.num_samples,
            "max_epochs": args.max_epochs,
            "max_concurrent_trials": args.max_concurrent,
        },
        "stages_median": stages,
        "pairs": pairs,
        "waited_for_idle_s": waited,
        "cleanup_problems": {name: problems for name, problems in left.items() if problems},
        "left_behind": "Kafka events of the runs; each dataset's external Hive table entry in the local metastore",
    }
    return report("b7_airflow_overhead", result, packages=("apache-airflow", "pyspark", "ray", "torch", "mlflow"))


if __name__ == "__main__":
    main(sys.argv[1:], benchmark_settings())
