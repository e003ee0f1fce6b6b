"""The environment every process of the stack shares, per profile and per identity.

Every endpoint is configuration: the defaults point at the stack on 127.0.0.1, and any variable already set in the
environment (a real cluster's S3 endpoint, Kafka bootstrap servers, MLflow URI, Spark master, Ray address) wins.

Profiles: `local` runs each engine in its single-process local mode (Spark `local[*]`, Ray started inside the task,
embedded Derby metastore, SQLite under Airflow and MLflow); `cluster` runs the same DAG on real multi-process
clusters on this machine (stack.cluster): PostgreSQL, Airflow's separate components, a networked Hive metastore, a
Spark standalone master with two workers and a two-node Ray cluster with token authentication.
"""

from __future__ import annotations

import os
from pathlib import Path

from ml.settings import Settings
from stack.config.addresses import (
    KAFKA_BOOTSTRAP,
    METASTORE_PORT,
    MLFLOW_URI,
    RAY_GCS_PORT,
    SPARK_JOB_CORES_MAX,
    SPARK_MASTER_PORT,
)
from stack.config.credentials import (
    as_s3_user,
    cluster_secrets,
    kafka_user_settings,
    local_credentials,
    mlflow_user_settings,
    postgres_url,
    tune_state_key,
)
from stack.config.paths import REPO_ROOT, StackPaths, stack_paths, write_private
from stack.config.users import (
    IDENTITIES,
    IDENTITY_S3_USERS,
    KAFKA_CLIENT_USERS,
    KEYLESS_IDENTITIES,
    MLFLOW_CLIENT_USERS,
    PIPELINE_IDENTITY,
)

PROFILES = ("local", "cluster")
DEFAULT_PROFILE = "local"

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


def active_profile(paths: StackPaths, base: dict[str, str] | None = None) -> str:
    """`$MLOPS_STACK_PROFILE`, else the profile `up` started, else `local`."""
    named = (os.environ if base is None else base).get("MLOPS_STACK_PROFILE")
    if not named and paths.profile_file.exists():
        named = paths.profile_file.read_text().strip()
    profile = named or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise ValueError(f"unknown stack profile {profile!r}; the profiles are {', '.join(PROFILES)}")
    return profile


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
    `base` (variables already set win). `identity`: whom its clients act as on the stack's Kafka broker, MLflow
    server and S3 server (as_identity: the pipeline; `serving` for the prediction service, which gets no S3 key;
    `monitor` for the streaming drift monitor)."""
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
        # The scheduler sleeps this long after a loop that did nothing; a task that ends waits for the next loop to
        # queue the one after it. At Airflow's default of 1 s that was ~0.5 s per task boundary of a DAG run (B7).
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
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
    return as_identity(paths, env, identity)


def as_identity(paths: StackPaths, env: dict[str, str], identity: str) -> dict[str, str]:
    """Make `env` (the stack environment, or a service's copy of it) log in as `identity` (IDENTITIES) on the stack's
    own services: its user on the local Kafka broker and MLflow server, and on the local S3 server its user's key
    (IDENTITY_S3_USERS), no key (KEYLESS_IDENTITIES) or the root key. A login of the stack's (as an `eval` of
    `python -m stack env` exports) is replaced; another broker, server or S3, or a login of the caller's own, is left
    as it is. Returns `env`."""
    if identity not in IDENTITIES:
        raise ValueError(f"{identity!r} is not an identity of the stack's clients ({', '.join(IDENTITIES)})")
    users = IDENTITIES[identity]
    # The local broker's login as the identity's user, unless `env`'s Kafka is another broker or a login of its own.
    on_stack_broker = env.get("KAFKA_BOOTSTRAP_SERVERS", KAFKA_BOOTSTRAP) == KAFKA_BOOTSTRAP
    if on_stack_broker and env.get("MLOPS_KAFKA_USERNAME", users["kafka"]) in KAFKA_CLIENT_USERS:
        env.update(kafka_user_settings(paths, users["kafka"]).to_env())
    # The same for the local MLflow server's login.
    on_stack_mlflow = env.get("MLFLOW_TRACKING_URI", MLFLOW_URI) == MLFLOW_URI
    if on_stack_mlflow and env.get("MLFLOW_TRACKING_USERNAME", users["mlflow"]) in MLFLOW_CLIENT_USERS:
        env.update(mlflow_user_settings(paths, users["mlflow"]).to_env())
    # The local S3 server's key: the identity's user's instead of the root key (as_s3_user leaves another S3's alone).
    if identity in IDENTITY_S3_USERS:
        as_s3_user(paths, env, IDENTITY_S3_USERS[identity])
    if identity in KEYLESS_IDENTITIES:
        # The prediction service reads models through MLflow's artifact proxy: it holds no S3 key at all.
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(key, None)
    return env


def apply_stack_environment(profile: str | None = None, identity: str = PIPELINE_IDENTITY) -> dict[str, str]:
    """Put the stack environment into `os.environ` (for tests and the CLI) and return it."""
    env = stack_environment(profile=profile, identity=identity)
    os.environ.update(env)
    return env
