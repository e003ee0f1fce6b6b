"""Spark configuration for the pipeline's jobs: S3 through s3a, a Hive metastore that survives restarts, sizes that
suit small and large data. The same dict feeds `spark-submit --conf` (Airflow's SparkSubmitOperator) and in-process
sessions (tests, benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

from ml.settings import Settings


def s3a_classpath(settings: Settings) -> str:
    """The hadoop-aws + AWS SDK jars that `make tools` resolved (colon-separated), or '' if not fetched."""
    classpath_file = settings.stack_dir / "jars" / "spark-s3a.classpath"
    return classpath_file.read_text().strip() if classpath_file.exists() else ""


def spark_conf(settings: Settings | None = None, shuffle_partitions: int | None = None) -> dict[str, str]:
    """`--conf` pairs for a pipeline Spark job under the given settings."""
    settings = settings or Settings.from_env()
    hive_dir = settings.stack_dir / "data" / "hive"
    conf: dict[str, str] = {
        # Adaptive execution coalesces shuffles; the initial count only needs to fit the cores, not 200.
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.shuffle.partitions": str(shuffle_partitions or max(4, 2 * (os.cpu_count() or 2))),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        # s3a against the configured endpoint (path-style for S3-compatible servers). Credentials come from the
        # environment through s3a's default provider chain, never from the command line.
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.endpoint.region": settings.aws_region,
        "spark.hadoop.fs.s3a.fast.upload": "true",
        # Ride through an object-store blip of a few seconds, then fail: s3a's defaults (7 exponential retries of 5 SDK
        # attempts) kept a job against a dead server busy for over 7 minutes, one operation after another, while
        # Airflow's task retry is the recovery that restarts from a clean state.
        "spark.hadoop.fs.s3a.retry.limit": "3",
        "spark.hadoop.fs.s3a.retry.interval": "1s",
        "spark.hadoop.fs.s3a.attempts.maximum": "2",
        # Hive tables: a Derby metastore kept with the stack's data, warehouse in the lake bucket.
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": f"s3a://{settings.lake_bucket}/warehouse",
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={hive_dir / 'metastore_db'};create=true"
        ),
        "spark.driver.extraJavaOptions": (
            f"-Dderby.system.home={hive_dir} -Dderby.stream.error.file={hive_dir / 'derby.log'}"
        ),
    }
    if settings.s3_endpoint_url:
        conf["spark.hadoop.fs.s3a.endpoint"] = settings.s3_endpoint_url
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(settings.s3_endpoint_url.startswith("https")).lower()
    classpath = s3a_classpath(settings)
    if classpath:
        # On the driver's (and local workers') classpath: no copy of the 700 MB SDK bundle per job, unlike spark.jars.
        conf["spark.driver.extraClassPath"] = classpath
        conf["spark.executor.extraClassPath"] = classpath
    return conf


def spark_submit_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment variables a spark-submit of a pipeline job needs (credentials stay out of the command line)."""
    env = {"SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        if key in os.environ:
            env[key] = os.environ[key]
    Path((settings or Settings.from_env()).stack_dir / "data" / "hive").mkdir(parents=True, exist_ok=True)
    return env
