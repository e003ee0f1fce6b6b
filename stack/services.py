"""The local profile's long-running services (S3 server, Kafka, MLflow, the drift monitor, Airflow), each a plain
process bound to 127.0.0.1 and run by stack.process. The cluster profile reuses S3, Kafka and the drift monitor and
adds its own (stack.cluster). The Kafka broker, with its SASL logins and ACLs, has a module of its own
(stack.kafka_broker, stack.kafka_auth)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from ml.settings import LakeSettings
from ml.topics import S3_EVENTS
from stack.config import MLFLOW_BUCKET, MONITOR_IDENTITY, REPO_ROOT, S3_MLFLOW_USER, StackPaths, as_identity, as_s3_user
from stack.kafka_broker import (  # noqa: F401 - re-exported: the local profile's Kafka broker (stack.kafka_broker)
    KAFKA,
    KAFKA_NOTIFIER_PORT,
    KAFKA_PROPERTIES,
    kafka_answers,
    kafka_properties,
    prepare_kafka_storage,
)
from stack.mlflow_auth import stack_server_environment
from stack.process import (  # noqa: F401 - re-exported: the stack's callers import them from here
    Service,
    StackError,
    group_alive,
    http_ok,
    java,
    port_in_use,
    signal_group,
    wait_until,
)

# --- S3: Versity S3 Gateway over a posix folder ---------------------------------------------------------------------


# Which notifications the S3 server sends (its filter file): created objects only, every way they are created (put,
# POST form, copy, multipart upload). Removals and tagging start no training.
S3_EVENT_FILTER = {"s3:ObjectCreated:*": True}


def s3_gateway_command(
    binary: Path,
    root: Path,
    address: str,
    region: str,
    webui: tuple[str, str] | None = None,
    notify_kafka: str | None = None,
) -> list[str]:
    """The S3 server's command line (the local stack's, and the tests' private servers'): a posix backend under
    `root` (buckets, object versions, sidecar metadata) and its internal IAM (`root/iam`: the users of stack.s3_users,
    kept in a 0600 file), listening on `address`; `webui`: the web console's address and the gateway it talks to;
    `notify_kafka`: the Kafka listener (host:port) its bucket notifications go to, on ml.topics.S3_EVENTS, filtered
    by `root/event-filter.json` (prepare_s3_data writes it). The root keys are not on it: they go through the
    environment (ROOT_ACCESS_KEY_ID, ROOT_SECRET_ACCESS_KEY)."""
    console = ["--webui", webui[0], "--webui-no-tls", "--webui-gateways", webui[1]] if webui else []
    filter_file = str(root / "event-filter.json")
    events = (
        ["--event-kafka-url", notify_kafka, "--event-kafka-topic", S3_EVENTS.name, "--event-filter", filter_file]
        if notify_kafka
        else []
    )
    return [
        str(binary),
        "--port",
        address,
        *console,
        *events,
        "--region",
        region,
        "--iam-dir",
        str(root / "iam"),
        "--quiet",
        "posix",
        "--versioning-dir",
        str(root / "versions"),
        "--sidecar",
        str(root / "meta"),
        str(root / "buckets"),
    ]


S3_DATA_FOLDERS = ("buckets", "versions", "meta", "iam")


def prepare_s3_data(root: Path) -> None:
    """The S3 server's folders, its IAM folder private (0700: the users' secrets), and its notifications filter."""
    for sub in S3_DATA_FOLDERS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "iam").chmod(0o700)
    (root / "event-filter.json").write_text(json.dumps(S3_EVENT_FILTER) + "\n")


def _s3_command(paths: StackPaths, env: dict[str, str]) -> list[str]:
    webui = ("127.0.0.1:9001", "http://127.0.0.1:9000")
    notify = f"127.0.0.1:{KAFKA_NOTIFIER_PORT}"
    return s3_gateway_command(
        paths.versitygw, paths.data / "s3", "127.0.0.1:9000", env["AWS_DEFAULT_REGION"], webui, notify_kafka=notify
    )


def _s3_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    # The root keys go through the environment: a command line is readable by every local user.
    env["ROOT_ACCESS_KEY_ID"] = env["AWS_ACCESS_KEY_ID"]
    env["ROOT_SECRET_ACCESS_KEY"] = env["AWS_SECRET_ACCESS_KEY"]
    if not paths.versitygw.exists():
        raise StackError(f"s3: {paths.versitygw} is missing; run `make tools` (needs Go) first")
    prepare_s3_data(paths.data / "s3")


# 403 without credentials is the gateway answering: good enough for liveness.
S3 = Service(
    name="s3",
    port=9000,
    extra_ports=(9001,),
    command=_s3_command,
    prepare=_s3_prepare,
    is_healthy=lambda env: http_ok("http://127.0.0.1:9000/", (200, 403)),
    start_timeout_s=30,
    url="http://127.0.0.1:9000 (web console http://127.0.0.1:9001)",
)


# --- MLflow: tracking server + model registry, SQLite backend, artifacts proxied to the S3 server, basic-auth app ---


def mlflow_server_command(port: int, artifacts_bucket: str, backend_store_uri: str | None) -> list[str]:
    """The MLflow server's command line: the basic-auth app on 127.0.0.1:`port`, one worker, artifacts proxied to
    `artifacts_bucket` (the stack's, and the tests' private servers: tests/support/private_services.py)."""
    return [
        str(REPO_ROOT / ".venv" / "bin" / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",  # every request needs a login (stack.mlflow_auth)
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--artifacts-destination",
        f"s3://{artifacts_bucket}/artifacts",
        *(["--backend-store-uri", backend_store_uri] if backend_store_uri else []),
    ]


def _mlflow_command(paths: StackPaths, env: dict[str, str]) -> list[str]:
    db = paths.data / "mlflow" / "mlflow.db"
    # A database given in the environment (the cluster profile's PostgreSQL) wins over the local SQLite file.
    backend = None if env.get("MLFLOW_BACKEND_STORE_URI") else f"sqlite:///{db}"
    return mlflow_server_command(5000, env.get("MLOPS_MLFLOW_BUCKET", "mlflow"), backend)


def _mlflow_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    (paths.data / "mlflow").mkdir(parents=True, exist_ok=True)
    # The artifact store signs as the mlflow user (the mlflow bucket only), not with the root key.
    as_s3_user(paths, env, S3_MLFLOW_USER)
    # The server's background job runner (GenAI evaluation jobs) starts ~9 worker processes (~2 GiB) we never use.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.update(stack_server_environment(paths))
    # The server's own environment holds no client login (the stack environment's is the pipeline's).
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)


MLFLOW = Service(
    name="mlflow",
    port=5000,
    command=_mlflow_command,
    prepare=_mlflow_prepare,
    is_healthy=lambda env: http_ok("http://127.0.0.1:5000/health"),
    start_timeout_s=120,
    url="http://127.0.0.1:5000",
)

# --- Airflow: `airflow standalone` (API server + web UI, scheduler, dag-processor, triggerer) ---------------------


def _airflow_healthy(env: dict[str, str]) -> bool:
    import json

    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/api/v2/monitor/health", timeout=2) as response:
            health = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all(health.get(name, {}).get("status") == "healthy" for name in components)


# Airflow's tasks take every endpoint and key from connections (plugins/mlops_airflow/hooks.py), never from the
# environment. Airflow runs without these variables, as on a deployment whose workers have none of them, so that a
# task that still read one would fail here too (and no S3 key sits in Airflow's processes' environments).
AIRFLOW_UNSET = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "MLOPS_KAFKA_SECURITY_PROTOCOL",
    "MLOPS_KAFKA_SASL_MECHANISM",
    "MLOPS_KAFKA_USERNAME",
    "MLOPS_KAFKA_PASSWORD",
    "SPARK_MASTER",
    "SPARK_LOCAL_IP",
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "MLOPS_HIVE_METASTORE_URI",
    "MLOPS_HIVE_METASTORE_DIR",
    "MLOPS_SPARK_CORES_MAX",
    "MLOPS_SPARK_EXTRA_CLASSPATH",
    "MLOPS_SPARK_EXECUTOR_CLASSPATH",
    "MLOPS_RAW_BUCKET",
    "MLOPS_LAKE_BUCKET",
    "MLOPS_MLFLOW_BUCKET",
    "MLOPS_SERVE_URL",
    "MLOPS_TUNE_STATE_KEY",  # the tune task takes it from ray_default (stack.airflow_home)
)


def _airflow_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    # The lake bucket reaches the DAG as the Airflow variable mlops_lake_bucket (dags/mlops_training.py): the one
    # that `up` created the bucket for, unless the variable is set otherwise.
    env.setdefault("AIRFLOW_VAR_MLOPS_LAKE_BUCKET", env.get("MLOPS_LAKE_BUCKET") or LakeSettings.lake_bucket)
    # ... and the MLflow bucket, which a run's raw_uri may not name (validate_params).
    env.setdefault("AIRFLOW_VAR_MLOPS_MLFLOW_BUCKET", env.get("MLOPS_MLFLOW_BUCKET") or MLFLOW_BUCKET)
    for key in AIRFLOW_UNSET:
        env.pop(key, None)


AIRFLOW = Service(
    name="airflow",
    port=8080,
    command=lambda paths, env: [str(REPO_ROOT / ".venv" / "bin" / "airflow"), "standalone"],
    prepare=_airflow_prepare,
    is_healthy=_airflow_healthy,
    start_timeout_s=180,
    url="http://127.0.0.1:8080 (login: admin, password in .stack/airflow/simple_auth_manager_passwords.json.generated)",
)

# --- the streaming drift monitor: `python -m ml monitor` (ml.drift), a Spark driver with its UI on 4041 -----------

DRIFT_MONITOR_UI_PORT = 4041  # Spark's UI of the monitor (4040 stays the default of other Spark drivers)


def _drift_monitor_healthy(env: dict[str, str]) -> bool:
    """Its streaming query runs: the Structured Streaming tab of its Spark UI lists it among the active queries."""
    try:
        url = f"http://127.0.0.1:{DRIFT_MONITOR_UI_PORT}/StreamingQuery/"
        with urllib.request.urlopen(url, timeout=2) as response:
            return "Active Streaming Queries (1)" in response.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return False


def _drift_monitor_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    # Its own identity, not the pipeline's: the `monitor` user of Kafka (reads the serving metrics, writes the drift
    # topic), of MLflow (reads registered models) and of S3 (reads the training distributions, writes lake/monitor/).
    as_identity(paths, env, MONITOR_IDENTITY)
    # A local Spark in both profiles: a streaming query holds its executors' cores for as long as it runs, and the
    # cluster profile's few standalone cores are the batch jobs'. (On a real cluster, give it SPARK_MASTER and
    # MLOPS_SPARK_CORES_MAX.)
    env["SPARK_MASTER"] = "local[2]"


DRIFT_MONITOR = Service(
    name="drift-monitor",
    port=DRIFT_MONITOR_UI_PORT,
    command=lambda paths, env: [
        str(REPO_ROOT / ".venv" / "bin" / "python"),
        "-m",
        "ml",
        "monitor",
        "--ui-port",
        str(DRIFT_MONITOR_UI_PORT),
    ],
    prepare=_drift_monitor_prepare,
    is_healthy=_drift_monitor_healthy,
    start_timeout_s=180,
    url=f"http://127.0.0.1:{DRIFT_MONITOR_UI_PORT}/StreamingQuery/ (mlops.serving.metrics.v1 -> mlops.drift.v1)",
)

# Start order matters: the S3 server sends a test notification when it starts and refuses to start when Kafka (or the
# notifications topic, which `up` creates right after starting Kafka) is not there; MLflow writes artifacts into the S3
# server; the drift monitor reads Kafka, keeps its checkpoint in S3 and asks MLflow for model versions (as its own
# users: stack.config.users' monitor). Airflow is started on demand (`up --airflow`).
SERVICES: tuple[Service, ...] = (KAFKA, S3, MLFLOW, DRIFT_MONITOR)
ALL_SERVICES: tuple[Service, ...] = (*SERVICES, AIRFLOW)
