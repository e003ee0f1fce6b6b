#!/usr/bin/env bash
# The postgres service's init script (docker-compose.yaml mounts it into /docker-entrypoint-initdb.d): it runs once,
# when the server starts on an empty data volume. One role and one database of the same name per component, owned by
# that role, as stack/cluster/postgres.py (create_databases) does for the cluster profile: airflow, mlflow, metastore.
# The passwords come from the service's environment; psql quotes them (:'pw'), so no SQL is built from them.
set -euo pipefail

create_database() {
  local name=$1 password=$2
  psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=name="$name" --set=pw="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'pw';
CREATE DATABASE :"name" OWNER :"name";
SQL
}

create_database airflow "${AIRFLOW_DB_PASSWORD:?the airflow role needs a password}"
create_database mlflow "${MLFLOW_DB_PASSWORD:?the mlflow role needs a password}"
create_database metastore "${METASTORE_DB_PASSWORD:?the metastore role needs a password}"
