"""Spark configuration for the pipeline's jobs: S3 through s3a, a Hive metastore that survives restarts, sizes that
suit small and large data, on a local master or a cluster. The same dict feeds `spark-submit --conf` (Airflow's
SparkSubmitOperator, `python -m ml preprocess`) and in-process sessions (tests, benchmarks).

On a cluster (client deploy mode) the driver runs on the submitting host and the executors in worker processes that
share nothing with it: no environment, no files. So nothing executor-side names a path of the submitting host, the
executors get the S3 credentials through the job's Hadoop configuration (`s3a_credentials`, set by the job itself)
and the `ml` package through `--py-files` (ml.preprocess.submit)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ml.settings import LakeSettings, S3Settings, SparkSettings

log = logging.getLogger(__name__)

# The initial shuffle partitions of a job on a cluster whose size the settings do not give (no cores_max): adaptive
# execution coalesces them to what the data needs, and 64 keeps a cluster of up to 32 cores busy.
CLUSTER_SHUFFLE_PARTITIONS = 64

TEMPORARY_CREDENTIALS = "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
SIMPLE_CREDENTIALS = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"


def shuffle_partitions_for(spark: SparkSettings) -> int:
    """Local: twice this host's cores (at least 4). Cluster: twice `cores_max`, else CLUSTER_SHUFFLE_PARTITIONS (the
    submitting host's cores say nothing about the cluster's)."""
    if spark.is_local:
        return max(4, 2 * (os.cpu_count() or 2))
    return 2 * spark.cores_max if spark.cores_max else CLUSTER_SHUFFLE_PARTITIONS


def spark_conf(
    spark: SparkSettings, s3: S3Settings, lake: LakeSettings, shuffle_partitions: int | None = None
) -> dict[str, str]:
    """`--conf` pairs for a pipeline Spark job. Credentials never appear here (the command line, Spark's UI and event
    log): the driver has them in its environment (spark_submit_env) and hands them to the executors through its
    Hadoop configuration (s3a_credentials)."""
    conf: dict[str, str] = {
        # Adaptive execution coalesces shuffles; the initial count only needs to fit the cores, not 200.
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.shuffle.partitions": str(shuffle_partitions or shuffle_partitions_for(spark)),
        "spark.sql.session.timeZone": "UTC",
        # The job caches its cleaned rows and reads them ~10 times (statistics, distributions, three splits).
        # Compressing the cache only pays for strings (doubles are stored as they are) and building it cost ~4 s of
        # 73 at 10M rows (bench/README.md, B3); the categories' strings are short.
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        "spark.ui.showConsoleProgress": "false",
        # s3a against the configured endpoint (path-style for S3-compatible servers).
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
    if spark.cores_max:
        # Without it one application takes every core of a standalone cluster and a second one waits.
        conf["spark.cores.max"] = str(spark.cores_max)
    if spark.local_ip:
        # The address executors of a cluster connect back to (client mode: the driver runs on this host).
        conf["spark.driver.host"] = spark.local_ip
    if spark.metastore_uri:
        conf["spark.hadoop.hive.metastore.uris"] = spark.metastore_uri
    elif spark.metastore_dir:
        # An embedded Derby metastore kept in a folder of its own (it would land in the working folder otherwise); only
        # the driver opens it.
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
        # On the driver's classpath: no copy of the 700 MB SDK bundle per job, unlike spark.jars.
        conf["spark.driver.extraClassPath"] = spark.extra_classpath
    executor_classpath = spark.extra_classpath if spark.is_local else spark.executor_classpath
    if executor_classpath:
        # Local executors share the driver's host; a cluster's workers bring their own jars (a path there, if any).
        conf["spark.executor.extraClassPath"] = executor_classpath
    return conf


def s3a_credentials(s3: S3Settings) -> dict[str, str]:
    """The s3a settings that carry these credentials in a Hadoop configuration (the job sets them on its own session,
    so they travel with each job to the executors). Temporary credentials need their session token and s3a's
    TemporaryAWSCredentialsProvider; the provider is named in both cases, so that a worker's own configuration cannot
    put another chain first. Without keys: nothing, s3a's default chain of the process applies."""
    if not (s3.access_key_id and s3.secret_access_key):
        return {}
    values = {"fs.s3a.access.key": s3.access_key_id, "fs.s3a.secret.key": s3.secret_access_key}
    if s3.session_token:
        return {
            **values,
            "fs.s3a.session.token": s3.session_token,
            "fs.s3a.aws.credentials.provider": TEMPORARY_CREDENTIALS,
        }
    return {**values, "fs.s3a.aws.credentials.provider": SIMPLE_CREDENTIALS}


def apply_s3a_credentials(spark: Any, s3: S3Settings) -> None:
    """Put the S3 credentials into the session's Hadoop configuration. Spark builds each job's Hadoop configuration
    from it and ships that with the tasks, so executors authenticate with these keys instead of whatever their own
    environment holds (on a cluster: nothing). Spark's UI and event log redact the keys (spark.redaction.regex)."""
    credentials = s3a_credentials(s3)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in credentials.items():
        hadoop.set(key, value)
    provider = credentials.get("fs.s3a.aws.credentials.provider", "s3a's default chain")
    log.info("s3a credentials for the executors: %s", provider.rsplit(".", 1)[-1])


def spark_submit_env(spark: SparkSettings, s3: S3Settings) -> dict[str, str]:
    """Environment variables of a spark-submit of a pipeline job: the S3 credentials (they stay out of the command
    line; the job reads them back with Settings.from_env) and the driver's bind address when one is configured.
    Creates the embedded Derby metastore's folder when there is one."""
    env = s3.subprocess_env()
    if spark.local_ip:
        env["SPARK_LOCAL_IP"] = spark.local_ip
    if spark.metastore_dir and not spark.metastore_uri:
        Path(spark.metastore_dir).mkdir(parents=True, exist_ok=True)
    return env
