"""The cluster tests' stack folder as `make tools` leaves it, the cluster profile's environment, and a process that
is not root. Nothing here starts a process, opens a socket or connects to a database."""

from __future__ import annotations

import os
import shutil

import pytest

from stack.config import StackPaths, stack_environment
from tests.unit.stack.cluster.support import GIVEN_KEYS, PG_JARS, S3A_JARS, fake_postgres_versions


@pytest.fixture
def no_postgres_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name == "postgres" else real_which(name, *a, **k)
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
    fake_postgres_versions(monkeypatch, ["16"])
    return stack_dir


@pytest.fixture
def env(stack: StackPaths) -> dict[str, str]:
    """The cluster profile's environment, with given S3 keys."""
    return stack_environment(dict(GIVEN_KEYS), profile="cluster")
