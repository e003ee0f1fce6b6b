"""Where the stack's services answer: the local endpoints (ml.settings' defaults, written down once there), MLflow's
artifact bucket, and the cluster profile's ports on this machine (stack.cluster starts them)."""

from __future__ import annotations

from ml.settings import Settings

KAFKA_BOOTSTRAP = Settings().kafka.bootstrap_servers  # the local broker's client listener (ml.settings' default)
MLFLOW_URI = Settings().mlflow.tracking_uri  # the local server (ml.settings' default)

# The bucket of MLflow's artifacts (the pipeline's own are ml.settings.LakeSettings'); `python -m stack.init_resources`
# creates all three.
MLFLOW_BUCKET = "mlflow"

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
