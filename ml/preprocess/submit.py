"""Running the Spark job through `spark-submit`: the one place that knows the application's path, its arguments and
how the `ml` package reaches the executors (a zip passed as `--py-files`).

Airflow's SparkSubmitOperator runs the same application with the same `--conf` pairs, `--py-files` and environment
(see plugins/mlops_airflow/operators.py); `run_preprocess` is the way to run it from Python (`python -m ml
preprocess`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ml.preprocess.class_archive import driver_class_archive
from ml.preprocess.conf import spark_conf, spark_submit_env
from ml.settings import ML_PACKAGE, LakeSettings, S3Settings, SparkSettings

log = logging.getLogger(__name__)

APPLICATION = Path(__file__).resolve().parent / "job.py"
PROJECT_ROOT = APPLICATION.parents[2]


def application_args(
    dataset: str,
    snapshot_id: str,
    lake: LakeSettings,
    *,
    seed: int | None = None,
    max_categories: int | None = None,
    force: bool = False,
) -> list[str]:
    """The job's command-line arguments (ml.preprocess.job.main); None keeps the job's default."""
    args = ["--dataset", dataset, "--snapshot", snapshot_id, "--lake-bucket", lake.lake_bucket]
    if seed is not None:
        args += ["--seed", str(seed)]
    if max_categories is not None:
        args += ["--max-categories", str(max_categories)]
    return [*args, "--force"] if force else args


def application_env(spark: SparkSettings, s3: S3Settings) -> dict[str, str]:
    """Environment of the spark-submit process: credentials, and `ml` importable by the driver. On a local master
    the Python workers (batch scoring's mapInPandas) run this interpreter, which has numpy and torch; a cluster's
    workers use their own (their PYSPARK_PYTHON)."""
    env = {**spark_submit_env(spark, s3), "PYTHONPATH": str(PROJECT_ROOT)}
    return {**env, "PYSPARK_PYTHON": sys.executable} if spark.is_local else env


def write_ml_zip(folder: Path) -> Path:
    """A zip of the `ml` package (sources and data files, no bytecode) in `folder`, named after a hash of its
    content, so that a log line says which code a job ran."""
    files = sorted(
        path
        for path in ML_PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(PROJECT_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    target = folder / f"ml-{digest.hexdigest()[:12]}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(PROJECT_ROOT).as_posix())
    return target


@contextmanager
def ml_package_zip() -> Iterator[Path]:
    """The `ml` package as a zip for spark-submit's `--py-files`: Spark puts it on the Python path of the driver and
    of every executor (a cluster's workers do not have this checkout). Built in a private temporary folder for one
    job and removed when the job is over."""
    with tempfile.TemporaryDirectory(prefix="mlops-py-files-") as folder:
        package = write_ml_zip(Path(folder))
        log.info("shipping the ml package to the executors as %s", package.name)
        yield package


def spark_submit_binary() -> str:
    """The spark-submit of this Python environment (it must match the pyspark the job imports)."""
    beside = Path(sys.executable).parent / "spark-submit"
    found = str(beside) if beside.exists() else shutil.which("spark-submit")
    if not found:
        raise RuntimeError("spark-submit is not on PATH; it comes with the pyspark package of the project's venv")
    return found


def run_preprocess(
    dataset: str,
    snapshot_id: str,
    *,
    s3: S3Settings,
    lake: LakeSettings,
    spark: SparkSettings,
    driver_memory: str = "2g",
    **job_options: Any,
) -> dict[str, Any]:
    """spark-submit the application; Spark's log streams to this process's stderr; returns the job's summary.
    `job_options` are application_args' (seed, max_categories, force)."""
    from ml.preprocess.job import RESULT_MARKER

    log.info("spark-submit %s for %s snapshot %s", APPLICATION.name, dataset, snapshot_id)
    return run_spark_job(
        APPLICATION,
        application_args(dataset, snapshot_id, lake, **job_options),
        name=f"preprocess-{dataset}",
        result_marker=RESULT_MARKER,
        what=f"Spark preprocessing of {dataset} snapshot {snapshot_id}",
        s3=s3,
        lake=lake,
        spark=spark,
        driver_memory=driver_memory,
    )


def run_spark_job(
    application: Path,
    args: list[str],
    *,
    name: str,
    result_marker: str,
    what: str,
    s3: S3Settings,
    lake: LakeSettings,
    spark: SparkSettings,
    driver_memory: str = "2g",
) -> dict[str, Any]:
    """spark-submit one of the pipeline's Spark applications (preprocessing, batch scoring) with the pipeline's conf,
    environment and `ml` zip; returns the JSON of its last `result_marker` line. A job that fails raises
    RuntimeError naming `what` and the job's own `error: ...` reason when it printed one."""
    from ml.preprocess.preflight import require_cluster_services

    require_cluster_services(spark)
    command = [spark_submit_binary(), "--master", spark.master, "--driver-memory", driver_memory, "--name", name]
    # spark-submit sends the Python driver's stdout and stderr to its stdout: pass the log on, keep the result line.
    results = []
    reasons = []  # the job's own `error: ...` lines (bad input): the exception carries them, not only the log
    env = {**_inherited_environment(), **application_env(spark, s3)}
    archived = driver_class_archive(spark.class_archive_dir, spark_conf(spark, s3, lake), env)
    with ml_package_zip() as package, archived as conf:
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        command += ["--py-files", str(package), str(application), *args]
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as process:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(result_marker):
                    results.append(line[len(result_marker) :])
                else:
                    if line.startswith("error: "):
                        reasons.append(line[len("error: ") :].strip())
                    sys.stderr.write(line)
        if process.returncode != 0 or not results:  # inside: a failed job's class archive is not kept
            reason = f": {reasons[-1]}" if reasons else "; see the Spark log above"
            raise RuntimeError(f"{what} failed (spark-submit exit code {process.returncode}){reason}")
    result: dict[str, Any] = json.loads(results[-1])
    return result


def _inherited_environment() -> dict[str, str]:
    """What spark-submit inherits from this process: its PATH, Java and locale, not another service's credentials
    (ours are set explicitly by application_env)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
