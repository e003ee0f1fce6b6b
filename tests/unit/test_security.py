"""Security properties checked without services: no secret in the repository, a local stack that listens on
127.0.0.1 only, checkpoints that never unpickle code, and a prediction service with request limits by default.

Known exceptions, outside what this repository configures (see the report of the fault/security work):
  * `airflow standalone` starts Airflow's log servers (scheduler :8793, triggerer :8794) on all interfaces: the host is
    hard-coded in airflow.utils.serve_logs; they answer only requests with a JWT signed by the deployment's key.
  * A local Ray (ml.tune.ensure_ray, tuning) listens on all interfaces while a search runs.
docker-compose.yaml's own secret checks live in tests/unit/test_docker_compose.py.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stack.airflow_home import SIMPLE_AUTH_FILE, write_admin_password
from stack.config import REPO_ROOT, StackPaths, stack_environment, stack_paths

pytestmark = pytest.mark.unit

MAX_SCANNED_BYTES = 5 * 1024 * 1024  # larger files are data, not code or configuration

# Formats that are a secret wherever they appear.
KEY_FORMATS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "JSON Web Token": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
}
# A literal assigned to a secret-looking name (`password = "..."`, `secret_key: '...'`, `"token": "..."`), and a
# password inside a URL. Interpolations (`${VAR:-placeholder}`, `{var}`, `%s`) are not literals.
ASSIGNED_SECRET = re.compile(
    r"""(?ix)\b[\w.-]*(?:password|passwd|secret|api_?key|access_token|auth_token|private_key)[\w.-]*
        ["']?\s*[:=]\s*["'](?P<value>[^"'\s${}%<>]{6,})["']"""
)
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:(?P<value>[^@\s/'\"${}]{3,})@")
# Deliberate, reviewed literals: (path, value) -> why it is not a secret.
ALLOWED_LITERALS = {
    ("tests/unit/test_docker_compose.py", "s3cr3t-from-prod"): "a fake secret that proves the compose check fails",
    ("tests/unit/test_docker_compose.py", "hunter2"): "a fake password that proves the compose check fails",
    ("tests/unit/test_security.py", "test-secret-value-0123456789"): "a fake key for the command-line checks below",
}


def repository_files() -> list[str]:
    """What is or would be committed: tracked files plus untracked ones that .gitignore does not exclude."""
    listed = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name})


def read_text(relative: str) -> str | None:
    path = REPO_ROOT / relative
    if not path.is_file() or path.stat().st_size > MAX_SCANNED_BYTES:
        return None
    data = path.read_bytes()
    return None if b"\0" in data else data.decode("utf-8", errors="replace")


def secret_findings(files: dict[str, str]) -> list[str]:
    """`path:line: what` for every secret-looking string in `files` (relative path -> text)."""
    findings = []
    for relative, text in files.items():
        for number, line in enumerate(text.splitlines(), 1):
            for name, pattern in KEY_FORMATS.items():
                if pattern.search(line):
                    findings.append(f"{relative}:{number}: {name}")
            for pattern in (ASSIGNED_SECRET, URL_PASSWORD):
                for match in pattern.finditer(line):
                    if (relative, match.group("value")) not in ALLOWED_LITERALS:
                        findings.append(f"{relative}:{number}: literal secret {match.group(0)[:60]!r}")
    return findings


@pytest.fixture(scope="module")
def repository_texts() -> dict[str, str]:
    texts = {name: read_text(name) for name in repository_files()}
    return {name: text for name, text in texts.items() if text is not None}


# --- no secret in the repository --------------------------------------------------------------------------------------


def test_no_secret_in_the_repository(repository_texts: dict[str, str]) -> None:
    assert len(repository_texts) > 50, "the scan found almost no files: is this a git checkout?"
    assert secret_findings(repository_texts) == []


def test_the_scanner_finds_what_it_looks_for() -> None:
    planted = {
        "a.py": 'aws_key = "' + "AKIA" + "Q" * 16 + '"',
        "b.pem": "-----BEGIN " + "RSA PRIVATE KEY-----",
        "c.py": "db_password = " + "'Sup3r-s3cret'",
        "d.yaml": "secret_key: " + '"abcdef123456"',
        "e.ini": "url = postgresql://svc:" + "Pa55word@db/x",
        "f.json": '{"api_key": ' + '"0123456789abcdef"}',
    }
    found = secret_findings(planted)
    assert {finding.split(":")[0] for finding in found} == set(planted), found
    harmless = {
        "g.yaml": "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-airflow}",
        "h.py": 'password = os.environ["AIRFLOW_PASSWORD"]',
        "i.py": 'url = f"postgresql://{user}:{password}@{host}/db"',
    }
    assert secret_findings(harmless) == []


def test_stack_credentials_are_generated_ignored_and_private() -> None:
    ignored = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "check-ignore", "-q", ".stack/credentials.json"], check=False, timeout=30
    )
    assert ignored.returncode == 0, ".stack/credentials.json is not git-ignored"
    tracked = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", ".stack"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert tracked == "", f"files under .stack/ are tracked: {tracked.split()}"


def test_generated_stack_secrets_appear_in_no_repository_file_or_commit(repository_texts: dict[str, str]) -> None:
    paths = stack_paths()
    secrets_in_use = {}
    if paths.credentials_file.exists():
        assert paths.credentials_file.stat().st_mode & 0o077 == 0, "credentials.json is readable by others"
        credentials = json.loads(paths.credentials_file.read_text())
        secrets_in_use["S3 secret key"] = credentials["secret_key"]
        secrets_in_use["S3 access key"] = credentials["access_key"]
    passwords = paths.airflow_home / SIMPLE_AUTH_FILE
    if passwords.exists():
        for user, password in json.loads(passwords.read_text()).items():
            if len(password) >= 8:
                secrets_in_use[f"Airflow password of {user}"] = password
    # Without a local stack here there are no generated secrets to look for; the key-format scan below still runs.
    leaks = [
        f"{name} in {relative}"
        for relative, text in repository_texts.items()
        for name, secret in secrets_in_use.items()
        if secret in text
    ]
    assert leaks == []
    history = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "log", "-p", "--all", "--no-color", "--text", "-n", "2000"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    assert [name for name, secret in secrets_in_use.items() if secret.encode() in history] == []
    assert not [name for name, pattern in KEY_FORMATS.items() if pattern.search(history.decode(errors="replace"))]


def test_the_airflow_admin_password_is_generated_private_and_kept(tmp_path: Path) -> None:
    # Written before Airflow starts, so that Airflow never generates one itself and prints it to its log.
    path = write_admin_password(tmp_path)
    password = json.loads(path.read_text())["admin"]
    assert path.name == SIMPLE_AUTH_FILE and len(password) >= 16
    assert path.stat().st_mode & 0o077 == 0, "the password file is readable by others"
    assert json.loads(write_admin_password(tmp_path).read_text())["admin"] == password, "a second stack-up changed it"


def test_compose_env_file_is_git_ignored() -> None:
    ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", ".env"], check=False, timeout=30)
    assert ignored.returncode == 0


# --- the local stack listens on 127.0.0.1 only ------------------------------------------------------------------------


def _loopback(address: str) -> bool:
    """host:port, scheme://host:port/... or host: whether the host is 127.0.0.1 (or localhost)."""
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", address).split("/")[0]
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return host in ("127.0.0.1", "localhost")


@pytest.fixture
def fake_stack(tmp_path: Path) -> tuple[StackPaths, dict[str, str]]:
    paths = StackPaths(tmp_path)
    (paths.jars).mkdir(parents=True)
    paths.kafka_classpath_file.write_text("/nonexistent/kafka.jar")
    env = {
        "AWS_ACCESS_KEY_ID": "test-access",
        "AWS_SECRET_ACCESS_KEY": "test-secret-value-0123456789",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLOPS_MLFLOW_BUCKET": "mlflow",
    }
    return paths, env


def _flag_values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, part in enumerate(command[:-1]) if part == flag]


def test_s3_gateway_listens_on_loopback_only(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import S3, _s3_command

    command = _s3_command(*fake_stack)
    listeners = _flag_values(command, "--port") + _flag_values(command, "--webui")
    assert listeners and all(_loopback(value) for value in listeners), listeners
    assert all(_loopback(value) for value in _flag_values(command, "--webui-gateways"))
    assert not {"--admin-port", "--ap", "--website"} & set(command), "an extra listener without a loopback check"
    assert _loopback(S3.url.split()[0])


def test_kafka_listens_and_advertises_on_loopback_only() -> None:
    from stack.services import KAFKA_PROPERTIES

    properties = dict(
        line.split("=", 1) for line in KAFKA_PROPERTIES.splitlines() if "=" in line and not line.startswith("#")
    )
    for key in ("listeners", "advertised.listeners", "controller.quorum.bootstrap.servers"):
        addresses = [entry.split("://")[-1] for entry in properties[key].split(",")]
        assert addresses and all(_loopback(address) for address in addresses), (key, properties[key])
    assert properties["listener.security.protocol.map"].count("PLAINTEXT") >= 2  # plain text: loopback is the fence
    assert properties["auto.create.topics.enable"] == "false"


def test_mlflow_server_binds_loopback(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import _mlflow_command

    command = _mlflow_command(*fake_stack)
    assert _flag_values(command, "--host") == ["127.0.0.1"], command


def test_airflow_spark_and_client_defaults_are_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_STACK_DIR", str(tmp_path))  # nothing is generated in the real stack folder
    env = stack_environment({"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    for key in (
        "AWS_ENDPOINT_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "MLFLOW_TRACKING_URI",
        "MLOPS_SERVE_URL",
        "MLFLOW_S3_ENDPOINT_URL",
    ):
        assert _loopback(env[key]), (key, env[key])
    assert not (tmp_path / "credentials.json").exists()


def test_prediction_service_binds_loopback_by_default() -> None:
    import argparse

    from ml.serve import register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    assert parser.parse_args(["serve"]).host == "127.0.0.1"


def test_no_secret_on_a_service_command_line(fake_stack: tuple[StackPaths, dict[str, str]]) -> None:
    from stack.services import ALL_SERVICES

    paths, env = fake_stack
    for service in ALL_SERVICES:
        command = " ".join(service.command(paths, env))
        assert env["AWS_SECRET_ACCESS_KEY"] not in command, f"{service.name} gets the S3 secret in argv"


# --- checkpoints never unpickle code ----------------------------------------------------------------------------------
# ml.models.load_model refusing a pickled payload is proven by tests/unit/test_models.py::
# test_load_model_refuses_pickled_code; here: every loader in the code uses weights_only, and the path that serving, the
# MLflow pyfunc and the promotion gate use (TabularPredictor.from_files) refuses a payload before it can run.


def _calls(tree: ast.AST, module: str, function: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == function
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == module
    ]


def test_every_loader_in_the_code_refuses_pickled_code() -> None:
    problems = []
    for folder in ("ml", "plugins", "dags", "stack"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            where = path.relative_to(REPO_ROOT)
            for call in _calls(tree, "torch", "load"):
                weights_only = [k for k in call.keywords if k.arg == "weights_only"]
                if not (
                    weights_only
                    and isinstance(weights_only[0].value, ast.Constant)
                    and weights_only[0].value.value is True
                ):
                    problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
            for module, function in (
                ("pickle", "load"),
                ("pickle", "loads"),
                ("cloudpickle", "load"),
                ("cloudpickle", "loads"),
                ("joblib", "load"),
                ("dill", "load"),
                ("dill", "loads"),
                ("yaml", "load"),
                ("yaml", "unsafe_load"),
            ):
                problems += [f"{where}:{c.lineno}: {module}.{function}" for c in _calls(tree, module, function)]
    assert problems == []


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_served_model_path_refuses_a_checkpoint_with_code(tmp_path: Path) -> None:
    import pickle

    import torch

    from ml.registry import TabularPredictor
    from tests.support.stand_in_model import make_checkpoint, make_spec

    spec = make_spec()
    checkpoint = make_checkpoint(tmp_path / "checkpoint", spec)
    spec_file = tmp_path / "feature_spec.json"
    spec_file.write_text(spec.to_json())
    TabularPredictor.from_files(checkpoint, spec_file)  # the genuine checkpoint loads
    state = torch.load(checkpoint / "model_state.pt", weights_only=True)
    marker = tmp_path / "code-ran"
    state["payload"] = _Payload(marker)
    torch.save(state, checkpoint / "model_state.pt")
    with pytest.raises(pickle.UnpicklingError):
        TabularPredictor.from_files(checkpoint, spec_file)
    assert not marker.exists(), "loading the checkpoint ran code from it"


# --- the prediction service limits requests by default ----------------------------------------------------------------


def test_prediction_service_limits_body_size_and_rows_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml.models import load_model
    from ml.registry import LoadedModel, TabularPredictor
    from ml.serve import create_app
    from ml.serve.app import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, ServeConfig, serve_state
    from tests.support.stand_in_model import make_checkpoint, make_spec, raw_rows

    for name in ("MLOPS_SERVE_MAX_ROWS", "MLOPS_SERVE_MAX_BYTES"):
        monkeypatch.delenv(name, raising=False)
    assert (DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES) == (1000, 1024 * 1024)
    config = ServeConfig.from_env()
    assert (config.max_rows, config.max_bytes) == (DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES)

    spec = make_spec()
    loaded = LoadedModel(
        "standin-classification", "1", TabularPredictor(load_model(make_checkpoint(tmp_path / "c", spec)), spec)
    )
    app = create_app(loaded=loaded)
    assert app.config["MAX_CONTENT_LENGTH"] == DEFAULT_MAX_BYTES
    assert serve_state(app).config.max_rows == DEFAULT_MAX_ROWS
    client = app.test_client()

    def post(data: bytes) -> Any:
        return client.post("/predict", data=data, content_type="application/json")

    oversized = post(b'{"rows": [], "pad": "' + b"x" * DEFAULT_MAX_BYTES + b'"}')
    assert oversized.status_code == 413 and "MLOPS_SERVE_MAX_BYTES" in oversized.json["error"]
    row = raw_rows(1, seed=1)[0]
    too_many = post(json.dumps({"rows": [row] * (DEFAULT_MAX_ROWS + 1)}).encode())
    assert too_many.status_code == 413 and "too many rows" in too_many.json["error"]
    at_limit = post(json.dumps({"rows": [row] * DEFAULT_MAX_ROWS}).encode())
    assert at_limit.status_code == 200 and len(at_limit.json["predictions"]) == DEFAULT_MAX_ROWS


def test_kafka_cluster_ids_never_start_with_a_dash() -> None:
    # kafka-storage's argument parser takes "-t -abc..." for an option: a fresh-clone run failed on one in 64 ids.
    from stack.services import _kafka_random_uuid

    ids = [_kafka_random_uuid() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
