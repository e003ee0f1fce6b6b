"""Security properties of the whole repository, checked without services: no secret in the repository or its history,
generated keys kept out of git, checkpoints that never unpickle code, and a prediction service with request limits by
default.

Where the rest lives: the local stack listening on 127.0.0.1 only and keeping secrets off command lines,
tests/unit/stack/test_services.py and test_config.py; the prediction service binding 127.0.0.1 by default,
tests/unit/ml/serve/test_cli.py; the generated admin password, tests/unit/stack/
test_airflow_home.py; docker-compose.yaml's secrets, tests/unit/stack/test_docker_compose.py; connection keys that
never reach os.environ, a command line or a log, tests/unit/plugins/mlops_airflow/.

Known exceptions, outside what this repository configures (see the report of the fault/security work):
  * `airflow standalone` starts Airflow's log servers (scheduler :8793, triggerer :8794) on all interfaces: the host is
    hard-coded in airflow.utils.serve_logs; they answer only requests with a JWT signed by the deployment's key.
  * A local Ray (ml.tune.runtime.ensure_ray, tuning) listens on all interfaces while a search runs.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stack.airflow_home import SIMPLE_AUTH_FILE
from stack.config import REPO_ROOT, stack_paths

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
    ("tests/unit/stack/test_docker_compose.py", "s3cr3t-from-prod"): "a fake secret: the compose check fails",
    ("tests/unit/stack/test_docker_compose.py", "hunter2"): "a fake password: the compose check fails",
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


def test_compose_env_file_is_git_ignored() -> None:
    ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", ".env"], check=False, timeout=30)
    assert ignored.returncode == 0


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
