"""`python -m ml preprocess`: run the Spark preprocessing application through `spark-submit`.

Airflow's SparkSubmitOperator runs the same application with the same `--conf` pairs (see `spark_conf()`); this
module is the way to run it without Airflow, and the one place that knows the application's path and arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ml.settings import Settings
from ml.sparkconf import spark_conf, spark_submit_env

log = logging.getLogger(__name__)

APPLICATION = Path(__file__).resolve().parent / "spark_preprocess.py"
REPO_ROOT = APPLICATION.parent.parent


def application_args(
    dataset: str, snapshot_id: str, *, seed: int = 42, max_categories: int = 20, force: bool = False
) -> list[str]:
    args = [
        "--dataset",
        dataset,
        "--snapshot",
        snapshot_id,
        "--seed",
        str(seed),
        "--max-categories",
        str(max_categories),
    ]
    return [*args, "--force"] if force else args


def application_env() -> dict[str, str]:
    """Environment of the spark-submit process: credentials, and `ml` importable by the driver."""
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**spark_submit_env(), "PYTHONPATH": pythonpath}


def spark_submit_binary() -> str:
    """The spark-submit of this Python environment (it must match the pyspark the job imports)."""
    beside = Path(sys.executable).parent / "spark-submit"
    found = str(beside) if beside.exists() else shutil.which("spark-submit")
    if not found:
        raise RuntimeError("spark-submit is not on PATH; it comes with the pyspark package of the project's venv")
    return found


def run_preprocess(
    dataset: str, snapshot_id: str, *, master: str | None = None, driver_memory: str = "2g", **kwargs: Any
) -> dict[str, Any]:
    """spark-submit the application; Spark's log streams to this process's stderr; returns the job's summary."""
    from ml.spark_preprocess import RESULT_MARKER

    settings = Settings.from_env()
    command = [
        spark_submit_binary(),
        "--master",
        master or settings.spark_master,
        "--driver-memory",
        driver_memory,
        "--name",
        f"preprocess-{dataset}",
    ]
    for key, value in spark_conf(settings).items():
        command += ["--conf", f"{key}={value}"]
    command += [str(APPLICATION), *application_args(dataset, snapshot_id, **kwargs)]
    log.info("spark-submit %s for %s snapshot %s", APPLICATION.name, dataset, snapshot_id)
    # spark-submit sends the Python driver's stdout and stderr to its stdout: pass the log on, keep the result line.
    results = []
    reasons = []  # the job's own `error: ...` lines (bad input): the exception carries them, not only the log
    env = {**os.environ, **application_env()}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(RESULT_MARKER):
                results.append(line[len(RESULT_MARKER) :])
            else:
                if line.startswith("error: "):
                    reasons.append(line[len("error: ") :].strip())
                sys.stderr.write(line)
    if process.returncode != 0 or not results:
        reason = f": {reasons[-1]}" if reasons else "; see the Spark log above"
        raise RuntimeError(
            f"Spark preprocessing of {dataset} snapshot {snapshot_id} failed "
            f"(spark-submit exit code {process.returncode}){reason}"
        )
    result: dict[str, Any] = json.loads(results[-1])
    return result


def _cli(args: argparse.Namespace) -> dict[str, Any]:
    return run_preprocess(
        args.dataset,
        args.snapshot,
        master=args.master,
        seed=args.seed,
        max_categories=args.max_categories,
        force=args.force,
    )


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("preprocess", help="Spark: clean, split, encode, write features + Hive table")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--snapshot", required=True, help="snapshot id printed by `ingest`")
    parser.add_argument("--master", help="Spark master (default: $SPARK_MASTER, local[*])")
    parser.add_argument("--seed", type=int, default=42, help="seed of the deterministic split")
    parser.add_argument("--max-categories", type=int, default=20, help="cardinality cap per categorical column")
    parser.add_argument("--force", action="store_true", help="recompute even if the features exist")
    parser.set_defaults(handler=_cli)
