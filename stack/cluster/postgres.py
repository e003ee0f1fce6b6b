"""PostgreSQL (Debian's package): the Airflow, MLflow and Hive metastore databases, one role and database each."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from stack.cluster.paths import env_paths
from stack.config import POSTGRES_PORT, StackPaths, cluster_secrets, write_private
from stack.process import Service, StackError, port_in_use

DATABASES = ("airflow", "mlflow", "metastore")


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


POSTGRES = Service(
    name="postgres",
    port=POSTGRES_PORT,
    command=_postgres_command,
    prepare=_postgres_prepare,
    is_healthy=lambda env: _postgres_healthy(env_paths(env)),
    start_timeout_s=60,
    stop_signal=signal.SIGINT,
    url=f"postgresql://127.0.0.1:{POSTGRES_PORT} (databases: {', '.join(DATABASES)})",
)
