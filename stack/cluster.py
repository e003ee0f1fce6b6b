"""The cluster profile's services: real multi-process clusters on this machine, bound to 127.0.0.1 where the service
lets us (Ray's nodes and Hive 2.3's metastore listen on every interface; the README says so).

PostgreSQL (Debian's package) holds the Airflow, MLflow and Hive metastore databases; the Hive metastore is the
Thrift service of Spark's own Hive 2.3 jars; Spark runs a standalone master and two workers; Ray a head and a worker
node with token authentication. S3 and Kafka are the local profile's (stack.services). The commands and traps are in
../shared/STACK-NOTES.md ("Cluster profile on one machine").
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from stack.config import (
    METASTORE_PORT,
    POSTGRES_PORT,
    RAY_CLIENT_PORT,
    RAY_DASHBOARD_PORT,
    RAY_GCS_PORT,
    REPO_ROOT,
    SPARK_MASTER_PORT,
    SPARK_MASTER_UI_PORT,
    SPARK_WORKER_CORES,
    SPARK_WORKER_UI_PORTS,
    StackPaths,
    cluster_secrets,
    postgres_url,
    write_private,
)
from stack.process import Service, StackError, http_ok, port_in_use
from stack.services import AIRFLOW, KAFKA, MLFLOW, S3, java

DATABASES = ("airflow", "mlflow", "metastore")
VENV_BIN = REPO_ROOT / ".venv" / "bin"


# --- PostgreSQL ------------------------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The newest PostgreSQL server of Debian's packages (`make postgres` installs it)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).resolve().parent
    raise StackError("postgres: no PostgreSQL server found; run `make postgres` (Debian's package) first")


def _as_postgres_user() -> list[str]:
    # PostgreSQL refuses to run as root: as root, run it as the `postgres` user the package creates.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _owned_by_postgres(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)


def _postgres_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    data_dir, socket_dir = paths.data / "postgres", paths.run / "postgres"
    _owned_by_postgres(socket_dir)
    if (data_dir / "PG_VERSION").exists():
        return
    _owned_by_postgres(data_dir)
    # The superuser's password reaches initdb through a file only the server's user can read, never a command line.
    password_file = write_private(socket_dir / "initdb.pw", cluster_secrets(paths)["postgres_password"] + "\n")
    if os.geteuid() == 0:  # (not in the data folder: initdb wants it empty)
        user = pwd.getpwnam("postgres")
        os.chown(password_file, user.pw_uid, user.pw_gid)
    initdb = [str(postgres_bin_dir() / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=scram-sha-256"]
    initdb += [f"--pwfile={password_file}", "--encoding=UTF8", "--locale=C.UTF-8"]
    try:
        result = subprocess.run([*_as_postgres_user(), *initdb], capture_output=True, text=True, check=False)
    finally:
        password_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise StackError(f"postgres: initdb of {data_dir} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def _postgres_command(paths: StackPaths, env: dict[str, str]) -> list[str]:
    server = [str(postgres_bin_dir() / "postgres"), "-D", str(paths.data / "postgres"), "-p", str(POSTGRES_PORT)]
    server += ["-c", "listen_addresses=127.0.0.1", "-k", str(paths.run / "postgres"), "-c", "max_connections=200"]
    return [*_as_postgres_user(), *server]


def postgres_connect(paths: StackPaths, database: str = "postgres", connect_timeout: int = 2) -> object:
    """A psycopg2 connection as the superuser (autocommit)."""
    import psycopg2

    connection = psycopg2.connect(
        host="127.0.0.1",
        port=POSTGRES_PORT,
        user="postgres",
        password=cluster_secrets(paths)["postgres_password"],
        dbname=database,
        connect_timeout=connect_timeout,
    )
    connection.autocommit = True
    return connection


def _postgres_healthy(paths: StackPaths) -> bool:
    import psycopg2

    if not port_in_use(POSTGRES_PORT):
        return False
    try:
        connection = postgres_connect(paths)
    except psycopg2.Error:
        return False
    connection.close()  # type: ignore[attr-defined]
    return True


def create_databases(paths: StackPaths) -> list[str]:
    """One role and one database of the same name per component (DATABASES); idempotent. Returns what it created."""
    from psycopg2 import sql

    secrets = cluster_secrets(paths)
    created = []
    connection = postgres_connect(paths)
    try:
        with connection.cursor() as cursor:  # type: ignore[attr-defined]
            for name in DATABASES:
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                if cursor.fetchone() is None:
                    password = secrets[f"{name}_db_password"]
                    cursor.execute(
                        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password))
                    )
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name))
                    )
                    created.append(name)
    finally:
        connection.close()  # type: ignore[attr-defined]
    return created


def _paths(env: dict[str, str]) -> StackPaths:
    return StackPaths(Path(env["MLOPS_STACK_DIR"]))


POSTGRES = Service(
    name="postgres",
    port=POSTGRES_PORT,
    command=_postgres_command,
    prepare=_postgres_prepare,
    is_healthy=lambda env: _postgres_healthy(_paths(env)),
    start_timeout_s=60,
    stop_signal=signal.SIGINT,
    url=f"postgresql://127.0.0.1:{POSTGRES_PORT} (databases: {', '.join(DATABASES)})",
)


# --- Hive metastore: the Thrift service of Spark's Hive 2.3 jars, on PostgreSQL --------------------------------------


def _pyspark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def _classpath_file(path: Path, what: str) -> str:
    if not path.exists():
        raise StackError(f"{what}: {path} is missing; run `make tools` (needs Maven) first")
    return path.read_text().strip()


def _metastore_jdo(paths: StackPaths) -> dict[str, str]:
    secrets = cluster_secrets(paths)
    return {
        "javax.jdo.option.ConnectionURL": f"jdbc:postgresql://127.0.0.1:{POSTGRES_PORT}/metastore",
        "javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
        "javax.jdo.option.ConnectionUserName": "metastore",
        "javax.jdo.option.ConnectionPassword": secrets["metastore_db_password"],
    }


def _hive_site(paths: StackPaths, env: dict[str, str]) -> str:
    properties = {
        **_metastore_jdo(paths),
        "hive.metastore.schema.verification": "false",
        "datanucleus.schema.autoCreateAll": "false",  # created up front: lazy creation deadlocks on PostgreSQL
        "hive.async.log.enabled": "false",  # else NoClassDefFoundError com/lmax/disruptor
        "hive.metastore.warehouse.dir": f"s3a://{env.get('MLOPS_LAKE_BUCKET', 'lake')}/warehouse",
        # The metastore creates table folders itself: s3a to the stack's S3 server, keys from its environment.
        "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.s3a.endpoint": env["AWS_ENDPOINT_URL"],
        "fs.s3a.endpoint.region": env["AWS_DEFAULT_REGION"],
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": str(env["AWS_ENDPOINT_URL"].startswith("https")).lower(),
    }
    body = "\n".join(
        f"  <property><name>{escape(key)}</name><value>{escape(value)}</value></property>"
        for key, value in properties.items()
    )
    return f'<?xml version="1.0"?>\n<configuration>\n{body}\n</configuration>\n'


def _metastore_schema_exists(paths: StackPaths) -> bool:
    connection = postgres_connect(paths, "metastore")
    try:
        with connection.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'DBS'")
            return cursor.fetchone() is not None
    finally:
        connection.close()  # type: ignore[attr-defined]


def _create_metastore_schema(paths: StackPaths, env: dict[str, str], folder: Path) -> None:
    """DataNucleus SchemaTool with the metastore's own package.jdo (44 tables, ~11 s)."""
    with zipfile.ZipFile(next(_pyspark_jars().glob("hive-metastore-*.jar"))) as jar:
        (folder / "package.jdo").write_bytes(jar.read("package.jdo"))
    jdo = _metastore_jdo(paths)
    lines = [f"{key}={value}" for key, value in jdo.items()]
    lines += ["datanucleus.identifierFactory=datanucleus1", "datanucleus.rdbms.useLegacyNativeValueStrategy=true"]
    properties = write_private(folder / "schema.properties", "\n".join(lines) + "\n")
    classpath = f"{_pyspark_jars()}/*:{_classpath_file(paths.postgresql_classpath_file, 'metastore')}"
    command = [java(), "-cp", classpath, "org.datanucleus.store.schema.SchemaTool", "-create", "-api", "JDO"]
    command += ["-props", str(properties), str(folder / "package.jdo")]
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=folder, check=False, timeout=300)
    finally:
        properties.unlink(missing_ok=True)  # it holds the metastore's password
    if result.returncode != 0 or not _metastore_schema_exists(paths):
        raise StackError(f"metastore: creating the schema failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")


def _metastore_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    folder = paths.data / "metastore"
    (folder / "conf").mkdir(parents=True, exist_ok=True)
    write_private(folder / "conf" / "hive-site.xml", _hive_site(paths, env))
    if not _metastore_schema_exists(paths):
        _create_metastore_schema(paths, env, folder)


def _metastore_command(paths: StackPaths, env: dict[str, str]) -> list[str]:
    classpath = [
        str(paths.data / "metastore" / "conf"),
        f"{_pyspark_jars()}/*",
        _classpath_file(paths.postgresql_classpath_file, "metastore"),
        _classpath_file(paths.spark_s3a_classpath_file, "metastore"),
    ]
    opens = [f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in ("java.lang", "java.util", "java.net")]
    main = ["org.apache.hadoop.hive.metastore.HiveMetaStore", "-p", str(METASTORE_PORT)]
    return [java(), "-Xmx512m", *opens, "-cp", ":".join(classpath), *main]


METASTORE = Service(
    name="metastore",
    port=METASTORE_PORT,
    command=_metastore_command,
    prepare=_metastore_prepare,
    is_healthy=lambda env: port_in_use(METASTORE_PORT),
    start_timeout_s=120,
    url=f"thrift://127.0.0.1:{METASTORE_PORT} (Hive metastore 2.3 on PostgreSQL; listens on all interfaces)",
)


# --- Spark standalone: a master and two workers -----------------------------------------------------------------------


def _spark_env(paths: StackPaths, env: dict[str, str]) -> None:
    conf_dir = paths.data / "spark" / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)  # the pip wheel has no conf/; without one Spark looks in site-packages
    env["SPARK_CONF_DIR"] = str(conf_dir)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    # The workers' installation carries the s3a connector, as a Spark image ships hadoop-aws in $SPARK_HOME/jars:
    # executors take it from the worker daemon, so no path of the submitting host is in a job's configuration.
    env["SPARK_DIST_CLASSPATH"] = _classpath_file(paths.spark_s3a_classpath_file, "spark")
    # Executors and their Python workers inherit the worker daemon's environment: no credentials in it.
    for key in [key for key in env if key.startswith("AWS_")]:
        env.pop(key)


def _ui_json(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=2) as response:
            found: dict[str, Any] = json.loads(response.read())
            return found
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _spark_master_json() -> dict[str, Any] | None:
    return _ui_json(SPARK_MASTER_UI_PORT)


def spark_master_state() -> dict[str, Any]:
    """The Spark master's JSON API (workers, active and completed applications)."""
    state = _spark_master_json()
    if state is None:
        raise StackError(f"the Spark master's UI on 127.0.0.1:{SPARK_MASTER_UI_PORT} does not answer")
    return state


def spark_worker_state(ui_port: int) -> dict[str, Any]:
    """A Spark worker's JSON API (its executors, running and finished)."""
    state = _ui_json(ui_port)
    if state is None:
        raise StackError(f"the Spark worker's UI on 127.0.0.1:{ui_port} does not answer")
    return state


def _worker_alive(ui_port: int) -> bool:
    state = _spark_master_json()
    if state is None:
        return False
    return any(
        worker.get("state") == "ALIVE" and str(worker.get("webuiaddress", "")).endswith(f":{ui_port}")
        for worker in state.get("workers") or []
    )


SPARK_MASTER = Service(
    name="spark-master",
    port=SPARK_MASTER_PORT,
    extra_ports=(SPARK_MASTER_UI_PORT,),
    command=lambda paths, env: [
        str(VENV_BIN / "spark-class"),
        "org.apache.spark.deploy.master.Master",
        *("--host", "127.0.0.1", "--port", str(SPARK_MASTER_PORT), "--webui-port", str(SPARK_MASTER_UI_PORT)),
    ],
    prepare=_spark_env,
    is_healthy=lambda env: _spark_master_json() is not None,
    start_timeout_s=90,
    url=f"spark://127.0.0.1:{SPARK_MASTER_PORT} (UI http://127.0.0.1:{SPARK_MASTER_UI_PORT})",
)


def _spark_worker(number: int, ui_port: int) -> Service:
    def command(paths: StackPaths, env: dict[str, str]) -> list[str]:
        work_dir = paths.data / "spark" / f"work-{number}"
        work_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(VENV_BIN / "spark-class"),
            "org.apache.spark.deploy.worker.Worker",
            *("--host", "127.0.0.1", "--cores", str(SPARK_WORKER_CORES), "--memory", "3g"),
            *("--webui-port", str(ui_port), "--work-dir", str(work_dir)),
            f"spark://127.0.0.1:{SPARK_MASTER_PORT}",
        ]

    return Service(
        name=f"spark-worker-{number}",
        port=ui_port,
        command=command,
        prepare=_spark_env,
        is_healthy=lambda env: _worker_alive(ui_port),
        start_timeout_s=90,
        url=f"http://127.0.0.1:{ui_port} (worker {number}, {SPARK_WORKER_CORES} core)",
    )


SPARK_WORKERS = tuple(_spark_worker(number, port) for number, port in enumerate(SPARK_WORKER_UI_PORTS, start=1))


# --- Ray: a head and a worker node, token authentication -------------------------------------------------------------


def _ray_env(paths: StackPaths, env: dict[str, str]) -> None:
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(paths.ray_token_file)
    # Ray's workers get the code and the S3 keys from each job's runtime_env (ml.tune.runtime), not from the nodes.
    for key in [key for key in env if key.startswith("AWS_") or key == "RAY_ADDRESS"]:
        env.pop(key)
    env["PYTHONPATH"] = ""
    env["OMP_NUM_THREADS"] = "1"


def _ray_node_command(paths: StackPaths, head: bool) -> list[str]:
    common = ["--block", "--num-cpus", "1", "--memory", str(6 * 10**9), "--object-store-memory", str(10**9)]
    common += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    if head:
        ports = ["--port", str(RAY_GCS_PORT), "--min-worker-port", "10002", "--max-worker-port", "10999"]
        dashboard = ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(RAY_DASHBOARD_PORT)]
        client = ["--ray-client-server-port", str(RAY_CLIENT_PORT)]
        client += ["--temp-dir", str(paths.data / "ray")]  # the worker node takes it from the head
        return [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            *common,
            *ports,
            *dashboard,
            *client,
            "--resources",
            json.dumps({"head_node": 1}),
        ]
    ports = ["--min-worker-port", "11000", "--max-worker-port", "11999", "--dashboard-agent-listen-port", "52366"]
    return [
        str(VENV_BIN / "ray"),
        "start",
        f"--address=127.0.0.1:{RAY_GCS_PORT}",
        *common,
        *ports,
        "--resources",
        json.dumps({"worker_node": 1}),
    ]


def ray_state(paths: StackPaths, resource: str, detail: bool = False) -> list[dict[str, Any]]:
    """One list of the Ray cluster's state API (`nodes`, `actors`, `tasks`, ...), signed with the stack's token."""
    token = paths.ray_token_file.read_text().strip()
    query = f"limit=10000&detail={str(detail).lower()}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{RAY_DASHBOARD_PORT}/api/v0/{resource}?{query}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        body = json.loads(response.read())
    return list(body.get("data", {}).get("result", {}).get("result", []))


def _alive_ray_nodes(env: dict[str, str]) -> int:
    try:
        return sum(1 for node in ray_state(_paths(env), "nodes") if node.get("state") == "ALIVE")
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return 0


RAY_HEAD = Service(
    name="ray-head",
    port=RAY_GCS_PORT,
    extra_ports=(RAY_DASHBOARD_PORT, RAY_CLIENT_PORT),
    command=lambda paths, env: _ray_node_command(paths, head=True),
    prepare=_ray_env,
    is_healthy=lambda env: _alive_ray_nodes(env) >= 1,
    start_timeout_s=120,
    url=f"127.0.0.1:{RAY_GCS_PORT} (dashboard http://127.0.0.1:{RAY_DASHBOARD_PORT}, client ray://127.0.0.1:"
    f"{RAY_CLIENT_PORT}; token in .stack/ray/auth_token)",
)

RAY_WORKER = Service(
    name="ray-worker",
    port=52366,
    command=lambda paths, env: _ray_node_command(paths, head=False),
    prepare=_ray_env,
    is_healthy=lambda env: _alive_ray_nodes(env) >= 2,
    start_timeout_s=120,
    url="a second Ray node (1 CPU)",
)


# --- MLflow on PostgreSQL; Airflow as its separate components ---------------------------------------------------------


def _mlflow_on_postgres(paths: StackPaths, env: dict[str, str]) -> None:
    MLFLOW.prepare(paths, env)
    # Through the environment: a command line is readable by every local user.
    env["MLFLOW_BACKEND_STORE_URI"] = postgres_url(paths, "mlflow")


MLFLOW_CLUSTER = dataclasses.replace(MLFLOW, prepare=_mlflow_on_postgres, url=f"{MLFLOW.url} (on PostgreSQL)")


def _airflow_component(command: str, *, last: bool = False) -> Service:
    # No port of its own; the last one started waits until the api-server reports every component healthy.
    return dataclasses.replace(
        AIRFLOW,
        name=f"airflow-{command}",
        port=0,
        command=lambda paths, env: [str(VENV_BIN / "airflow"), command],
        is_healthy=AIRFLOW.is_healthy if last else (lambda env: True),
        url=f"airflow {command}",
    )


def _airflow_api_healthy(env: dict[str, str]) -> bool:
    return http_ok("http://127.0.0.1:8080/api/v2/version")


AIRFLOW_API_SERVER = dataclasses.replace(
    AIRFLOW,
    name="airflow-api-server",
    command=lambda paths, env: [str(VENV_BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", "8080"],
    is_healthy=_airflow_api_healthy,
)
AIRFLOW_COMPONENTS: tuple[Service, ...] = (
    AIRFLOW_API_SERVER,
    _airflow_component("scheduler"),
    _airflow_component("dag-processor"),
    _airflow_component("triggerer", last=True),
)

# Start order: PostgreSQL first; the metastore needs it and S3; MLflow needs both; Spark workers need their master.
CLUSTER_SERVICES: tuple[Service, ...] = (
    S3,
    KAFKA,
    POSTGRES,
    MLFLOW_CLUSTER,
    METASTORE,
    SPARK_MASTER,
    *SPARK_WORKERS,
    RAY_HEAD,
    RAY_WORKER,
)
