"""Typed settings: where each service is and how to reach it. Stages take the slices they use as arguments.

Nothing in `ml` reads the environment except `Settings.from_env`, which only entry points call (`python -m ml`, the
Spark application, the prediction service's app factory); under Airflow, hooks build each slice from a connection
(see plugins/mlops_airflow/hooks.py). The defaults are the local stack's endpoints on 127.0.0.1, and `to_env` writes
the same settings back as environment variables for a subprocess (spark-submit) or a stack process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class S3Settings:
    """An S3 endpoint and credentials (None: the standard AWS chain of the process that uses them)."""

    endpoint_url: str | None = "http://127.0.0.1:9000"
    region: str = "us-east-1"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def subprocess_env(self) -> dict[str, str]:
        """The AWS_* variables that give a child process (spark-submit, Ray workers) these settings. No endpoint (AWS
        itself) is written as an empty AWS_ENDPOINT_URL: boto3 and `from_env` both read that as "AWS"."""
        values = {
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
        }
        return {"AWS_ENDPOINT_URL": self.endpoint_url or "", **{key: value for key, value in values.items() if value}}


@dataclass(frozen=True)
class LakeSettings:
    """The buckets of the pipeline: raw input and the lake it writes (layout in ml.storage)."""

    raw_bucket: str = "raw"
    lake_bucket: str = "lake"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:9092"

    @property
    def servers(self) -> list[str]:
        return [server.strip() for server in self.bootstrap_servers.split(",") if server.strip()]


@dataclass(frozen=True)
class MlflowSettings:
    """The MLflow tracking server, which is also the model registry and proxies model artifacts."""

    tracking_uri: str = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class SparkSettings:
    """Where pipeline Spark jobs run and what the deployment adds to them.

    `extra_classpath`: jars every driver and executor needs (the s3a connector); `metastore_dir`: the folder of an
    embedded Derby Hive metastore (None when the deployment's conf points at a networked one)."""

    master: str = "local[*]"
    extra_classpath: str = ""
    metastore_dir: str | None = None
    local_ip: str | None = "127.0.0.1"


@dataclass(frozen=True)
class RaySettings:
    """A Ray cluster's address; None starts a local Ray inside the calling process."""

    address: str | None = None


@dataclass(frozen=True)
class Settings:
    """Every slice, as `python -m ml` and the benchmarks use them."""

    s3: S3Settings = field(default_factory=S3Settings)
    lake: LakeSettings = field(default_factory=LakeSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    ray: RaySettings = field(default_factory=RaySettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from environment variables (unset ones keep the local stack's defaults)."""
        s3, spark = S3Settings(), SparkSettings()
        # The Spark additions: given explicitly, or found in the local stack's folder (`make tools` writes the s3a
        # classpath there; the embedded metastore lives there too).
        stack_dir = Path(env.get("MLOPS_STACK_DIR") or PROJECT_ROOT / ".stack")
        classpath_file = stack_dir / "jars" / "spark-s3a.classpath"
        classpath = classpath_file.read_text().strip() if classpath_file.is_file() else ""
        return cls(
            s3=S3Settings(
                endpoint_url=env.get("AWS_ENDPOINT_URL", s3.endpoint_url) or None,
                region=env.get("AWS_DEFAULT_REGION", s3.region),
                access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
                secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                session_token=env.get("AWS_SESSION_TOKEN") or None,
            ),
            lake=LakeSettings(
                raw_bucket=env.get("MLOPS_RAW_BUCKET", LakeSettings.raw_bucket),
                lake_bucket=env.get("MLOPS_LAKE_BUCKET", LakeSettings.lake_bucket),
            ),
            kafka=KafkaSettings(env.get("KAFKA_BOOTSTRAP_SERVERS", KafkaSettings.bootstrap_servers)),
            mlflow=MlflowSettings(env.get("MLFLOW_TRACKING_URI", MlflowSettings.tracking_uri)),
            spark=SparkSettings(
                master=env.get("SPARK_MASTER", spark.master),
                extra_classpath=env.get("MLOPS_SPARK_EXTRA_CLASSPATH", classpath),
                metastore_dir=env.get("MLOPS_HIVE_METASTORE_DIR", str(stack_dir / "data" / "hive")) or None,
                local_ip=env.get("SPARK_LOCAL_IP", spark.local_ip or "") or None,
            ),
            ray=RaySettings(env.get("RAY_ADDRESS") or None),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables `from_env` reads back into these settings (credentials included)."""
        values = {
            "MLOPS_RAW_BUCKET": self.lake.raw_bucket,
            "MLOPS_LAKE_BUCKET": self.lake.lake_bucket,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "MLFLOW_TRACKING_URI": self.mlflow.tracking_uri,
            "SPARK_MASTER": self.spark.master,
            "SPARK_LOCAL_IP": self.spark.local_ip,
            "RAY_ADDRESS": self.ray.address,
        }
        spark_additions = {
            # Explicit, so that a child process does not look for them in the stack folder again.
            "MLOPS_SPARK_EXTRA_CLASSPATH": self.spark.extra_classpath,
            "MLOPS_HIVE_METASTORE_DIR": self.spark.metastore_dir,
        }
        written = {key: value for key, value in {**values, **spark_additions}.items() if value}
        return {**self.s3.subprocess_env(), **written}
