"""The cluster profile's services: real multi-process clusters on this machine, bound to 127.0.0.1 where the service
lets us (Ray's nodes and Hive 2.3's metastore listen on every interface; the README says so).

  postgres   PostgreSQL (Debian's package): the Airflow, MLflow and Hive metastore databases
  metastore  the Hive metastore: the Thrift service of Spark's own Hive 2.3 jars, on PostgreSQL
  spark      Spark standalone: a master and two workers
  ray        Ray: a head and a worker node with token authentication
  mlflow     MLflow on PostgreSQL
  airflow    Airflow as its separate components
  paths      what they share: the virtualenv's programs, the stack folder, the classpath files of `make tools`

S3 and Kafka are the local profile's (stack.services). The commands and traps are in ../shared/STACK-NOTES.md
("Cluster profile on one machine").
"""

from __future__ import annotations

from stack.cluster.airflow import AIRFLOW_COMPONENTS
from stack.cluster.metastore import METASTORE
from stack.cluster.mlflow import MLFLOW_CLUSTER
from stack.cluster.postgres import DATABASES, POSTGRES, create_databases, postgres_connect
from stack.cluster.ray import RAY_HEAD, RAY_WORKER, ray_state
from stack.cluster.spark import SPARK_MASTER, SPARK_WORKERS, spark_master_state, spark_worker_state
from stack.process import Service
from stack.services import DRIFT_MONITOR, KAFKA, S3

# What the rest of the repository imports from stack.cluster (stack.profiles, stack.__main__, the tests).
__all__ = [
    "AIRFLOW_COMPONENTS",
    "CLUSTER_SERVICES",
    "DATABASES",
    "METASTORE",
    "POSTGRES",
    "RAY_HEAD",
    "RAY_WORKER",
    "SPARK_MASTER",
    "SPARK_WORKERS",
    "create_databases",
    "postgres_connect",
    "ray_state",
    "spark_master_state",
    "spark_worker_state",
]

# Start order: Kafka before S3 (the S3 server's notifications: stack.services.SERVICES); the metastore needs
# PostgreSQL and S3; MLflow needs both; the drift monitor needs Kafka, S3 and MLflow; Spark workers need their master.
CLUSTER_SERVICES: tuple[Service, ...] = (
    KAFKA,
    S3,
    POSTGRES,
    MLFLOW_CLUSTER,
    DRIFT_MONITOR,
    METASTORE,
    SPARK_MASTER,
    *SPARK_WORKERS,
    RAY_HEAD,
    RAY_WORKER,
)
