"""stack/cluster/postgres.py: PostgreSQL's command (loopback, runuser only as root), the server it finds, initdb with
the superuser's password in a private file, never on a command line, and the databases it creates. Nothing here
starts a process or connects to a database: subprocess.run, glob and the psycopg2 connection are fakes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql

from stack.cluster import postgres
from stack.config import StackPaths, cluster_secrets
from stack.process import StackError
from tests.unit.stack.cluster.support import fake_postgres_versions, flag


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
    postgres._postgres_prepare(stack, {})
    [call] = seen
    assert call["command"][0] == "/usr/lib/postgresql/16/bin/initdb"
    assert flag(call["command"], "-D") == str(stack.data / "postgres")
    assert "--auth=scram-sha-256" in call["command"]
    assert password not in " ".join(call["command"])
    assert (call["pw"], call["mode"]) == (password + "\n", 0o600)
    assert not call["pwfile"].exists(), "the password file is deleted after initdb"
    assert not call["pwfile"].is_relative_to(stack.data / "postgres"), "initdb wants an empty data folder"
    assert stat.S_IMODE((stack.data / "postgres").stat().st_mode) == 0o700

    (stack.data / "postgres" / "PG_VERSION").write_text("16\n")
    postgres._postgres_prepare(stack, {})
    assert len(seen) == 1, "an initialised data folder is kept"


def test_a_failed_initdb_is_reported_and_leaves_no_password_file(
    stack: StackPaths, as_user: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "no"))
    with pytest.raises(StackError, match=r"postgres: initdb of .* failed"):
        postgres._postgres_prepare(stack, {})
    assert not list((stack.run / "postgres").iterdir())


def test_an_initdb_that_cannot_run_leaves_no_password_file(
    stack: StackPaths, as_user: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(command[0])

    monkeypatch.setattr(subprocess, "run", missing)
    with pytest.raises(FileNotFoundError):
        postgres._postgres_prepare(stack, {})
    assert not list((stack.run / "postgres").iterdir())


def test_postgres_binds_loopback_and_runs_as_the_postgres_user_only_as_root(
    stack: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    command = postgres._postgres_command(stack, {})
    assert command[0] == "/usr/lib/postgresql/16/bin/postgres"
    assert "runuser" not in command
    assert "listen_addresses=127.0.0.1" in command and command[command.index("listen_addresses=127.0.0.1") - 1] == "-c"
    assert flag(command, "-p") == "5432"
    assert flag(command, "-D") == str(stack.data / "postgres")
    assert flag(command, "-k") == str(stack.run / "postgres"), "its socket stays in the stack folder"

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    as_root = postgres._postgres_command(stack, {})
    assert as_root[:4] == ["runuser", "-u", "postgres", "--"]
    assert as_root[4:] == command


def test_postgres_bin_dir_is_the_newest_installed_server(
    monkeypatch: pytest.MonkeyPatch, no_postgres_on_path: None
) -> None:
    fake_postgres_versions(monkeypatch, ["15", "9", "16", "13"])  # "9" sorts last as text
    assert postgres.postgres_bin_dir() == Path("/usr/lib/postgresql/16/bin")
    fake_postgres_versions(monkeypatch, ["9"])
    assert postgres.postgres_bin_dir() == Path("/usr/lib/postgresql/9/bin")


def test_postgres_bin_dir_falls_back_to_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_postgres_versions(monkeypatch, [])
    server = tmp_path / "pg" / "bin" / "postgres"
    server.parent.mkdir(parents=True)
    server.write_text("")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: str(server) if name == "postgres" else None)
    assert postgres.postgres_bin_dir() == server.parent.resolve()


def test_without_a_postgres_server_the_error_says_make_postgres(
    monkeypatch: pytest.MonkeyPatch, no_postgres_on_path: None
) -> None:
    fake_postgres_versions(monkeypatch, [])
    with pytest.raises(StackError, match=r"no PostgreSQL server found; run `make postgres`"):
        postgres.postgres_bin_dir()


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
def server(monkeypatch: pytest.MonkeyPatch) -> _FakePostgres:
    server = _FakePostgres()
    monkeypatch.setattr(postgres, "postgres_connect", lambda paths, database="postgres", connect_timeout=2: server)
    return server


def test_create_databases_creates_a_role_and_database_per_component_once(
    stack_dir: StackPaths, server: _FakePostgres
) -> None:
    secrets = cluster_secrets(stack_dir)
    assert postgres.create_databases(stack_dir) == ["airflow", "mlflow", "metastore"]
    for name in ("airflow", "mlflow", "metastore"):
        assert server.roles[name] == secrets[f"{name}_db_password"], "the role's password is its URL's"
        assert server.databases[name] == name, "each database is owned by its own role"
    creates = [statement for statement, _ in server.statements if not isinstance(statement, str)]
    assert len(creates) == 6
    for statement in creates:  # names as identifiers, the password as a literal: never pasted into the SQL text
        text = "".join(part.string for part in statement.seq if isinstance(part, sql.SQL))
        assert not any(name in text for name in ("airflow", "mlflow", "metastore")), text
        assert not any(secret in text for secret in secrets.values())
    assert server.closed == 1

    before = len(server.statements)
    assert postgres.create_databases(stack_dir) == []
    assert all(isinstance(statement, str) for statement, _ in server.statements[before:]), "nothing created again"
    assert server.closed == 2


def test_create_databases_completes_what_is_missing(stack_dir: StackPaths, server: _FakePostgres) -> None:
    server.roles["mlflow"] = "kept"
    server.roles["airflow"] = "kept"
    server.databases["airflow"] = "airflow"
    assert postgres.create_databases(stack_dir) == ["mlflow", "metastore"]
    assert server.roles["mlflow"] == "kept", "an existing role keeps its password"
    assert server.databases["mlflow"] == "mlflow"


def test_create_databases_closes_its_connection_when_a_statement_fails(
    stack_dir: StackPaths, server: _FakePostgres
) -> None:
    server.fail_on = "CREATE DATABASE"
    with pytest.raises(RuntimeError, match="refuses"):
        postgres.create_databases(stack_dir)
    assert server.closed == 1
