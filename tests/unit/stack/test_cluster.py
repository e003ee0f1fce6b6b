"""stack/cluster.py: the cluster profile's commands (every listener on 127.0.0.1, no secret on a command line), what
each service's preparation writes and runs (PostgreSQL's initdb, the metastore's schema and hive-site.xml, the
databases), the environments of the Spark and Ray daemons, and the health probes of the Spark master and Ray's state
API. Nothing here starts a process, opens a socket or connects to a database: the commands are inspected, and
PostgreSQL, the Spark master, Ray's dashboard, subprocess.run and glob are fakes."""

from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import subprocess
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql

import stack.cluster as cluster
from stack.cluster import (
    AIRFLOW_COMPONENTS,
    CLUSTER_SERVICES,
    MLFLOW_CLUSTER,
    RAY_HEAD,
    RAY_WORKER,
    SPARK_MASTER,
    SPARK_WORKERS,
)
from stack.config import (
    RAY_GCS_PORT,
    SPARK_WORKER_UI_PORTS,
    StackPaths,
    cluster_secrets,
    postgres_url,
    stack_environment,
)
from stack.process import StackError
from stack.services import MLFLOW, _mlflow_command

S3_KEY = "unit-cluster-s3-secret-0123456789"
GIVEN_KEYS = {"AWS_ACCESS_KEY_ID": "unit-cluster-id", "AWS_SECRET_ACCESS_KEY": S3_KEY}
POSTGRES_GLOB = "/usr/lib/postgresql/*/bin/postgres"
PG_JARS = "/m2/postgresql-42.7.jar:/m2/checker-qual.jar"
S3A_JARS = "/m2/hadoop-aws-3.5.0.jar:/m2/bundle-2.29.jar"


def _flag(command: list[str], flag: str) -> str:
    [value] = [command[i + 1] for i, part in enumerate(command[:-1]) if part == flag]
    return value


@pytest.fixture
def no_postgres_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name == "postgres" else real_which(name, *a, **k)
    )


def _fake_postgres_versions(monkeypatch: pytest.MonkeyPatch, versions: list[str]) -> None:
    real_glob = glob.glob
    found = [f"/usr/lib/postgresql/{version}/bin/postgres" for version in versions]
    monkeypatch.setattr(
        glob, "glob", lambda pattern, *a, **k: list(found) if pattern == POSTGRES_GLOB else real_glob(pattern, *a, **k)
    )


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root (the tests may run as root): no `runuser`, no chown to the postgres user."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


@pytest.fixture
def stack(stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch, no_postgres_on_path: None) -> StackPaths:
    """A stack folder as `make tools` leaves it (classpath files, a versitygw binary), PostgreSQL 16 "installed"."""
    stack_dir.jars.mkdir(parents=True)
    stack_dir.postgresql_classpath_file.write_text(PG_JARS + "\n")
    stack_dir.spark_s3a_classpath_file.write_text(S3A_JARS + "\n")
    stack_dir.kafka_classpath_file.write_text("/m2/kafka.jar\n")
    stack_dir.bin.mkdir()
    stack_dir.versitygw.write_text("")
    _fake_postgres_versions(monkeypatch, ["16"])
    return stack_dir


@pytest.fixture
def env(stack: StackPaths) -> dict[str, str]:
    """The cluster profile's environment, with given S3 keys."""
    return stack_environment(dict(GIVEN_KEYS), profile="cluster")


# --- no secret on a command line --------------------------------------------------------------------------------------

# Preparations that only write into the stack folder or change the environment (PostgreSQL's runs initdb, Kafka's its
# storage tool, the metastore's connects to PostgreSQL: their own tests fake those).
HARMLESS_PREPARE = {"s3", "mlflow", "spark-master", "spark-worker-1", "spark-worker-2", "ray-head", "ray-worker"}


def test_no_secret_on_a_cluster_service_command_line(
    stack: StackPaths, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {**cluster_secrets(stack), "s3": S3_KEY}
    for service in (*CLUSTER_SERVICES, *AIRFLOW_COMPONENTS):
        service_env = dict(env)
        if service.name in HARMLESS_PREPARE or service.name.startswith("airflow"):
            service.prepare(stack, service_env)
        command = " ".join(service.command(stack, service_env))
        leaked = [name for name, value in secrets.items() if value in command]
        assert not leaked, f"{service.name} gets {leaked} in argv: {command}"


def test_initdb_gets_the_superusers_password_through_a_private_file_it_then_deletes(
    stack: StackPaths, as_user: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = cluster_secrets(stack)["postgres_password"]
    seen: list[dict[str, Any]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        pwfile = Path(next(part for part in command if part.startswith("--pwfile=")).removeprefix("--pwfile="))
        seen.append({"command": command, "pw": pwfile.read_text(), "mode": stat.S_IMODE(pwfile.stat().st_mode)})
        seen[-1]["pwfile"] = pwfile
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    cluster._postgres_prepare(stack, {})
    [call] = seen
    assert call["command"][0] == "/usr/lib/postgresql/16/bin/initdb"
    assert _flag(call["command"], "-D") == str(stack.data / "postgres")
    assert "--auth=scram-sha-256" in call["command"]
    assert password not in " ".join(call["command"])
    assert (call["pw"], call["mode"]) == (password + "\n", 0o600)
    assert not call["pwfile"].exists(), "the password file is deleted after initdb"
    assert not call["pwfile"].is_relative_to(stack.data / "postgres"), "initdb wants an empty data folder"
    assert stat.S_IMODE((stack.data / "postgres").stat().st_mode) == 0o700

    (stack.data / "postgres" / "PG_VERSION").write_text("16\n")
    cluster._postgres_prepare(stack, {})
    assert len(seen) == 1, "an initialised data folder is kept"


def test_a_failed_initdb_is_reported_and_leaves_no_password_file(
    stack: StackPaths, as_user: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "no"))
    with pytest.raises(StackError, match=r"postgres: initdb of .* failed"):
        cluster._postgres_prepare(stack, {})
    assert not list((stack.run / "postgres").iterdir())


def test_an_initdb_that_cannot_run_leaves_no_password_file(
    stack: StackPaths, as_user: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(command[0])

    monkeypatch.setattr(subprocess, "run", missing)
    with pytest.raises(FileNotFoundError):
        cluster._postgres_prepare(stack, {})
    assert not list((stack.run / "postgres").iterdir())


# --- PostgreSQL -------------------------------------------------------------------------------------------------------


def test_postgres_binds_loopback_and_runs_as_the_postgres_user_only_as_root(
    stack: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    command = cluster._postgres_command(stack, {})
    assert command[0] == "/usr/lib/postgresql/16/bin/postgres"
    assert "runuser" not in command
    assert "listen_addresses=127.0.0.1" in command and command[command.index("listen_addresses=127.0.0.1") - 1] == "-c"
    assert _flag(command, "-p") == "5432"
    assert _flag(command, "-D") == str(stack.data / "postgres")
    assert _flag(command, "-k") == str(stack.run / "postgres"), "its socket stays in the stack folder"

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    as_root = cluster._postgres_command(stack, {})
    assert as_root[:4] == ["runuser", "-u", "postgres", "--"]
    assert as_root[4:] == command


def test_postgres_bin_dir_is_the_newest_installed_server(
    monkeypatch: pytest.MonkeyPatch, no_postgres_on_path: None
) -> None:
    _fake_postgres_versions(monkeypatch, ["15", "9", "16", "13"])  # "9" sorts last as text
    assert cluster.postgres_bin_dir() == Path("/usr/lib/postgresql/16/bin")
    _fake_postgres_versions(monkeypatch, ["9"])
    assert cluster.postgres_bin_dir() == Path("/usr/lib/postgresql/9/bin")


def test_postgres_bin_dir_falls_back_to_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_postgres_versions(monkeypatch, [])
    server = tmp_path / "pg" / "bin" / "postgres"
    server.parent.mkdir(parents=True)
    server.write_text("")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: str(server) if name == "postgres" else None)
    assert cluster.postgres_bin_dir() == server.parent.resolve()


def test_without_a_postgres_server_the_error_says_make_postgres(
    monkeypatch: pytest.MonkeyPatch, no_postgres_on_path: None
) -> None:
    _fake_postgres_versions(monkeypatch, [])
    with pytest.raises(StackError, match=r"no PostgreSQL server found; run `make postgres`"):
        cluster.postgres_bin_dir()


class _FakeCursor:
    def __init__(self, server: _FakePostgres) -> None:
        self.server = server
        self.result: tuple[int] | None = None

    def __enter__(self) -> _FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, statement: Any, params: tuple[str, ...] | None = None) -> None:
        self.server.statements.append((statement, params))
        if isinstance(statement, str):
            assert params is not None and "%s" in statement, f"a name in the SQL text itself: {statement}"
            table = self.server.roles if "pg_roles" in statement else self.server.databases
            self.result = (1,) if params[0] in table else None
            return
        assert isinstance(statement, sql.Composed), statement
        first = statement.seq[0]
        assert isinstance(first, sql.SQL)
        if self.server.fail_on and self.server.fail_on in first.string:
            raise RuntimeError("the fake server refuses")
        names = [part for part in statement.seq if isinstance(part, sql.Identifier)]
        literals = [part.wrapped for part in statement.seq if isinstance(part, sql.Literal)]
        if first.string.startswith("CREATE ROLE"):
            [name] = names
            self.server.roles[name.strings[0]] = literals[0]
        elif first.string.startswith("CREATE DATABASE"):
            database, owner = names
            self.server.databases[database.strings[0]] = owner.strings[0]
        else:
            raise AssertionError(f"unexpected statement {statement!r}")

    def fetchone(self) -> tuple[int] | None:
        return self.result


class _FakePostgres:
    """A psycopg2 connection's part that create_databases uses, over a dict of roles and one of databases."""

    def __init__(self) -> None:
        self.roles: dict[str, str] = {"postgres": "x"}
        self.databases: dict[str, str] = {"postgres": "postgres"}
        self.statements: list[tuple[Any, Any]] = []
        self.closed = 0
        self.fail_on = ""

    def cursor(self) -> _FakeCursor:
        return _FakeCursor(self)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def postgres(monkeypatch: pytest.MonkeyPatch) -> _FakePostgres:
    server = _FakePostgres()
    monkeypatch.setattr(cluster, "postgres_connect", lambda paths, database="postgres", connect_timeout=2: server)
    return server


def test_create_databases_creates_a_role_and_database_per_component_once(
    stack_dir: StackPaths, postgres: _FakePostgres
) -> None:
    secrets = cluster_secrets(stack_dir)
    assert cluster.create_databases(stack_dir) == ["airflow", "mlflow", "metastore"]
    for name in ("airflow", "mlflow", "metastore"):
        assert postgres.roles[name] == secrets[f"{name}_db_password"], "the role's password is its URL's"
        assert postgres.databases[name] == name, "each database is owned by its own role"
    creates = [statement for statement, _ in postgres.statements if not isinstance(statement, str)]
    assert len(creates) == 6
    for statement in creates:  # names as identifiers, the password as a literal: never pasted into the SQL text
        text = "".join(part.string for part in statement.seq if isinstance(part, sql.SQL))
        assert not any(name in text for name in ("airflow", "mlflow", "metastore")), text
        assert not any(secret in text for secret in secrets.values())
    assert postgres.closed == 1

    before = len(postgres.statements)
    assert cluster.create_databases(stack_dir) == []
    assert all(isinstance(statement, str) for statement, _ in postgres.statements[before:]), "nothing created again"
    assert postgres.closed == 2


def test_create_databases_completes_what_is_missing(stack_dir: StackPaths, postgres: _FakePostgres) -> None:
    postgres.roles["mlflow"] = "kept"
    postgres.roles["airflow"] = "kept"
    postgres.databases["airflow"] = "airflow"
    assert cluster.create_databases(stack_dir) == ["mlflow", "metastore"]
    assert postgres.roles["mlflow"] == "kept", "an existing role keeps its password"
    assert postgres.databases["mlflow"] == "mlflow"


def test_create_databases_closes_its_connection_when_a_statement_fails(
    stack_dir: StackPaths, postgres: _FakePostgres
) -> None:
    postgres.fail_on = "CREATE DATABASE"
    with pytest.raises(RuntimeError, match="refuses"):
        cluster.create_databases(stack_dir)
    assert postgres.closed == 1


# --- the Hive metastore -----------------------------------------------------------------------------------------------


def _properties(xml_text: str) -> dict[str, str]:
    root = ET.fromstring(xml_text)
    assert root.tag == "configuration"
    return {prop.findtext("name", ""): prop.findtext("value", "") for prop in root.iter("property")}


def test_hive_site_points_the_metastore_at_postgresql(stack: StackPaths, env: dict[str, str]) -> None:
    site = cluster._hive_site(stack, env)
    properties = _properties(site)
    assert properties["javax.jdo.option.ConnectionURL"] == "jdbc:postgresql://127.0.0.1:5432/metastore"
    assert properties["javax.jdo.option.ConnectionDriverName"] == "org.postgresql.Driver"
    assert properties["javax.jdo.option.ConnectionUserName"] == "metastore"
    assert properties["javax.jdo.option.ConnectionPassword"] == cluster_secrets(stack)["metastore_db_password"]
    assert properties["hive.metastore.schema.verification"] == "false"
    assert properties["datanucleus.schema.autoCreateAll"] == "false"
    assert properties["hive.metastore.warehouse.dir"] == "s3a://lake/warehouse"
    assert properties["fs.s3a.endpoint"] == env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert properties["fs.s3a.connection.ssl.enabled"] == "false"
    assert S3_KEY not in site and env["AWS_ACCESS_KEY_ID"] not in site, "the S3 keys come from its environment"


def test_hive_site_follows_the_lake_bucket_and_an_https_endpoint(stack: StackPaths, env: dict[str, str]) -> None:
    changed = {**env, "MLOPS_LAKE_BUCKET": "lake2", "AWS_ENDPOINT_URL": "https://s3.example.org"}
    properties = _properties(cluster._hive_site(stack, changed))
    assert properties["hive.metastore.warehouse.dir"] == "s3a://lake2/warehouse"
    assert properties["fs.s3a.connection.ssl.enabled"] == "true"


def test_hive_site_escapes_a_password_xml_would_misread(stack_dir: StackPaths) -> None:
    awkward = "pa<ss>&word\"'"
    stack_dir.root.mkdir(parents=True)
    stack_dir.cluster_secrets_file.write_text(json.dumps({"metastore_db_password": awkward}))
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "us-east-1"}
    site = cluster._hive_site(stack_dir, env)
    assert awkward not in site
    assert _properties(site)["javax.jdo.option.ConnectionPassword"] == awkward


def test_the_metastore_classpath_has_its_conf_spark_hive_postgresql_and_s3a(
    stack: StackPaths, env: dict[str, str]
) -> None:
    command = cluster._metastore_command(stack, env)
    classpath = _flag(command, "-cp").split(":")
    pyspark_jars = cluster._pyspark_jars()
    assert classpath == [
        str(stack.data / "metastore" / "conf"),  # hive-site.xml
        f"{pyspark_jars}/*",
        *PG_JARS.split(":"),
        *S3A_JARS.split(":"),
    ]
    assert list(pyspark_jars.glob("hive-metastore-*.jar")), "Spark's own Hive 2.3 metastore jar"
    assert command[-3:] == ["org.apache.hadoop.hive.metastore.HiveMetaStore", "-p", "9083"]


@pytest.mark.parametrize("missing", ["postgresql", "spark-s3a"])
def test_the_metastore_without_its_jars_says_how_to_get_them(
    stack: StackPaths, env: dict[str, str], missing: str
) -> None:
    (stack.jars / f"{missing}.classpath").unlink()
    with pytest.raises(StackError, match=rf"metastore: .*{missing}\.classpath is missing; run `make tools`"):
        cluster._metastore_command(stack, env)


class _SchemaTool:
    """subprocess.run for DataNucleus SchemaTool: what it was given while it ran, and the answer it returns."""

    def __init__(self, returncode: int = 0, raises: BaseException | None = None) -> None:
        self.returncode, self.raises = returncode, raises
        self.calls: list[dict[str, Any]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        properties = Path(_flag(command, "-props"))
        self.calls.append(
            {
                "command": command,
                "cwd": kwargs.get("cwd"),
                "properties": properties,
                "text": properties.read_text(),
                "mode": stat.S_IMODE(properties.stat().st_mode),
                "jdo": Path(command[-1]).read_bytes(),
            }
        )
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(command, self.returncode, "schema tool output", "schema tool errors")


@pytest.fixture
def fake_pyspark_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    jars = tmp_path / "pyspark-jars"
    jars.mkdir()
    with zipfile.ZipFile(jars / "hive-metastore-2.3.10.jar", "w") as jar:
        jar.writestr("package.jdo", b"<jdo>the metastore's tables</jdo>")
    monkeypatch.setattr(cluster, "_pyspark_jars", lambda: jars)
    return jars


def _schema_states(monkeypatch: pytest.MonkeyPatch, *states: bool) -> list[bool]:
    """_metastore_schema_exists answers `states` in turn (the last one from then on)."""
    answers = list(states)
    asked: list[bool] = []

    def exists(paths: StackPaths) -> bool:
        asked.append(answers[0] if len(answers) == 1 else answers.pop(0))
        return asked[-1]

    monkeypatch.setattr(cluster, "_metastore_schema_exists", exists)
    return asked


def test_the_metastore_schema_is_left_alone_when_it_exists(
    stack: StackPaths, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fake_pyspark_jars: Path
) -> None:
    _schema_states(monkeypatch, True)
    tool = _SchemaTool()
    monkeypatch.setattr(subprocess, "run", tool)
    cluster._metastore_prepare(stack, env)
    assert tool.calls == []
    site = stack.data / "metastore" / "conf" / "hive-site.xml"
    assert _properties(site.read_text())["javax.jdo.option.ConnectionUserName"] == "metastore"
    assert stat.S_IMODE(site.stat().st_mode) == 0o600, "hive-site.xml holds the database password"


def test_a_missing_metastore_schema_is_created_by_schema_tool(
    stack: StackPaths, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fake_pyspark_jars: Path
) -> None:
    _schema_states(monkeypatch, False, True)
    tool = _SchemaTool()
    monkeypatch.setattr(subprocess, "run", tool)
    cluster._metastore_prepare(stack, env)
    [call] = tool.calls
    assert call["command"][call["command"].index("-cp") + 2 :][:5] == [
        "org.datanucleus.store.schema.SchemaTool",
        "-create",
        "-api",
        "JDO",
        "-props",
    ]
    assert _flag(call["command"], "-cp") == f"{fake_pyspark_jars}/*:{PG_JARS}"
    assert call["jdo"] == b"<jdo>the metastore's tables</jdo>", "the metastore jar's own package.jdo"
    password = cluster_secrets(stack)["metastore_db_password"]
    assert f"javax.jdo.option.ConnectionPassword={password}\n" in call["text"]
    assert "javax.jdo.option.ConnectionURL=jdbc:postgresql://127.0.0.1:5432/metastore\n" in call["text"]
    assert call["mode"] == 0o600
    assert password not in " ".join(call["command"])
    assert not call["properties"].exists(), "the properties file holding the password is deleted"


@pytest.mark.parametrize(("returncode", "schema_after"), [(1, False), (0, False), (1, True)])
def test_a_failed_schema_creation_is_reported_and_leaves_no_password_file(
    stack: StackPaths,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    fake_pyspark_jars: Path,
    returncode: int,
    schema_after: bool,
) -> None:
    _schema_states(monkeypatch, False, schema_after)
    tool = _SchemaTool(returncode=returncode)
    monkeypatch.setattr(subprocess, "run", tool)
    with pytest.raises(StackError, match=r"metastore: creating the schema failed:\nschema tool output"):
        cluster._metastore_prepare(stack, env)
    assert not tool.calls[0]["properties"].exists()


def test_a_schema_tool_that_times_out_leaves_no_password_file(
    stack: StackPaths, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fake_pyspark_jars: Path
) -> None:
    _schema_states(monkeypatch, False)
    tool = _SchemaTool(raises=subprocess.TimeoutExpired(["java"], 300))
    monkeypatch.setattr(subprocess, "run", tool)
    with pytest.raises(subprocess.TimeoutExpired):
        cluster._metastore_prepare(stack, env)
    assert not tool.calls[0]["properties"].exists()


# --- Spark standalone -------------------------------------------------------------------------------------------------


def test_the_spark_master_binds_loopback(stack: StackPaths, env: dict[str, str]) -> None:
    command = SPARK_MASTER.command(stack, env)
    assert command[1] == "org.apache.spark.deploy.master.Master"
    assert (_flag(command, "--host"), _flag(command, "--port"), _flag(command, "--webui-port")) == (
        "127.0.0.1",
        "7077",
        "8090",
    )
    assert SPARK_MASTER.ports == (7077, 8090)


def test_the_spark_workers(stack: StackPaths, env: dict[str, str]) -> None:
    work_dirs = []
    assert [worker.port for worker in SPARK_WORKERS] == list(SPARK_WORKER_UI_PORTS)
    for worker, ui_port in zip(SPARK_WORKERS, SPARK_WORKER_UI_PORTS, strict=True):
        command = worker.command(stack, env)
        assert command[1] == "org.apache.spark.deploy.worker.Worker"
        assert _flag(command, "--host") == "127.0.0.1"
        assert _flag(command, "--cores") == "1"
        assert _flag(command, "--webui-port") == str(ui_port)
        assert command[-1] == "spark://127.0.0.1:7077"
        work_dir = Path(_flag(command, "--work-dir"))
        assert work_dir.is_relative_to(stack.root) and work_dir.is_dir()
        work_dirs.append(work_dir)
    assert len(set(work_dirs)) == len(SPARK_WORKERS), "each worker has a work folder of its own"


def test_the_spark_daemons_environment(stack: StackPaths) -> None:
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": S3_KEY, "AWS_SESSION_TOKEN": "t", "KEEP": "me"}
    cluster._spark_env(stack, env)
    assert not [key for key in env if key.startswith("AWS_")], "executors inherit the worker daemon's environment"
    assert env["SPARK_DIST_CLASSPATH"] == S3A_JARS
    assert env["SPARK_CONF_DIR"] == str(stack.data / "spark" / "conf")
    assert Path(env["SPARK_CONF_DIR"]).is_dir()
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["KEEP"] == "me"
    assert all(service.prepare is cluster._spark_env for service in (SPARK_MASTER, *SPARK_WORKERS))


def test_the_spark_daemons_without_the_s3a_jars_say_how_to_get_them(stack: StackPaths) -> None:
    stack.spark_s3a_classpath_file.unlink()
    with pytest.raises(StackError, match=r"spark: .*make tools"):
        cluster._spark_env(stack, {})


def _master_json(monkeypatch: pytest.MonkeyPatch, state: dict[str, Any] | None) -> None:
    monkeypatch.setattr(cluster, "_spark_master_json", lambda: state)


def test_a_worker_is_alive_when_the_master_lists_it_alive_by_its_ui_port(monkeypatch: pytest.MonkeyPatch) -> None:
    _master_json(
        monkeypatch,
        {
            "workers": [
                {"id": "worker-1", "webuiaddress": "http://127.0.0.1:8091", "state": "ALIVE"},
                {"id": "worker-2", "webuiaddress": "http://127.0.0.1:8092", "state": "DEAD"},
                {"id": "worker-3", "webuiaddress": "http://127.0.0.1:18093", "state": "ALIVE"},
            ]
        },
    )
    assert cluster._worker_alive(8091)
    assert not cluster._worker_alive(8092), "a dead worker of that port"
    assert not cluster._worker_alive(8093), "another port that ends in the same digits"
    assert not cluster._worker_alive(809)
    _master_json(monkeypatch, {"workers": None})
    assert not cluster._worker_alive(8091)
    _master_json(monkeypatch, None)
    assert not cluster._worker_alive(8091), "a master that does not answer"


def test_the_spark_states_say_which_ui_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "_ui_json", lambda port: None)
    with pytest.raises(StackError, match=r"Spark master's UI on 127\.0\.0\.1:8090 does not answer"):
        cluster.spark_master_state()
    with pytest.raises(StackError, match=r"Spark worker's UI on 127\.0\.0\.1:8092 does not answer"):
        cluster.spark_worker_state(8092)


# --- Ray --------------------------------------------------------------------------------------------------------------


def _port_range(command: list[str]) -> range:
    return range(int(_flag(command, "--min-worker-port")), int(_flag(command, "--max-worker-port")) + 1)


def test_the_ray_head(stack: StackPaths, env: dict[str, str]) -> None:
    command = RAY_HEAD.command(stack, env)
    assert command[1:3] == ["start", "--head"]
    assert "--block" in command and "--disable-usage-stats" in command
    assert _flag(command, "--node-ip-address") == "127.0.0.1"
    assert _flag(command, "--port") == str(RAY_GCS_PORT) == "6380"
    assert (_flag(command, "--dashboard-host"), _flag(command, "--dashboard-port")) == ("127.0.0.1", "8265")
    assert _flag(command, "--ray-client-server-port") == "10001"
    assert _flag(command, "--num-cpus") == "1"
    assert Path(_flag(command, "--temp-dir")).is_relative_to(stack.root)
    assert json.loads(_flag(command, "--resources")) == {"head_node": 1}
    assert RAY_HEAD.ports == (6380, 8265, 10001)


def test_the_ray_worker(stack: StackPaths, env: dict[str, str]) -> None:
    command = RAY_WORKER.command(stack, env)
    assert command[1] == "start" and "--head" not in command
    assert "--address=127.0.0.1:6380" in command
    assert "--block" in command
    assert _flag(command, "--node-ip-address") == "127.0.0.1"
    assert _flag(command, "--num-cpus") == "1"
    assert json.loads(_flag(command, "--resources")) == {"worker_node": 1}
    assert int(_flag(command, "--dashboard-agent-listen-port")) == RAY_WORKER.port


def test_the_ray_nodes_worker_port_ranges_are_distinct_and_free_of_service_ports(
    stack: StackPaths, env: dict[str, str]
) -> None:
    head, worker = _port_range(RAY_HEAD.command(stack, env)), _port_range(RAY_WORKER.command(stack, env))
    assert len(head) > 100 and len(worker) > 100
    assert not set(head) & set(worker)
    claimed = {port for service in (*CLUSTER_SERVICES, *AIRFLOW_COMPONENTS) for port in service.ports}
    assert not claimed & (set(head) | set(worker)), "a Ray worker would take a service's port"


def test_the_ray_nodes_environment(stack: StackPaths) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": S3_KEY,
        "RAY_ADDRESS": "127.0.0.1:6380",
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": "/repo",
        "KEEP": "me",
    }
    cluster._ray_env(stack, env)
    assert not [key for key in env if key.startswith("AWS_")]
    assert "RAY_ADDRESS" not in env, "`ray start` would take it for the cluster to join"
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(stack.ray_token_file)
    assert env["PYTHONPATH"] == "", "Ray's workers get the code from each job's runtime_env"
    assert env["KEEP"] == "me"
    assert RAY_HEAD.prepare is cluster._ray_env and RAY_WORKER.prepare is cluster._ray_env


class _Response:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self) -> bytes:
        return self.body


def _ray_dashboard(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[urllib.request.Request]:
    requests: list[urllib.request.Request] = []

    def urlopen(request: urllib.request.Request, timeout: float = 0) -> _Response:
        requests.append(request)
        if isinstance(answer, BaseException):
            raise answer
        return _Response(json.dumps(answer).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requests


NODES = {"data": {"result": {"result": [{"node_id": "a", "state": "ALIVE"}, {"node_id": "b", "state": "DEAD"}]}}}


def test_ray_state_asks_the_dashboard_with_the_stacks_token(stack: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.ray_token_file.parent.mkdir(parents=True)
    stack.ray_token_file.write_text("f" * 64 + "\n")
    requests = _ray_dashboard(monkeypatch, NODES)
    assert cluster.ray_state(stack, "nodes") == NODES["data"]["result"]["result"]
    [request] = requests
    assert request.full_url == "http://127.0.0.1:8265/api/v0/nodes?limit=10000&detail=false"
    assert request.get_header("Authorization") == "Bearer " + "f" * 64
    cluster.ray_state(stack, "actors", detail=True)
    assert requests[-1].full_url.endswith("/api/v0/actors?limit=10000&detail=true")


def test_ray_state_of_an_answer_without_results_is_empty(stack: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.ray_token_file.parent.mkdir(parents=True)
    stack.ray_token_file.write_text("token")
    _ray_dashboard(monkeypatch, {"result": False, "msg": "no"})
    assert cluster.ray_state(stack, "nodes") == []


def test_the_ray_nodes_health_counts_alive_nodes(stack: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.ray_token_file.parent.mkdir(parents=True)
    stack.ray_token_file.write_text("token")
    env = {"MLOPS_STACK_DIR": str(stack.root)}
    _ray_dashboard(monkeypatch, NODES)
    assert cluster._alive_ray_nodes(env) == 1
    assert RAY_HEAD.is_healthy(env) and not RAY_WORKER.is_healthy(env), "the worker waits for a second live node"
    _ray_dashboard(monkeypatch, urllib.error.URLError("connection refused"))
    assert cluster._alive_ray_nodes(env) == 0 and not RAY_HEAD.is_healthy(env)


# --- MLflow on PostgreSQL; Airflow's components -----------------------------------------------------------------------


def test_mlflow_gets_its_database_through_its_environment(stack: StackPaths, env: dict[str, str]) -> None:
    assert "MLFLOW_BACKEND_STORE_URI" not in env, "the shared environment has no MLflow database URL"
    sqlite = _mlflow_command(stack, dict(env))
    assert _flag(sqlite, "--backend-store-uri") == f"sqlite:///{stack.data / 'mlflow' / 'mlflow.db'}"

    service_env = dict(env)
    MLFLOW_CLUSTER.prepare(stack, service_env)
    assert service_env["MLFLOW_BACKEND_STORE_URI"] == postgres_url(stack, "mlflow")
    assert service_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false", "the local MLflow's preparation too"
    command = MLFLOW_CLUSTER.command(stack, service_env)
    assert "--backend-store-uri" not in command
    assert _flag(command, "--host") == "127.0.0.1"
    assert (MLFLOW_CLUSTER.name, MLFLOW_CLUSTER.port, MLFLOW_CLUSTER.command) == (
        MLFLOW.name,
        MLFLOW.port,
        MLFLOW.command,
    )


def test_airflows_components(stack: StackPaths, env: dict[str, str]) -> None:
    commands = {service.name: service.command(stack, env) for service in AIRFLOW_COMPONENTS}
    assert {name: command[1:] for name, command in commands.items()} == {
        "airflow-api-server": ["api-server", "--host", "127.0.0.1", "--port", "8080"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-triggerer": ["triggerer"],
    }
    assert all(Path(command[0]).name == "airflow" for command in commands.values())
    for service in AIRFLOW_COMPONENTS:  # the endpoint and key variables are unset for each, as for standalone
        service_env = dict(env)
        service.prepare(stack, service_env)
        assert S3_KEY not in service_env.values() and "RAY_AUTH_TOKEN_PATH" not in service_env, service.name
        assert service_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == postgres_url(stack, "airflow")
