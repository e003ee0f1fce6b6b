"""Spark configuration for the pipeline's jobs: S3 through s3a, a Hive metastore that survives restarts, sizes that
suit small and large data. The same dict feeds `spark-submit --conf` (Airflow's SparkSubmitOperator, `python -m ml
preprocess`) and in-process sessions (tests, benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

from ml.settings import LakeSettings, S3Settings, SparkSettings


def spark_conf(
    spark: SparkSettings, s3: S3Settings, lake: LakeSettings, shuffle_partitions: int | None = None
) -> dict[str, str]:
    """`--conf` pairs for a pipeline Spark job. Credentials never appear here: s3a reads them from the environment
    of the process (spark_submit_env)."""
    conf: dict[str, str] = {
        # Adaptive execution coalesces shuffles; the initial count only needs to fit the cores, not 200.
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.shuffle.partitions": str(shuffle_partitions or max(4, 2 * (os.cpu_count() or 2))),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        # s3a against the configured endpoint (path-style for S3-compatible servers), credentials from s3a's default
        # provider chain (the environment).
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.endpoint.region": s3.region,
        "spark.hadoop.fs.s3a.fast.upload": "true",
        # Ride through an object-store blip of a few seconds, then fail: s3a's defaults (7 exponential retries of 5 SDK
        # attempts) kept a job against a dead server busy for over 7 minutes, one operation after another, while
        # Airflow's task retry is the recovery that restarts from a clean state.
        "spark.hadoop.fs.s3a.retry.limit": "3",
        "spark.hadoop.fs.s3a.retry.interval": "1s",
        "spark.hadoop.fs.s3a.attempts.maximum": "2",
        # Hive tables, their warehouse in the lake bucket.
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": f"s3a://{lake.lake_bucket}/warehouse",
    }
    if spark.metastore_dir:
        # An embedded Derby metastore kept in a folder of its own (it would land in the working folder otherwise).
        hive_dir = Path(spark.metastore_dir)
        conf["spark.hadoop.javax.jdo.option.ConnectionURL"] = (
            f"jdbc:derby:;databaseName={hive_dir / 'metastore_db'};create=true"
        )
        conf["spark.driver.extraJavaOptions"] = (
            f"-Dderby.system.home={hive_dir} -Dderby.stream.error.file={hive_dir / 'derby.log'}"
        )
    if s3.endpoint_url:
        conf["spark.hadoop.fs.s3a.endpoint"] = s3.endpoint_url
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(s3.endpoint_url.startswith("https")).lower()
    if spark.extra_classpath:
        # On the driver's (and local workers') classpath: no copy of the 700 MB SDK bundle per job, unlike spark.jars.
        conf["spark.driver.extraClassPath"] = spark.extra_classpath
        conf["spark.executor.extraClassPath"] = spark.extra_classpath
    return conf


def spark_submit_env(spark: SparkSettings, s3: S3Settings) -> dict[str, str]:
    """Environment variables of a spark-submit of a pipeline job: the S3 credentials (they stay out of the command
    line) and the driver's bind address. Creates the Derby metastore folder when there is one."""
    env = s3.subprocess_env()
    if spark.local_ip:
        env["SPARK_LOCAL_IP"] = spark.local_ip
    if spark.metastore_dir:
        Path(spark.metastore_dir).mkdir(parents=True, exist_ok=True)
    return env
