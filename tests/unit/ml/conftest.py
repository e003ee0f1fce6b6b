"""One local SparkSession for the unit tests of the Spark code (preprocessing steps, the drift monitor's query): one
core, two shuffle partitions, no Hive, no S3 (rows are built in memory or read from files under a temporary folder),
no web UI. Started by the first test that asks for it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pyspark.sql import SparkSession

    scratch = tmp_path_factory.mktemp("spark")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("unit-preprocess-steps")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "1")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .config("spark.local.dir", str(scratch / "local"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    # Python workers (mapInPandas: batch scoring) run this interpreter, with its numpy and torch, not PATH's python3
    # (pyspark reads only PYSPARK_PYTHON, when the context starts; this leaves the process environment alone).
    session.sparkContext.pythonExec = sys.executable
    try:
        yield session
    finally:
        session.stop()
        _close_gateway()


def _close_gateway() -> None:
    """Close py4j's connections to the JVM now. Left to the interpreter's exit, each one logs its closing to whatever
    handler the root logger has by then: in a run with the Airflow tests, a stream pytest has already closed."""
    import gc

    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is not None:
        gateway.shutdown()
        SparkContext._gateway = None
        SparkContext._jvm = None
        gc.collect()
