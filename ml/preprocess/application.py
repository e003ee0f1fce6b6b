"""The application side of `ml.preprocess.submit.run_spark_job`, shared by ml's Spark jobs (preprocessing, batch
scoring): the driver's Hive-enabled session with the S3 credentials of spark-submit's environment, then the job's
outcome as run_spark_job reads it: `<marker><result as JSON>` on stdout, or bad input (DataError) as an
`error: ...` line on stderr and exit status 2."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ml.preprocess.conf import apply_s3a_credentials
from ml.settings import S3Settings, Settings
from ml.storage import DataError

BAD_INPUT_EXIT = 2


def run_spark_application(app_name: str, result_marker: str, work: Callable[[Any, S3Settings], dict[str, Any]]) -> int:
    """Run `work(spark, s3)` in a session named `app_name` (stopped afterwards, whatever happens) and report its
    result; returns the process's exit status. S3 settings come from the environment: this is an entry point."""
    # force: pyspark may have configured the root logger already.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)

    from pyspark.sql import SparkSession

    s3 = Settings.from_env(os.environ).s3
    spark = SparkSession.builder.appName(app_name).enableHiveSupport().getOrCreate()
    try:
        apply_s3a_credentials(spark, s3)
        result = work(spark, s3)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT_EXIT
    finally:
        spark.stop()
    print(result_marker + json.dumps(result, sort_keys=True), flush=True)
    return 0
