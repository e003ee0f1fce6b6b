"""The project's Airflow home (`.stack/airflow`): a migrated metadata database and connections to the local stack.

Connections are built from the same environment as everything else, so pointing the stack at a real cluster
(`AWS_ENDPOINT_URL`, `SPARK_MASTER`, `KAFKA_BOOTSTRAP_SERVERS`, `MLFLOW_TRACKING_URI`) changes them too.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml.settings import KafkaSettings, Settings
from ml.topics import OPENLINEAGE
from stack.config import (
    REPO_ROOT,
    S3_PIPELINE_USER,
    S3_TUNE_USER,
    S3_USERS,
    StackPaths,
    on_stack_s3,
    s3_user_keys,
    write_private,
)
from stack.services import StackError


def connections_from_environment(
    env: dict[str, str], s3_users: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, dict[str, Any]]:
    """Airflow connections for the configured endpoints, in `airflow connections import` JSON form. The AWS
    connections sign as the stack's S3 users (`s3_users`: user -> its keys, on the stack's own S3 server): aws_default
    as `pipeline`, aws_tune (the tune task's) as `tune`; without users (another S3), both with the environment's keys.
    The Spark
    connection's extra carries what the pipeline adds to its jobs (ml.settings.SparkSettings: the s3a jars, the
    metastore (a Derby folder or a Thrift URI), the cores a job takes, the driver's bind address); the Ray connection
    carries the key that signs the tune task's state in S3 and, for a cluster, its address and token (without an
    address, the tune task starts a local Ray); the Kafka connection the brokers and the login (the stack's
    `pipeline` user on the local broker); the MLflow connection the server and its login (the stack's `pipeline`
    user)."""
    settings = Settings.from_env(env)
    spark = settings.spark
    master = env["SPARK_MASTER"]
    spark_host, _, spark_port = master.rpartition(":") if master.startswith("spark://") else (master, "", "")
    own_keys = {"access_key": env["AWS_ACCESS_KEY_ID"], "secret_key": env["AWS_SECRET_ACCESS_KEY"]}

    def aws(user: str) -> dict[str, Any]:
        keys = s3_users[user] if s3_users is not None else own_keys
        return {
            "conn_type": "aws",
            "login": keys["access_key"],
            "password": keys["secret_key"],
            "extra": json.dumps({"endpoint_url": env["AWS_ENDPOINT_URL"], "region_name": env["AWS_DEFAULT_REGION"]}),
        }

    return {
        "aws_default": aws(S3_PIPELINE_USER),
        "aws_tune": aws(S3_TUNE_USER),
        "spark_default": {
            "conn_type": "spark",
            "host": spark_host,
            "port": int(spark_port) if spark_port else None,
            "extra": json.dumps(
                {
                    "spark-binary": "spark-submit",
                    "deploy-mode": "client",
                    "extra-classpath": spark.extra_classpath,
                    "metastore-dir": spark.metastore_dir,
                    "metastore-uri": spark.metastore_uri,
                    "cores-max": spark.cores_max,
                    "local-ip": spark.local_ip,
                    "lineage-classpath": spark.lineage_classpath,
                    "class-archive-dir": spark.class_archive_dir,
                }
            ),
        },
        "kafka_default": {"conn_type": "kafka", "extra": json.dumps(kafka_connection_extra(settings.kafka))},
        "kafka_s3_events": {
            "conn_type": "kafka",
            "extra": json.dumps({**kafka_connection_extra(settings.kafka), **S3_EVENTS_CONSUMER}),
        },
        "kafka_drift_events": {
            "conn_type": "kafka",
            "extra": json.dumps({**kafka_connection_extra(settings.kafka), **DRIFT_EVENTS_CONSUMER}),
        },
        "openlineage_default": openlineage_connection(settings.kafka),
        "mlflow_default": _mlflow_connection(settings),
        **(
            {"ray_default": _ray_connection(settings)} if settings.ray.address or settings.ray.state_signing_key else {}
        ),
    }


# The asset watcher's consumer (plugins/mlops_airflow/assets.py): a group of its own (the pipeline user may read
# groups named mlops-*), offsets committed only by the shared-stream trigger after the asset event is stored, the
# topic read from its start the first time, and a dead triggerer's partitions handed to its successor within 10 s.
S3_EVENTS_CONSUMER = {
    "group.id": "mlops-airflow-raw-uploads",
    "enable.auto.commit": "false",
    "auto.offset.reset": "earliest",
    "session.timeout.ms": "10000",
}
# The drift watcher's consumer (the same settings, a group of its own).
DRIFT_EVENTS_CONSUMER = {**S3_EVENTS_CONSUMER, "group.id": "mlops-airflow-drift-events"}


def kafka_connection_extra(kafka: KafkaSettings) -> dict[str, str]:
    """A Kafka connection's extra in librdkafka's names, as Airflow's Kafka provider passes it to confluent-kafka (so
    the provider's hooks and triggers could share the connection); plugins/mlops_airflow/hooks.py reads it back. The
    password's key ends in "password": Airflow masks it in the UI and in task logs."""
    extra = {"bootstrap.servers": kafka.bootstrap_servers}
    if kafka.security_protocol != "PLAINTEXT":
        extra["security.protocol"] = str(kafka.security_protocol)
    if kafka.uses_sasl:
        extra.update(
            {
                "sasl.mechanisms": str(kafka.sasl_mechanism),
                "sasl.username": str(kafka.username),
                "sasl.password": kafka.password or "",
            }
        )
    return extra


OPENLINEAGE_CONNECTION = "openlineage_default"  # [openlineage] config_conn_id of the stack's Airflow


def openlineage_connection(kafka: KafkaSettings) -> dict[str, Any]:
    """The OpenLineage provider's client configuration (`[openlineage] config_conn_id`): its Kafka transport to
    ml.topics.OPENLINEAGE on the pipeline's broker with the pipeline's login, flushed after each event (a task's
    process may end right after it). In a connection rather than in airflow.cfg, so the password is stored encrypted
    and masked like the other connections'."""
    config = {**kafka_connection_extra(kafka), "client.id": "airflow-openlineage", "acks": "all"}
    transport = {"type": "kafka", "topic": OPENLINEAGE.name, "config": config, "flush": True}
    return {"conn_type": "generic", "extra": json.dumps({"transport": transport})}


def _mlflow_connection(settings: Settings) -> dict[str, Any]:
    # The login of MLflow's basic-auth app (the stack's `pipeline` user); the password is masked by Airflow.
    login = (
        {"login": settings.mlflow.username, "password": settings.mlflow.password} if settings.mlflow.username else {}
    )
    return {"conn_type": "http", "host": settings.mlflow.tracking_uri, **login}


def _ray_connection(settings: Settings) -> dict[str, Any]:
    # The key's extra is named so that Airflow redacts it ("secret"), in the UI and in task logs.
    extra = {"address": settings.ray.address, "state-signing-secret": settings.ray.state_signing_key}
    return {
        "conn_type": "generic",
        "password": settings.ray.auth_token,
        "extra": json.dumps({name: value for name, value in extra.items() if value}),
    }


def _airflow(args: list[str], env: dict[str, str]) -> None:
    airflow = str(REPO_ROOT / ".venv" / "bin" / "airflow")
    result = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"`airflow {' '.join(args)}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def prepare_airflow_home(paths: StackPaths, env: dict[str, str], metastore_writers: int = 1) -> str:
    """Migrate the metadata database and (re)import the stack's connections; idempotent. `metastore_writers`: the
    slots of the `spark_metastore` pool (one for an embedded Derby metastore)."""
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    _airflow(["db", "migrate"], env)
    # On the stack's own S3 server, the tasks sign as its users (stack.s3_users), never with the root key.
    s3_users = {user: s3_user_keys(paths, user) for user in S3_USERS} if on_stack_s3(paths, env) else None
    connections = connections_from_environment(env, s3_users)
    connections_file = write_private(paths.run / "airflow-connections.json", json.dumps(connections, indent=2))
    try:
        _airflow(["connections", "import", "--overwrite", str(connections_file)], env)
    finally:
        connections_file.unlink(missing_ok=True)  # it holds the S3 secret
    # One Spark job at a time may hold an embedded Hive (Derby) metastore; a networked one admits many.
    _airflow(["pools", "set", "spark_metastore", str(metastore_writers), "Spark jobs that write Hive tables"], env)
    write_admin_password(Path(env["AIRFLOW_HOME"]))
    return f"airflow home: {env['AIRFLOW_HOME']} migrated, connections imported"


SIMPLE_AUTH_FILE = "simple_auth_manager_passwords.json.generated"  # the simple auth manager's logins


def write_admin_password(airflow_home: Path) -> Path:
    """Generate the admin password into the simple auth manager's file, once, readable by the owner only.

    Airflow generates it itself when the file lacks the user, and then prints it to its log; written here first,
    it stays out of `.stack/logs/airflow.log`."""
    path = airflow_home / SIMPLE_AUTH_FILE
    if not path.exists():
        write_private(path, json.dumps({"admin": secrets.token_urlsafe(16)}) + "\n")
    path.chmod(0o600)
    return path
