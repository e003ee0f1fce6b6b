"""Endpoints and locations, read from the environment at call time (never at import time).

Defaults point at the local stack (see `python -m stack env`); set the variables to use a real cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    s3_endpoint_url: str | None
    aws_region: str
    kafka_bootstrap_servers: str
    mlflow_tracking_uri: str
    spark_master: str
    ray_address: str | None
    raw_bucket: str
    lake_bucket: str
    stack_dir: Path

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            s3_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            aws_region=env.get("AWS_DEFAULT_REGION", "us-east-1"),
            kafka_bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
            spark_master=env.get("SPARK_MASTER", "local[*]"),
            ray_address=env.get("RAY_ADDRESS") or None,
            raw_bucket=env.get("MLOPS_RAW_BUCKET", "raw"),
            lake_bucket=env.get("MLOPS_LAKE_BUCKET", "lake"),
            stack_dir=Path(env.get("MLOPS_STACK_DIR", Path(__file__).resolve().parent.parent / ".stack")),
        )
