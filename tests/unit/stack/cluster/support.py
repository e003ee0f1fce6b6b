"""What the cluster tests share: given S3 keys, the classpath files `make tools` would write, a command's flags and
a fake set of installed PostgreSQL servers."""

from __future__ import annotations

import glob

import pytest

S3_KEY = "unit-cluster-s3-secret-0123456789"
GIVEN_KEYS = {"AWS_ACCESS_KEY_ID": "unit-cluster-id", "AWS_SECRET_ACCESS_KEY": S3_KEY}
POSTGRES_GLOB = "/usr/lib/postgresql/*/bin/postgres"
PG_JARS = "/m2/postgresql-42.7.jar:/m2/checker-qual.jar"
S3A_JARS = "/m2/hadoop-aws-3.5.0.jar:/m2/bundle-2.29.jar"


def flag(command: list[str], option: str) -> str:
    [value] = [command[i + 1] for i, part in enumerate(command[:-1]) if part == option]
    return value


def fake_postgres_versions(monkeypatch: pytest.MonkeyPatch, versions: list[str]) -> None:
    real_glob = glob.glob
    found = [f"/usr/lib/postgresql/{version}/bin/postgres" for version in versions]
    monkeypatch.setattr(
        glob, "glob", lambda pattern, *a, **k: list(found) if pattern == POSTGRES_GLOB else real_glob(pattern, *a, **k)
    )
