"""Where the stack lives: the repository, and the one ignored folder (default `.stack/`) that everything the local
stack writes goes under, with the one way a secret file is written there."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class StackPaths:
    """Everything the local stack writes lives under one ignored folder (default `.stack/`)."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def jars(self) -> Path:
        return self.root / "jars"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def kafka_classpath_file(self) -> Path:
        return self.jars / "kafka.classpath"

    @property
    def spark_s3a_classpath_file(self) -> Path:
        return self.jars / "spark-s3a.classpath"

    @property
    def spark_lineage_classpath_file(self) -> Path:
        return self.jars / "spark-lineage.classpath"

    @property
    def spark_kafka_classpath_file(self) -> Path:
        return self.jars / "spark-kafka.classpath"

    @property
    def versitygw(self) -> Path:
        return self.bin / "versitygw"

    @property
    def postgresql_classpath_file(self) -> Path:
        return self.jars / "postgresql.classpath"

    @property
    def profile_file(self) -> Path:
        """The profile `up` started (absent when nothing runs)."""
        return self.run / "profile"

    @property
    def cluster_secrets_file(self) -> Path:
        return self.root / "cluster-secrets.json"

    @property
    def ray_token_file(self) -> Path:
        return self.root / "ray" / "auth_token"

    @property
    def stack_secrets_file(self) -> Path:
        """The passwords of the services of both profiles (stack_secrets)."""
        return self.root / "stack-secrets.json"


def stack_paths() -> StackPaths:
    """The stack folder: `$MLOPS_STACK_DIR`, else `.stack/` in the repository."""
    return StackPaths(Path(os.environ.get("MLOPS_STACK_DIR", REPO_ROOT / ".stack")).resolve())


def write_private(path: Path, text: str) -> Path:
    """Write a file that holds a secret: created (or truncated) with mode 0600 before a byte of it is written, so that
    it is never readable by others, not even for a moment; an existing file's looser mode is tightened first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)
    return path
