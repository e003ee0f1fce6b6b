"""stack/__main__.py (`python -m stack`): the commands that need no running service, in a child process with a
throwaway stack folder and keys given (so none are generated)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stack.config import REPO_ROOT, StackPaths

GIVEN_KEY = "given-key-value"


def _stack(stack_dir: StackPaths, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "MLOPS_STACK_DIR": str(stack_dir.root),
        "AWS_ACCESS_KEY_ID": "given-id",
        "AWS_SECRET_ACCESS_KEY": GIVEN_KEY,
        "KAFKA_BOOTSTRAP_SERVERS": "broker.example:9092",
    }
    return subprocess.run(
        [sys.executable, "-m", "stack", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_env_prints_the_stack_environment_as_exports(stack_dir: StackPaths) -> None:
    result = _stack(stack_dir, "env")
    assert result.returncode == 0, result.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
    assert exports["KAFKA_BOOTSTRAP_SERVERS"] == "'broker.example:9092'", "what is set wins"
    assert exports["MLFLOW_TRACKING_URI"] == "'http://127.0.0.1:5000'"
    assert exports["MLOPS_STACK_DIR"] == f"'{stack_dir.root}'"
    assert str(REPO_ROOT / "plugins") in exports["PYTHONPATH"]
    assert not stack_dir.credentials_file.exists()


def test_run_gives_a_command_the_stack_environment(stack_dir: StackPaths) -> None:
    code = "import os; print(os.environ['AWS_ENDPOINT_URL'], os.environ['AIRFLOW_HOME'])"
    result = _stack(stack_dir, "run", "--", sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["http://127.0.0.1:9000", str(stack_dir.airflow_home)]


def test_run_without_a_command_says_how_to_use_it(stack_dir: StackPaths) -> None:
    result = _stack(stack_dir, "run")
    assert result.returncode == 1 and "usage: python -m stack run -- COMMAND" in result.stderr


def test_down_without_a_running_stack_stops_nothing(stack_dir: StackPaths, tmp_path: Path) -> None:
    result = _stack(stack_dir, "down")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["stack is down"], result.stdout
