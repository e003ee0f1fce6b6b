"""Who the stack's clients are: the users of the local Kafka broker, S3 server and MLflow server, and the identities
(which user of each service) a process of the stack acts as. What each user may do is the business of
stack.kafka_auth, stack.s3_users and stack.mlflow_auth; their secrets are stack.config.credentials'."""

from __future__ import annotations

# The local Kafka broker's users (stack.kafka_auth: the broker's configuration, and what each may do). `admin` and
# `controller` are the broker's own (super users); the stack's clients log in as `pipeline` (the pipeline, its tests
# and tools), `serving` (the prediction service) or `monitor` (the streaming drift monitor).
KAFKA_ADMIN_USER = "admin"
KAFKA_CONTROLLER_USER = "controller"
KAFKA_PIPELINE_USER = "pipeline"
KAFKA_SERVING_USER = "serving"
KAFKA_MONITOR_USER = "monitor"
KAFKA_CLIENT_USERS = (KAFKA_PIPELINE_USER, KAFKA_SERVING_USER, KAFKA_MONITOR_USER)

# The local S3 server's users (stack.s3_users: their bucket policies). The root key (local_credentials) stays the
# stack's set-up (buckets, users, policies) and the operator's and tests' key; the services get their own: `pipeline`
# (Airflow's aws_default: reads raw, reads and writes the lake except lake/tune/; Spark and the Hive metastore too),
# `tune` (Airflow's aws_tune: the tune task and its Ray workers; reads raw and the lake, writes lake/tune/ only),
# `mlflow` (the MLflow server's artifact store: the mlflow bucket only) and `monitor` (the streaming drift monitor:
# reads the training distributions, reads and writes lake/monitor/, its checkpoint, only). Serving has no S3 key: it
# loads models through MLflow.
S3_PIPELINE_USER = "pipeline"
S3_TUNE_USER = "tune"
S3_MLFLOW_USER = "mlflow"
S3_MONITOR_USER = "monitor"
S3_USERS = (S3_PIPELINE_USER, S3_TUNE_USER, S3_MLFLOW_USER, S3_MONITOR_USER)

# The local MLflow server's users (stack.mlflow_auth: its basic-auth app, and what each may do). `admin` only sets the
# others up; the stack's clients log in as `pipeline`, `serving` or `monitor` (both read-only).
MLFLOW_ADMIN_USER = "admin"
MLFLOW_PIPELINE_USER = "pipeline"
MLFLOW_SERVING_USER = "serving"
MLFLOW_MONITOR_USER = "monitor"
MLFLOW_CLIENT_USERS = (MLFLOW_PIPELINE_USER, MLFLOW_SERVING_USER, MLFLOW_MONITOR_USER)

# Whom a process of the stack acts as, on every service that takes logins: the pipeline (Airflow's tasks,
# `python -m ml`, the tests), the prediction service (`python -m stack run --as serving`: Kafka's and MLflow's
# `serving` users, and no S3 key: it reads models through MLflow's artifact proxy) or the streaming drift monitor
# (stack.services.DRIFT_MONITOR, `--as monitor`: the `monitor` user of all three).
PIPELINE_IDENTITY = "pipeline"
SERVING_IDENTITY = "serving"
MONITOR_IDENTITY = "monitor"
IDENTITIES = {
    PIPELINE_IDENTITY: {"kafka": KAFKA_PIPELINE_USER, "mlflow": MLFLOW_PIPELINE_USER},
    SERVING_IDENTITY: {"kafka": KAFKA_SERVING_USER, "mlflow": MLFLOW_SERVING_USER},
    MONITOR_IDENTITY: {"kafka": KAFKA_MONITOR_USER, "mlflow": MLFLOW_MONITOR_USER},
}
# How an identity signs on the stack's own S3 server: as one of its users (IDENTITY_S3_USERS), with no key at all
# (KEYLESS_IDENTITIES), or else with the root key (the pipeline's CLI and tests: the operator's key; Airflow's tasks
# get the S3 users' keys through their connections, stack.airflow_home). Another S3's keys are never replaced.
IDENTITY_S3_USERS = {MONITOR_IDENTITY: S3_MONITOR_USER}
KEYLESS_IDENTITIES = (SERVING_IDENTITY,)
