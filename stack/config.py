"""Where the local stack lives, which versions it runs, and the environment every process of the project shares.

Every endpoint is configuration: the defaults point at the local stack on 127.0.0.1, and any variable already set in
the environment (a real cluster's S3 endpoint, Kafka bootstrap servers, MLflow URI, Spark master, Ray address) wins.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ml.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent

# Pinned versions of what the stack fetches from the registries (Python packages are pinned in constraints.txt).
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
VERSITYGW_VERSION = "v1.8.0"
KAFKA_VERSION = "4.1.1"  # also in stack/maven/kafka-pom.xml
HADOOP_AWS_VERSION = "3.5.0"  # must equal pyspark/jars/hadoop-client-api-*.jar; also in stack/maven/spark-s3a-pom.xml

# The bucket of MLflow's artifacts (the pipeline's own are ml.settings.LakeSettings'); `python -m stack.init_resources`
# creates all three.
MLFLOW_BUCKET = "mlflow"


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
    def versitygw(self) -> Path:
        return self.bin / "versitygw"


def stack_paths() -> StackPaths:
    """The stack folder: `$MLOPS_STACK_DIR`, else `.stack/` in the repository."""
    return StackPaths(Path(os.environ.get("MLOPS_STACK_DIR", REPO_ROOT / ".stack")).resolve())


def local_credentials(paths: StackPaths) -> dict[str, str]:
    """Access keys for the local S3 server, generated once per stack folder so that none is committed."""
    if paths.credentials_file.exists():
        stored: dict[str, str] = json.loads(paths.credentials_file.read_text())
        return stored
    paths.root.mkdir(parents=True, exist_ok=True)
    created = {"access_key": "mlops-" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(30)}
    paths.credentials_file.write_text(json.dumps(created))
    paths.credentials_file.chmod(0o600)
    return created


def stack_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment shared by the stack, the tests, Airflow and `python -m ml`: local defaults under `base`."""
    base = dict(os.environ if base is None else base)
    paths = stack_paths()
    venv_bin = Path(REPO_ROOT / ".venv" / "bin")
    defaults: dict[str, str] = {
        # The endpoints: ml.settings' defaults, the one place they are written down.
        **Settings().to_env(),
        "MLOPS_STACK_DIR": str(paths.root),
        "MLOPS_SERVE_URL": "http://127.0.0.1:8000",
        "RAY_AUTH_MODE": "disabled",
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")]),
        "PATH": os.pathsep.join([str(venv_bin), base.get("PATH", "/usr/bin:/bin")]),
    }
    env = {**defaults, **base}
    # Paths must keep the project's entries even when the caller has its own.
    env["PATH"] = defaults["PATH"] if str(venv_bin) not in base.get("PATH", "") else base["PATH"]
    if "PYTHONPATH" in base and str(REPO_ROOT) not in base["PYTHONPATH"]:
        env["PYTHONPATH"] = os.pathsep.join([defaults["PYTHONPATH"], base["PYTHONPATH"]])
    # The local S3 server's keys, unless real ones are configured.
    if "AWS_ACCESS_KEY_ID" not in base:
        creds = local_credentials(paths)
        env["AWS_ACCESS_KEY_ID"] = creds["access_key"]
        env["AWS_SECRET_ACCESS_KEY"] = creds["secret_key"]
    env.setdefault("MLFLOW_S3_ENDPOINT_URL", env["AWS_ENDPOINT_URL"])
    return env


def apply_stack_environment() -> dict[str, str]:
    """Put the stack environment into `os.environ` (for tests and the CLI) and return it."""
    env = stack_environment()
    os.environ.update(env)
    return env
