"""Query the project's Hive metastore from a child process.

In the local profile the metastore is an embedded Derby database that one JVM at a time may open, and a JVM started by
pyspark inside the test process stays alive (holding it) after `spark.stop()`; later `spark-submit` jobs would then
fail. A child process releases it when it exits. In the cluster profile the child is a Spark application of the
standalone cluster, and `hive_session` keeps one open while a test does something else.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_SCRIPT = """
import json
import os
import sys
from pyspark.sql import SparkSession
from ml.preprocess.conf import s3a_credentials, spark_conf
from ml.settings import Settings
settings = Settings.from_env(os.environ)
master = "local[1]" if settings.spark.is_local else settings.spark.master
builder = SparkSession.builder.master(master).appName(sys.argv[2])
for key, value in spark_conf(settings.spark, settings.s3, settings.lake).items():
    builder = builder.config(key, value)
for key, value in s3a_credentials(settings.s3).items():  # a cluster's executors do not share this environment
    builder = builder.config("spark.hadoop." + key, value)
spark = builder.enableHiveSupport().getOrCreate()
try:
    row = spark.sql(sys.argv[1]).first()  # None for a statement (DROP TABLE)
    value = None if row is None or row[0] is None else str(row[0])
    # One line whatever the value holds (spaces, line breaks): the application's id, then the value as JSON.
    print("HIVE_RESULT", spark.sparkContext.applicationId, json.dumps(value), flush=True)
    if sys.argv[3] == "hold":
        sys.stdin.readline()  # the session stays open until the test closes stdin
finally:
    spark.stop()
"""


def hive_scalar(sql: str, stack_env: dict[str, str], timeout_s: float = 300) -> str | None:
    """The first column of the first row of `sql`, as text; None when it answers no row or NULL (the child runs in
    the stack's environment)."""
    return hive_query(sql, stack_env, timeout_s=timeout_s)[0]


def hive_query(
    sql: str, stack_env: dict[str, str], app_name: str = "tests-hive-query", timeout_s: float = 300
) -> tuple[str | None, str]:
    """The first column of the first row of `sql` as text, and the Spark application's id."""
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT, sql, app_name, "once"],
        capture_output=True,
        text=True,
        env=stack_env,
        timeout=timeout_s,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("HIVE_RESULT ")]
    assert completed.returncode == 0 and lines, f"Hive query failed: {sql}\n{completed.stderr[-3000:]}"
    return _parse_result(lines[-1])


def _parse_result(line: str) -> tuple[str | None, str]:
    """`HIVE_RESULT <application id> <value as JSON>` -> (value as text, None without a row; application id)."""
    _, app_id, value = line.split(" ", 2)
    text: str | None = json.loads(value)
    return text, app_id


@contextmanager
def hive_session(
    sql: str, stack_env: dict[str, str], app_name: str, timeout_s: float = 300
) -> Iterator[tuple[str | None, str]]:
    """A Spark application that ran `sql` and stays open (its session held) until the block ends: yields the
    answer's first value and the application's id."""
    process = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, sql, app_name, "hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=stack_env,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        yield _parse_result(_first_result(process, timeout_s))
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _first_result(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    while ready:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("HIVE_RESULT "):
            return line.strip()
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    raise AssertionError(f"the held Spark session answered nothing (exit code {process.poll()})")
