"""Where the stack lives, which versions it runs, its two profiles, and the environment every process shares.

Every endpoint is configuration: the defaults point at the stack on 127.0.0.1, and any variable already set in the
environment (a real cluster's S3 endpoint, Kafka bootstrap servers, MLflow URI, Spark master, Ray address) wins.

Profiles: `local` runs each engine in its single-process local mode (Spark `local[*]`, Ray started inside the task,
embedded Derby metastore, SQLite under Airflow and MLflow); `cluster` runs the same DAG on real multi-process
clusters on this machine (stack.cluster): PostgreSQL, Airflow's separate components, a networked Hive metastore, a
Spark standalone master with two workers and a two-node Ray cluster with token authentication.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ml.settings import KafkaSettings, MlflowSettings, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent

# Pinned versions of what the stack fetches from the registries (Python packages are pinned in constraints.txt).
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
VERSITYGW_VERSION = "v1.8.0"
KAFKA_VERSION = "4.1.1"  # also in stack/maven/kafka-pom.xml and spark-lineage-pom.xml
HADOOP_AWS_VERSION = "3.5.0"  # must equal pyspark/jars/hadoop-client-api-*.jar; also in stack/maven/spark-s3a-pom.xml

# The bucket of MLflow's artifacts (the pipeline's own are ml.settings.LakeSettings'); `python -m stack.init_resources`
# creates all three.
MLFLOW_BUCKET = "mlflow"

PROFILES = ("local", "cluster")
DEFAULT_PROFILE = "local"

# The cluster profile's addresses on this machine (stack.cluster starts them).
POSTGRES_PORT = 5432
METASTORE_PORT = 9083
SPARK_MASTER_PORT = 7077
SPARK_MASTER_UI_PORT = 8090  # not 8080: Airflow's
SPARK_WORKER_UI_PORTS = (8091, 8092)
RAY_GCS_PORT = 6380  # not 6379: Redis's default
RAY_DASHBOARD_PORT = 8265
RAY_CLIENT_PORT = 10001
# One core per worker; a pipeline job takes both (executors on both workers), a second application still fits when a
# job asks for one.
SPARK_WORKER_CORES = 1
SPARK_JOB_CORES_MAX = 2


@dataclass(frozen=True)
class StackPaths:
    """Everything the local stack writes lives under one ignored folder (default `.stack/`)."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def jars(self) -> Path:
        return self.root / "jars"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def kafka_classpath_file(self) -> Path:
        return self.jars / "kafka.classpath"

    @property
    def spark_s3a_classpath_file(self) -> Path:
        return self.jars / "spark-s3a.classpath"

    @property
    def spark_lineage_classpath_file(self) -> Path:
        return self.jars / "spark-lineage.classpath"

    @property
    def spark_kafka_classpath_file(self) -> Path:
        return self.jars / "spark-kafka.classpath"

    @property
    def versitygw(self) -> Path:
        return self.bin / "versitygw"

    @property
    def postgresql_classpath_file(self) -> Path:
        return self.jars / "postgresql.classpath"

    @property
    def profile_file(self) -> Path:
        """The profile `up` started (absent when nothing runs)."""
        return self.run / "profile"

    @property
    def cluster_secrets_file(self) -> Path:
        return self.root / "cluster-secrets.json"

    @property
    def ray_token_file(self) -> Path:
        return self.root / "ray" / "auth_token"

    @property
    def stack_secrets_file(self) -> Path:
        """The passwords of the services of both profiles (stack_secrets)."""
        return self.root / "stack-secrets.json"


# Variables whose values are secrets: `python -m stack env` prints a command that reads each one instead of its value.
SECRET_VARIABLES = frozenset(
    {
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "RAY_AUTH_TOKEN",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",  # holds the database password
        "MLFLOW_BACKEND_STORE_URI",
        "MLOPS_TUNE_STATE_KEY",
        "MLOPS_KAFKA_PASSWORD",
        "MLFLOW_TRACKING_PASSWORD",
    }
)

# The local Kafka broker's users (stack.kafka_auth: the broker's configuration, and what each may do). `admin` and
# `controller` are the broker's own (super users); the stack's clients log in as `pipeline` (the pipeline, its tests
# and tools) or `serving` (the prediction service).
KAFKA_ADMIN_USER = "admin"
KAFKA_CONTROLLER_USER = "controller"
KAFKA_PIPELINE_USER = "pipeline"
KAFKA_SERVING_USER = "serving"
KAFKA_CLIENT_USERS = (KAFKA_PIPELINE_USER, KAFKA_SERVING_USER)
KAFKA_BOOTSTRAP = Settings().kafka.bootstrap_servers  # the local broker's client listener (ml.settings' default)

# The local S3 server's users (stack.s3_users: their bucket policies). The root key (local_credentials) stays the
# stack's set-up (buckets, users, policies) and the operator's and tests' key; the services get their own: `pipeline`
# (Airflow's aws_default: reads raw, reads and writes the lake except lake/tune/; Spark and the Hive metastore too),
# `tune` (Airflow's aws_tune: the tune task and its Ray workers; reads raw and the lake, writes lake/tune/ only) and
# `mlflow` (the MLflow server's artifact store: the mlflow bucket only). Serving has no S3 key: it loads models
# through MLflow.
S3_PIPELINE_USER = "pipeline"
S3_TUNE_USER = "tune"
S3_MLFLOW_USER = "mlflow"
S3_USERS = (S3_PIPELINE_USER, S3_TUNE_USER, S3_MLFLOW_USER)
# The local MLflow server's users (stack.mlflow_auth: its basic-auth app, and what each may do). `admin` only sets the
# others up; the stack's clients log in as `pipeline` or `serving` (read-only).
MLFLOW_ADMIN_USER = "admin"
MLFLOW_PIPELINE_USER = "pipeline"
MLFLOW_SERVING_USER = "serving"
MLFLOW_CLIENT_USERS = (MLFLOW_PIPELINE_USER, MLFLOW_SERVING_USER)
MLFLOW_URI = Settings().mlflow.tracking_uri  # the local server (ml.settings' default)

# Whom a process of the stack acts as, on every service that takes logins: the pipeline (Airflow's tasks,
# `python -m ml`, the tests), or the prediction service (`python -m stack run --as serving`: Kafka's and MLflow's
# `serving` users, and no S3 key: it reads models through MLflow's artifact proxy).
PIPELINE_IDENTITY = "pipeline"
SERVING_IDENTITY = "serving"
IDENTITIES = {
    PIPELINE_IDENTITY: {"kafka": KAFKA_PIPELINE_USER, "mlflow": MLFLOW_PIPELINE_USER},
    SERVING_IDENTITY: {"kafka": KAFKA_SERVING_USER, "mlflow": MLFLOW_SERVING_USER},
}


def write_private(path: Path, text: str) -> Path:
    """Write a file that holds a secret: created (or truncated) with mode 0600 before a byte of it is written, so that
    it is never readable by others, not even for a moment; an existing file's looser mode is tightened first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)
    return path


def stack_paths() -> StackPaths:
    """The stack folder: `$MLOPS_STACK_DIR`, else `.stack/` in the repository."""
    return StackPaths(Path(os.environ.get("MLOPS_STACK_DIR", REPO_ROOT / ".stack")).resolve())


def local_credentials(paths: StackPaths) -> dict[str, str]:
    """Access keys for the local S3 server, generated once per stack folder so that none is committed."""
    if paths.credentials_file.exists():
        stored: dict[str, str] = json.loads(paths.credentials_file.read_text())
        return stored
    paths.root.mkdir(parents=True, exist_ok=True)
    created = {"access_key": "mlops-" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(30)}
    write_private(paths.credentials_file, json.dumps(created))
    return created


def active_profile(paths: StackPaths, base: dict[str, str] | None = None) -> str:
    """`$MLOPS_STACK_PROFILE`, else the profile `up` started, else `local`."""
    named = (os.environ if base is None else base).get("MLOPS_STACK_PROFILE")
    if not named and paths.profile_file.exists():
        named = paths.profile_file.read_text().strip()
    profile = named or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise ValueError(f"unknown stack profile {profile!r}; the profiles are {', '.join(PROFILES)}")
    return profile


def cluster_secrets(paths: StackPaths) -> dict[str, str]:
    """The cluster profile's passwords, Airflow's shared secrets and Ray's token: generated once per stack folder
    (0600), so that none is committed and every component of one stack gets the same."""
    if paths.cluster_secrets_file.exists():
        stored: dict[str, str] = json.loads(paths.cluster_secrets_file.read_text())
        return stored
    from cryptography.fernet import Fernet

    created = {
        "postgres_password": secrets.token_urlsafe(24),
        "airflow_db_password": secrets.token_urlsafe(24),
        "mlflow_db_password": secrets.token_urlsafe(24),
        "metastore_db_password": secrets.token_urlsafe(24),
        "airflow_jwt_secret": secrets.token_urlsafe(32),
        "airflow_api_secret_key": secrets.token_urlsafe(32),
        "airflow_fernet_key": Fernet.generate_key().decode(),
        "ray_auth_token": secrets.token_hex(32),  # the format of Ray's own generator
    }
    write_private(paths.cluster_secrets_file, json.dumps(created))
    return created


def _access_key_maker(user: str) -> Callable[[], str]:
    """How an S3 user's access key is made: its name (the bucket policies' principal) and a random part."""
    return lambda: f"mlops-{user}-{secrets.token_hex(6)}"


# The secrets of stack_secrets, and how each is made (URL-, JSON- and JAAS-safe characters only: [A-Za-z0-9_-]).
STACK_SECRETS: dict[str, Callable[[], str]] = {
    **{
        f"kafka_{user}_password": lambda: secrets.token_urlsafe(30)
        for user in (KAFKA_ADMIN_USER, KAFKA_CONTROLLER_USER, *KAFKA_CLIENT_USERS)
    },
    "tune_state_key": lambda: secrets.token_urlsafe(32),  # signs the Tune state searches keep in S3 (ml.tune.signing)
    # The S3 users' keys: the access key names the user (it is the principal of the bucket policies), the secret is
    # random; both differ per stack, so that no key is a known default.
    **{f"s3_{user}_access_key": _access_key_maker(user) for user in S3_USERS},
    **{f"s3_{user}_secret_key": lambda: secrets.token_urlsafe(30) for user in S3_USERS},
    **{
        f"mlflow_{user}_password": lambda: secrets.token_urlsafe(30)
        for user in (MLFLOW_ADMIN_USER, *MLFLOW_CLIENT_USERS)
    },
    "mlflow_flask_secret_key": lambda: secrets.token_urlsafe(32),  # MLflow's basic-auth app's CSRF tokens
}


def stack_secrets(paths: StackPaths) -> dict[str, str]:
    """The secrets of what both profiles run (the Kafka broker's, the MLflow server's and the S3 server's users, the
    Tune state key): generated once per stack folder (0600), so that none is committed and none is a known default.
    A secret that an older file lacks is generated and added to it; the ones it has are kept."""
    stored: dict[str, str] = (
        json.loads(paths.stack_secrets_file.read_text()) if paths.stack_secrets_file.exists() else {}
    )
    missing = {name: make() for name, make in STACK_SECRETS.items() if not stored.get(name)}
    if missing:
        stored = {**stored, **missing}
        write_private(paths.stack_secrets_file, json.dumps(stored))
    return stored


def tune_state_key(paths: StackPaths) -> str:
    """The key that signs the Tune state searches keep in S3 (ml.tune.signing): one per stack folder, so that every
    search, retry and Airflow task of one stack signs and checks with the same key."""
    return stack_secrets(paths)["tune_state_key"]


def s3_user_keys(paths: StackPaths, user: str) -> dict[str, str]:
    """The access and secret key of one of the local S3 server's users (stack.s3_users), in local_credentials' form."""
    if user not in S3_USERS:
        raise ValueError(f"{user!r} is not an S3 user of the stack ({', '.join(S3_USERS)})")
    stored = stack_secrets(paths)
    return {"access_key": stored[f"s3_{user}_access_key"], "secret_key": stored[f"s3_{user}_secret_key"]}


def on_stack_s3(paths: StackPaths, env: Mapping[str, str]) -> bool:
    """Whether `env` signs with the root key of the stack's own S3 server (which has the stack's users), rather than
    with keys of another S3 (the operator's own, whose users are theirs to manage)."""
    return env.get("AWS_ACCESS_KEY_ID") == local_credentials(paths)["access_key"]


def as_s3_user(paths: StackPaths, env: dict[str, str], user: str) -> dict[str, str]:
    """Make `env` (a service's environment) sign as the stack's S3 user `user` instead of with the root key, when it
    is on the stack's own S3 server; another S3's keys are left as they are. Returns `env`."""
    if on_stack_s3(paths, env):
        keys = s3_user_keys(paths, user)
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = keys["access_key"], keys["secret_key"]
        env.pop("AWS_SESSION_TOKEN", None)
    return env


def kafka_user_settings(paths: StackPaths, user: str, bootstrap: str = KAFKA_BOOTSTRAP) -> KafkaSettings:
    """How `user` logs in to the local broker (SASL/SCRAM-SHA-512 with its generated password)."""
    if user not in (KAFKA_ADMIN_USER, *KAFKA_CLIENT_USERS):
        raise ValueError(
            f"{user!r} is not a Kafka user of the stack ({KAFKA_ADMIN_USER}, {', '.join(KAFKA_CLIENT_USERS)})"
        )
    password = stack_secrets(paths)[f"kafka_{user}_password"]
    return KafkaSettings(bootstrap, "SASL_PLAINTEXT", "SCRAM-SHA-512", username=user, password=password)


def mlflow_user_settings(paths: StackPaths, user: str, tracking_uri: str = MLFLOW_URI) -> MlflowSettings:
    """How `user` logs in to the local MLflow server (its basic-auth app, with the user's generated password)."""
    if user not in (MLFLOW_ADMIN_USER, *MLFLOW_CLIENT_USERS):
        raise ValueError(
            f"{user!r} is not an MLflow user of the stack ({MLFLOW_ADMIN_USER}, {', '.join(MLFLOW_CLIENT_USERS)})"
        )
    return MlflowSettings(tracking_uri, username=user, password=stack_secrets(paths)[f"mlflow_{user}_password"])


def postgres_url(paths: StackPaths, database: str, driver: str = "postgresql+psycopg2") -> str:
    """The SQLAlchemy URL of one of the cluster profile's databases (its role has the database's name)."""
    password = cluster_secrets(paths)[f"{database}_db_password"]
    return f"{driver}://{database}:{password}@127.0.0.1:{POSTGRES_PORT}/{database}"


def cluster_environment(paths: StackPaths) -> dict[str, str]:
    """What the cluster profile changes in the shared environment: the clusters' addresses, Airflow on PostgreSQL with
    LocalExecutor and its shared secrets, Ray's token. MLflow's database URL is given to the MLflow server only."""
    secret = cluster_secrets(paths)
    if not paths.ray_token_file.exists():
        write_private(paths.ray_token_file, secret["ray_auth_token"])
    return {
        "SPARK_MASTER": f"spark://127.0.0.1:{SPARK_MASTER_PORT}",
        "MLOPS_SPARK_CORES_MAX": str(SPARK_JOB_CORES_MAX),
        "MLOPS_HIVE_METASTORE_URI": f"thrift://127.0.0.1:{METASTORE_PORT}",
        "MLOPS_HIVE_METASTORE_DIR": "",  # no embedded Derby
        "RAY_ADDRESS": f"127.0.0.1:{RAY_GCS_PORT}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(paths.ray_token_file),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres_url(paths, "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret["airflow_jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": secret["airflow_api_secret_key"],
        "AIRFLOW__CORE__FERNET_KEY": secret["airflow_fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:8080/execution/",
        # A task whose processes died (with the scheduler that ran them, under LocalExecutor) is failed and retried
        # after a minute without a heartbeat, not Airflow's default five (tests/cluster/test_scheduler_failure.py).
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
    }


def stack_environment(
    base: dict[str, str] | None = None, profile: str | None = None, identity: str = PIPELINE_IDENTITY
) -> dict[str, str]:
    """The environment shared by the stack, the tests, Airflow and `python -m ml`: the profile's defaults under
    `base` (variables already set win). `identity`: whom its clients act as on the stack's Kafka broker and MLflow
    server (IDENTITIES: the pipeline; `serving` for the prediction service, which also gets no S3 key)."""
    if identity not in IDENTITIES:
        raise ValueError(f"{identity!r} is not an identity of the stack's clients ({', '.join(IDENTITIES)})")
    base = dict(os.environ if base is None else base)
    paths = stack_paths()
    profile = profile or active_profile(paths, base)
    venv_bin = Path(REPO_ROOT / ".venv" / "bin")
    defaults: dict[str, str] = {
        # The endpoints: ml.settings' defaults, the one place they are written down.
        **Settings().to_env(),
        "MLOPS_STACK_DIR": str(paths.root),
        "MLOPS_SERVE_URL": "http://127.0.0.1:8000",
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        # OpenLineage events of every task and DAG run, to the broker (stack.airflow_home.openlineage_connection).
        "AIRFLOW__OPENLINEAGE__CONFIG_CONN_ID": "openlineage_default",
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "mlops-airflow",
        # The Spark job's events name the submitting task as their parent (ml.preprocess.lineage).
        "AIRFLOW__OPENLINEAGE__SPARK_INJECT_PARENT_JOB_INFO": "True",
        "MLOPS_STACK_PROFILE": profile,
        **(cluster_environment(paths) if profile == "cluster" else {}),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")]),
        "PATH": os.pathsep.join([str(venv_bin), base.get("PATH", "/usr/bin:/bin")]),
    }
    env = {**defaults, **base}
    env["MLOPS_STACK_PROFILE"] = profile  # the one this environment was built for, whatever the caller's said
    # Paths must keep the project's entries even when the caller has its own.
    env["PATH"] = defaults["PATH"] if str(venv_bin) not in base.get("PATH", "") else base["PATH"]
    if "PYTHONPATH" in base and str(REPO_ROOT) not in base["PYTHONPATH"]:
        env["PYTHONPATH"] = os.pathsep.join([defaults["PYTHONPATH"], base["PYTHONPATH"]])
    # The local S3 server's keys, unless real ones are configured.
    if "AWS_ACCESS_KEY_ID" not in base:
        creds = local_credentials(paths)
        env["AWS_ACCESS_KEY_ID"] = creds["access_key"]
        env["AWS_SECRET_ACCESS_KEY"] = creds["secret_key"]
    env.setdefault("MLFLOW_S3_ENDPOINT_URL", env["AWS_ENDPOINT_URL"])
    if "MLOPS_TUNE_STATE_KEY" not in base:
        env["MLOPS_TUNE_STATE_KEY"] = tune_state_key(paths)
    # The local broker's login as the identity's user, unless the caller's Kafka is another broker or a login of its
    # own (one of the stack's users, as an `eval` of `python -m stack env` exports, is the stack's: replaced).
    users = IDENTITIES[identity]
    on_stack_broker = base.get("KAFKA_BOOTSTRAP_SERVERS", KAFKA_BOOTSTRAP) == KAFKA_BOOTSTRAP
    if on_stack_broker and base.get("MLOPS_KAFKA_USERNAME", users["kafka"]) in KAFKA_CLIENT_USERS:
        env.update(kafka_user_settings(paths, users["kafka"]).to_env())
    # The same for the local MLflow server's login.
    on_stack_mlflow = base.get("MLFLOW_TRACKING_URI", MLFLOW_URI) == MLFLOW_URI
    if on_stack_mlflow and base.get("MLFLOW_TRACKING_USERNAME", users["mlflow"]) in MLFLOW_CLIENT_USERS:
        env.update(mlflow_user_settings(paths, users["mlflow"]).to_env())
    if identity == SERVING_IDENTITY:
        # The prediction service reads models through MLflow's artifact proxy: it holds no S3 key at all.
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(key, None)
    return env


def apply_stack_environment(profile: str | None = None, identity: str = PIPELINE_IDENTITY) -> dict[str, str]:
    """Put the stack environment into `os.environ` (for tests and the CLI) and return it."""
    env = stack_environment(profile=profile, identity=identity)
    os.environ.update(env)
    return env
