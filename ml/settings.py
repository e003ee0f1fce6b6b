"""Typed settings: where each service is and how to reach it. Stages take the slices they use as arguments.

Nothing in `ml` reads the environment except `Settings.from_env`, which only entry points call (`python -m ml`, the
Spark application, the prediction service's app factory); under Airflow, hooks build each slice from a connection
(see plugins/mlops_airflow/hooks.py). The defaults are the local stack's endpoints on 127.0.0.1, and `to_env` writes
the same settings back as environment variables for a subprocess (spark-submit) or a stack process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ML_PACKAGE = PROJECT_ROOT / "ml"  # what a cluster's workers get of this checkout (Spark --py-files, Ray py_modules)


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


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")  # the ones a username and password log in with
DEFAULT_KAFKA_SASL_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaSettings:
    """Kafka brokers and how a client logs in to them.

    `security_protocol`: kafka-python's; left out, it is SASL_PLAINTEXT when a username is given, else PLAINTEXT (no
    authentication: a broker of your own without it). With SASL_PLAINTEXT or SASL_SSL the client logs in as `username`
    with `password` by `sasl_mechanism` (SCRAM-SHA-512 unless given; the local stack's broker takes SCRAM-SHA-512
    only). The password stays out of every repr, and out of whatever pickles these settings (ml.tune.callbacks)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Filled in, so that equal settings compare equal however they were written.
        protocol = (self.security_protocol or ("SASL_PLAINTEXT" if self.username else "PLAINTEXT")).upper()
        object.__setattr__(self, "security_protocol", protocol)
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(f"Kafka security protocol must be one of {KAFKA_SECURITY_PROTOCOLS}, not {protocol!r}")
        if not self.uses_sasl:
            if self.sasl_mechanism or self.username or self.password:
                raise ValueError(
                    f"Kafka security protocol {protocol} logs in with no username or password: use SASL_PLAINTEXT "
                    "or SASL_SSL with a username and password, or leave them out"
                )
            return
        mechanism = (self.sasl_mechanism or DEFAULT_KAFKA_SASL_MECHANISM).upper()
        object.__setattr__(self, "sasl_mechanism", mechanism)
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise ValueError(f"Kafka SASL mechanism must be one of {KAFKA_SASL_MECHANISMS}, not {mechanism!r}")
        if not self.username:
            raise ValueError(f"Kafka security protocol {protocol} needs a username (and a password)")

    @property
    def servers(self) -> list[str]:
        return [server.strip() for server in self.bootstrap_servers.split(",") if server.strip()]

    @property
    def uses_sasl(self) -> bool:
        """Whether a client of these settings logs in (SASL_PLAINTEXT or SASL_SSL)."""
        return str(self.security_protocol).startswith("SASL_")

    def to_env(self) -> dict[str, str]:
        """The variables Settings.from_env reads these settings from (the password included, for a child process);
        the protocol only when it is not PLAINTEXT, so that KafkaSettings() writes the bootstrap servers alone."""
        values = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "MLOPS_KAFKA_SECURITY_PROTOCOL": self.security_protocol if self.security_protocol != "PLAINTEXT" else None,
            "MLOPS_KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "MLOPS_KAFKA_USERNAME": self.username,
            "MLOPS_KAFKA_PASSWORD": self.password,
        }
        return {key: value for key, value in values.items() if value}

    def without_password(self) -> KafkaSettings:
        """These settings less the password (what may be pickled): a record of where and as whom, which ml.clients
        refuses to connect with until the password is given again."""
        return self if self.password is None else replace(self, password=None)


@dataclass(frozen=True)
class MlflowSettings:
    """The MLflow tracking server, which is also the model registry and proxies model artifacts.

    `username` and `password`: a login of a server that runs MLflow's basic-auth app (the local stack's does), None for
    a server without authentication. They reach MLflow's client only through ml.clients (MLflow reads them from the
    process environment on every request); the password stays out of every repr and out of Tune's state."""

    tracking_uri: str = "http://127.0.0.1:5000"
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.password and not self.username:
            raise ValueError(f"MLflow settings for {self.tracking_uri} give a password without a username")

    def to_env(self) -> dict[str, str]:
        """The variables Settings.from_env reads these settings from (MLflow's own names; the password included, for
        a child process)."""
        values = {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }
        return {key: value for key, value in values.items() if value}

    def without_password(self) -> MlflowSettings:
        """These settings less the password (what may be pickled: Tune's state): where and as whom, which ml.clients
        refuses to connect with until the password is given again."""
        return self if self.password is None else replace(self, password=None)


@dataclass(frozen=True)
class SparkSettings:
    """Where pipeline Spark jobs run and what the deployment adds to them (docs/PIPELINE.md, "Pointing at a cluster").

    `extra_classpath`: jars on the submitting host that the driver needs (the s3a connector); with a local master the
    executors share it. `executor_classpath`: jars that exist on the cluster's workers, for their executors (none by
    default: a cluster's workers bring the s3a connector themselves). `metastore_dir`: the folder of an embedded Derby
    Hive metastore; `metastore_uri`: a networked Hive metastore (`thrift://host:9083`), which replaces the embedded one
    (metastore_dir is then None). `local_ip`: the driver's address, where executors of a cluster connect back to it.
    `cores_max`: the cores one job may take from a standalone cluster (`spark.cores.max`; None: all of them), which also
    sizes the shuffle partitions of a cluster job. `lineage_classpath`: the OpenLineage Spark listener's jars on the
    submitting host (ml.preprocess.lineage; empty: jobs send no OpenLineage events). `kafka_source_classpath`: the jars
    of Spark's Kafka source on the submitting host (the streaming drift monitor hands them to Spark, which ships them
    to the executors). `class_archive_dir`: a folder on the submitting host for the driver's class archives
    (ml.preprocess.class_archive; None: the driver loads its classes from the jars every time)."""

    master: str = "local[*]"
    extra_classpath: str = ""
    metastore_dir: str | None = None
    local_ip: str | None = "127.0.0.1"
    metastore_uri: str | None = None
    executor_classpath: str = ""
    cores_max: int | None = None
    lineage_classpath: str = ""
    kafka_source_classpath: str = ""
    class_archive_dir: str | None = None

    def __post_init__(self) -> None:
        if self.metastore_uri:
            # One metastore: a networked one makes the embedded Derby folder meaningless.
            object.__setattr__(self, "metastore_dir", None)
        if self.cores_max is not None and self.cores_max < 1:
            raise ValueError(f"cores_max must be a positive number of cores, not {self.cores_max}")

    @property
    def is_local(self) -> bool:
        """True for a master that runs the executors inside the driver (`local`, `local[*]`, `local[N]`)."""
        return re.fullmatch(r"local(\[[^\]]*\])?", self.master) is not None


RAY_AUTH_MODES = ("token", "disabled")


@dataclass(frozen=True)
class RaySettings:
    """A Ray cluster and how to authenticate to it; address None starts a local Ray inside the calling process.

    `address`: a GCS address (`10.0.0.5:6380`, for a driver on a machine that runs a Ray node) or a Ray Client address
    (`ray://head:10001`). `auth_token`: the cluster's token (Ray's `RAY_AUTH_TOKEN`). `auth_mode`: Ray's
    `RAY_AUTH_MODE`, "token" or "disabled"; left out, it is "token" for a local Ray (ml.tune.runtime gives it a token of
    its own when none is set, known only to the task that starts it) and for a cluster when a token is given, else
    "disabled". ml.tune.runtime sets the mode for every ray.init, whatever the process's environment says.
    `state_signing_key`: the stack's key that signs the Tune state a search keeps in S3 and checks it before a retry
    restores it (ml.tune.signing); a search refuses to run without one."""

    address: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    auth_mode: str | None = None
    state_signing_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.auth_mode is None:
            # Filled in, so that equal settings compare equal however they were written.
            object.__setattr__(self, "auth_mode", self.implied_auth_mode)
        if self.auth_mode not in RAY_AUTH_MODES:
            raise ValueError(f"Ray auth mode must be one of {RAY_AUTH_MODES}, not {self.auth_mode!r}")

    @property
    def implied_auth_mode(self) -> str:
        """The mode these settings get when none is given."""
        return "token" if self.auth_token or self.address is None else "disabled"

    @property
    def resolved_auth_mode(self) -> str:
        """The RAY_AUTH_MODE a driver of these settings runs with."""
        return self.auth_mode or self.implied_auth_mode


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
        # classpath there; the embedded metastore lives there too, unless a networked metastore is configured).
        stack_dir = Path(env.get("MLOPS_STACK_DIR") or PROJECT_ROOT / ".stack")
        classpath, lineage_classpath, kafka_source_classpath = (
            _classpath_in(stack_dir, name) for name in ("spark-s3a", "spark-lineage", "spark-kafka")
        )
        metastore_uri = env.get("MLOPS_HIVE_METASTORE_URI") or None
        embedded_metastore = None if metastore_uri else str(stack_dir / "data" / "hive")
        class_archives = str(stack_dir / "data" / "spark" / "class-archives")
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
            kafka=KafkaSettings(
                env.get("KAFKA_BOOTSTRAP_SERVERS", KafkaSettings.bootstrap_servers),
                security_protocol=(env.get("MLOPS_KAFKA_SECURITY_PROTOCOL") or "").strip() or None,
                sasl_mechanism=(env.get("MLOPS_KAFKA_SASL_MECHANISM") or "").strip() or None,
                username=env.get("MLOPS_KAFKA_USERNAME") or None,
                password=env.get("MLOPS_KAFKA_PASSWORD") or None,
            ),
            mlflow=MlflowSettings(
                env.get("MLFLOW_TRACKING_URI", MlflowSettings.tracking_uri),
                username=env.get("MLFLOW_TRACKING_USERNAME") or None,
                password=env.get("MLFLOW_TRACKING_PASSWORD") or None,
            ),
            spark=SparkSettings(
                master=env.get("SPARK_MASTER", spark.master),
                extra_classpath=env.get("MLOPS_SPARK_EXTRA_CLASSPATH", classpath),
                metastore_dir=env.get("MLOPS_HIVE_METASTORE_DIR", embedded_metastore or "") or None,
                local_ip=env.get("SPARK_LOCAL_IP", spark.local_ip or "") or None,
                metastore_uri=metastore_uri,
                executor_classpath=env.get("MLOPS_SPARK_EXECUTOR_CLASSPATH", ""),
                cores_max=_positive_int(env, "MLOPS_SPARK_CORES_MAX"),
                lineage_classpath=env.get("MLOPS_SPARK_LINEAGE_CLASSPATH", lineage_classpath),
                kafka_source_classpath=env.get("MLOPS_SPARK_KAFKA_CLASSPATH", kafka_source_classpath),
                class_archive_dir=env.get("MLOPS_SPARK_CLASS_ARCHIVE_DIR", class_archives) or None,
            ),
            ray=RaySettings(
                env.get("RAY_ADDRESS") or None,
                auth_token=_ray_token(env),
                auth_mode=(env.get("RAY_AUTH_MODE") or "").strip().lower() or None,
                state_signing_key=env.get("MLOPS_TUNE_STATE_KEY") or None,
            ),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables `from_env` reads back into these settings (credentials included). Empty values
        are left out: an unset variable reads back as the local stack's default."""
        values = {
            "MLOPS_RAW_BUCKET": self.lake.raw_bucket,
            "MLOPS_LAKE_BUCKET": self.lake.lake_bucket,
            **self.kafka.to_env(),
            **self.mlflow.to_env(),
            "SPARK_MASTER": self.spark.master,
            "SPARK_LOCAL_IP": self.spark.local_ip,
            "RAY_ADDRESS": self.ray.address,
            # The mode only when it is not the one the token implies (Settings() writes no Ray variable).
            "RAY_AUTH_MODE": self.ray.auth_mode if self.ray.auth_mode != self.ray.implied_auth_mode else None,
            "RAY_AUTH_TOKEN": self.ray.auth_token,
            "MLOPS_TUNE_STATE_KEY": self.ray.state_signing_key,
        }
        spark_additions = {
            # Explicit, so that a child process does not look for them in the stack folder again.
            "MLOPS_SPARK_EXTRA_CLASSPATH": self.spark.extra_classpath,
            "MLOPS_HIVE_METASTORE_DIR": self.spark.metastore_dir,
            "MLOPS_HIVE_METASTORE_URI": self.spark.metastore_uri,
            "MLOPS_SPARK_EXECUTOR_CLASSPATH": self.spark.executor_classpath,
            "MLOPS_SPARK_CORES_MAX": str(self.spark.cores_max) if self.spark.cores_max else None,
            "MLOPS_SPARK_LINEAGE_CLASSPATH": self.spark.lineage_classpath,
            "MLOPS_SPARK_KAFKA_CLASSPATH": self.spark.kafka_source_classpath,
            "MLOPS_SPARK_CLASS_ARCHIVE_DIR": self.spark.class_archive_dir,
        }
        written = {key: value for key, value in {**values, **spark_additions}.items() if value}
        return {**self.s3.subprocess_env(), **written}


def _classpath_in(stack_dir: Path, name: str) -> str:
    """The classpath `make tools` wrote to the stack folder's `jars/NAME.classpath`, or "" when there is none."""
    path = stack_dir / "jars" / f"{name}.classpath"
    return path.read_text().strip() if path.is_file() else ""


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    text = (env.get(name) or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a positive whole number, not {text!r}")
    return int(text)


def _ray_token(env: Mapping[str, str]) -> str | None:
    """The Ray token as Ray itself finds it in an environment: RAY_AUTH_TOKEN, else the first line of the file named
    by RAY_AUTH_TOKEN_PATH (a path to a missing or empty file is an error, as it is for Ray)."""
    token = (env.get("RAY_AUTH_TOKEN") or "").strip()
    path = env.get("RAY_AUTH_TOKEN_PATH") or ""
    if token or not path:
        return token or None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ValueError(f"RAY_AUTH_TOKEN_PATH names {path}, which cannot be read: {error}") from None
    if not lines or not lines[0].strip():
        raise ValueError(f"RAY_AUTH_TOKEN_PATH names {path}, which holds no token")
    return lines[0].strip()
