"""Query the project's Hive metastore from a child process.

The metastore is an embedded Derby database that one JVM at a time may open, and a JVM started by pyspark inside
the test process stays alive (holding it) after `spark.stop()`; later `spark-submit` jobs would then fail. A child
process releases it when it exits.
"""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import os
import sys
from pyspark.sql import SparkSession
from ml.preprocess.conf import spark_conf
from ml.settings import Settings
settings = Settings.from_env(os.environ)
builder = SparkSession.builder.master("local[1]").appName("tests-hive-query")
for key, value in spark_conf(settings.spark, settings.s3, settings.lake).items():
    builder = builder.config(key, value)
spark = builder.enableHiveSupport().getOrCreate()
try:
    print("HIVE_RESULT", spark.sql(sys.argv[1]).first()[0])
finally:
    spark.stop()
"""


def hive_scalar(sql: str, stack_env: dict[str, str], timeout_s: float = 300) -> str:
    """The first column of the first row of `sql`, as text (the child runs in the stack's environment)."""
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT, sql], capture_output=True, text=True, env=stack_env, timeout=timeout_s
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("HIVE_RESULT ")]
    assert completed.returncode == 0 and lines, f"Hive query failed: {sql}\n{completed.stderr[-3000:]}"
    return lines[-1].split(" ", 1)[1]
