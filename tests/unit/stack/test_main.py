"""stack/__main__.py (`python -m stack`): the commands that need no running service, in a child process with a
throwaway stack folder and keys given (so none are generated); the profile checks of `up`, `down` and `status` in this
process, with the services and the stack environment faked so that nothing starts and nothing is probed."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import stack.__main__ as stack_main
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


def _exports(stdout: str) -> dict[str, str]:
    lines = [line for line in stdout.splitlines() if line.startswith("export ")]
    return {key: shlex.split(value)[0] for key, value in (line.removeprefix("export ").split("=", 1) for line in lines)}


def test_env_prints_the_stack_environment_as_exports(stack_dir: StackPaths) -> None:
    result = _stack(stack_dir, "env")
    assert result.returncode == 0, result.stderr
    exports = _exports(result.stdout)
    assert exports["KAFKA_BOOTSTRAP_SERVERS"] == "broker.example:9092", "what is set wins"
    assert exports["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert exports["MLOPS_STACK_DIR"] == str(stack_dir.root)
    assert str(REPO_ROOT / "plugins") in exports["PYTHONPATH"]
    assert not stack_dir.credentials_file.exists()
    # the caller's own secret stays in the caller's shell: not printed again
    assert GIVEN_KEY not in result.stdout and "AWS_SECRET_ACCESS_KEY" not in exports


def test_env_never_prints_a_generated_secret_and_its_eval_still_sets_it(stack_dir: StackPaths) -> None:
    """Terminals and CI logs keep what is printed: `env` prints a lookup for each secret; `eval` runs it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env["MLOPS_STACK_DIR"] = str(stack_dir.root)
    printed = subprocess.run(
        [sys.executable, "-m", "stack", "env", "--profile", "cluster"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr
    generated = json.loads(stack_dir.credentials_file.read_text())["secret_key"]
    secrets = json.loads(stack_dir.cluster_secrets_file.read_text())
    for value in (
        generated,
        secrets["airflow_fernet_key"],
        secrets["airflow_jwt_secret"],
        secrets["airflow_db_password"],
    ):
        assert value not in printed.stdout
    script = printed.stdout + '\nprintf \'%s\\n\' "$AWS_SECRET_ACCESS_KEY" "$AIRFLOW__CORE__FERNET_KEY"\n'
    evaluated = subprocess.run(
        ["bash", "-c", script], cwd="/", env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert evaluated.stdout.split() == [generated, secrets["airflow_fernet_key"]]


def test_env_and_run_log_in_as_the_identity_asked_for(stack_dir: StackPaths) -> None:
    """The pipeline's logins by default; `--as serving` (make serve) the prediction service's, on the broker and on
    MLflow. `env` prints a lookup for each password, never the password; its `eval` sets the one that belongs to the
    user it exports."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env["MLOPS_STACK_DIR"] = str(stack_dir.root)

    def stack(*args: str, shell_env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stack", *args],
            cwd=REPO_ROOT,
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    logins = ("MLOPS_KAFKA_USERNAME", "MLOPS_KAFKA_PASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    code = f"import os; print(*[os.environ[name] for name in {logins}], 'AWS_ACCESS_KEY_ID' in os.environ)"
    ran = stack("run", "--as", "serving", "--", sys.executable, "-c", code)
    assert ran.returncode == 0, ran.stderr
    passwords = json.loads(stack_dir.stack_secrets_file.read_text())
    serving = ["serving", passwords["kafka_serving_password"], "serving", passwords["mlflow_serving_password"]]
    assert ran.stdout.split() == [*serving, "False"]
    for user in ("pipeline", "serving"):
        printed = stack("env", "--as", user)
        assert printed.returncode == 0, printed.stderr
        assert not [value for value in passwords.values() if value in printed.stdout]
        script = printed.stdout + "\nprintf '%s\\n'" + "".join(f' "${name}"' for name in logins) + "\n"
        evaluated = subprocess.run(
            ["bash", "-c", script], cwd="/", env=env, capture_output=True, text=True, timeout=120
        )
        expected = [user, passwords[f"kafka_{user}_password"], user, passwords[f"mlflow_{user}_password"]]
        assert evaluated.stdout.split() == expected, evaluated.stderr
    refused = stack("run", "--as", "admin", "--", "true")
    assert refused.returncode != 0 and "invalid choice: 'admin'" in refused.stderr


def test_secret_prints_only_secret_variables(stack_dir: StackPaths) -> None:
    result = _stack(stack_dir, "secret", "KAFKA_BOOTSTRAP_SERVERS")
    assert result.returncode == 1 and "not one of the stack's secret variables" in result.stderr


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


# --- profiles: in this process, with every service and the stack environment faked, so that nothing starts ---------


class _Started(Exception):
    """Raised by the faked stack environment: `up` got past its checks and would start services now."""


class _FakeService:
    def __init__(self, name: str, pid: int | None) -> None:
        self.name, self.pid = name, pid
        self.ports: tuple[int, ...] = ()
        self.stopped = False

    def running_pid(self, paths: StackPaths) -> int | None:
        return self.pid

    def pid_file(self, paths: StackPaths) -> Path:
        return paths.run / f"{self.name}.pid"

    def stop(self, paths: StackPaths) -> str:
        self.stopped = True
        return "stopped"


@pytest.fixture
def in_process(stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch) -> StackPaths:
    """`main` in this process, unable to start anything: the stack environment (the first step after `up`'s checks,
    and the one that would change os.environ) raises _Started."""
    monkeypatch.delenv("MLOPS_STACK_PROFILE", raising=False)

    def refuse(profile: str | None = None) -> dict[str, str]:
        raise _Started(profile)

    monkeypatch.setattr(stack_main, "apply_stack_environment", refuse)
    # `down` checks that the ports it freed are free: never a probe of a real port (the shared stack's) from here.
    monkeypatch.setattr(stack_main, "port_in_use", lambda port, host="127.0.0.1": False, raising=False)
    return stack_dir


def _running(monkeypatch: pytest.MonkeyPatch, **pids: int | None) -> list[_FakeService]:
    services = [_FakeService(name.replace("_", "-"), pid) for name, pid in pids.items()]
    monkeypatch.setattr(stack_main, "every_service", lambda: tuple(services))
    return services


def _record_profile(stack_dir: StackPaths, name: str) -> None:
    stack_dir.run.mkdir(parents=True, exist_ok=True)
    stack_dir.profile_file.write_text(name)


def test_up_refuses_a_profile_while_the_other_one_is_up(
    in_process: StackPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_profile(in_process, "local")
    _running(monkeypatch, s3=101, kafka=None, mlflow=103)
    assert stack_main.main(["up", "--profile", "cluster"]) == 1
    error = capsys.readouterr().err
    assert "the local profile is up (s3, mlflow)" in error
    assert "run `make stack-down` before starting the cluster profile" in error
    assert in_process.profile_file.read_text() == "local", "the record of what runs is kept"


def test_up_refuses_the_local_profile_while_the_cluster_is_up(
    in_process: StackPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_profile(in_process, "cluster")
    _running(monkeypatch, postgres=201)
    assert stack_main.main(["up", "--profile", "local"]) == 1
    assert "the cluster profile is up (postgres); run `make stack-down` before starting the local profile" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("MLOPS_STACK_PROFILE", "local")
    assert stack_main.main(["up"]) == 1, "the profile the variable names"
    monkeypatch.delenv("MLOPS_STACK_PROFILE")
    with pytest.raises(_Started, match="cluster"):
        stack_main.main(["up"])  # without a profile named: the one that is up


def test_up_goes_on_for_the_profile_that_is_up_or_when_nothing_runs(
    in_process: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record_profile(in_process, "local")
    _running(monkeypatch, s3=101)
    with pytest.raises(_Started, match="local"):
        stack_main.main(["up", "--profile", "local"])
    _running(monkeypatch, s3=None, mlflow=None)  # a profile file left behind, nothing alive
    with pytest.raises(_Started, match="cluster"):
        stack_main.main(["up", "--profile", "cluster"])


def test_down_stops_what_has_a_pid_file_in_reverse_and_forgets_the_profile(
    in_process: StackPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_profile(in_process, "cluster")
    services = _running(monkeypatch, s3=1, postgres=2, ray_head=3)
    for service in services[:2]:
        service.pid_file(in_process).write_text(str(service.pid))
    assert stack_main.main(["down"]) == 0
    assert [service.stopped for service in services] == [True, True, False]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["postgres", "s3", "stack"], "in reverse start order"
    assert lines[-1] == "stack is down"
    assert not in_process.profile_file.exists()


def test_down_reports_a_port_still_taken_after_stopping(
    in_process: StackPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_profile(in_process, "local")
    [s3, kafka] = _running(monkeypatch, s3=1, kafka=2)
    s3.ports, kafka.ports = (9000, 9001), (9092, 9093)
    s3.pid_file(in_process).write_text("1")  # kafka has no pid file: down does not stop it, nor check its ports
    probed: list[int] = []

    def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
        probed.append(port)
        return port == 9001

    monkeypatch.setattr(stack_main, "port_in_use", port_in_use)
    assert stack_main.main(["down"]) == 1
    assert sorted(probed) == [9000, 9001]
    assert "ports still taken after stopping the stack: [9001]" in capsys.readouterr().err
    assert not in_process.profile_file.exists()


def test_status_of_the_cluster_profile_names_it_and_probes_nothing_stopped(
    in_process: StackPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stack.profiles import profile_named

    given: list[str | None] = []

    def environment(profile: str | None = None) -> dict[str, str]:
        given.append(profile)
        return {}

    monkeypatch.setattr(stack_main, "apply_stack_environment", environment)
    # A stopped service is not probed: no request may reach the shared stack from here.
    for service in (*profile_named("local").all_services, *profile_named("cluster").all_services):
        monkeypatch.setattr(service, "is_healthy", lambda env: pytest.fail("a stopped service was probed"))
    assert stack_main.main(["status", "--profile", "cluster"]) == 1, "not all healthy"
    lines = capsys.readouterr().out.splitlines()
    assert given == ["cluster"]
    assert lines[0] == "profile: cluster"
    states = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert states["postgres"] == states["ray-head"] == states["airflow-api-server"] == "stopped"
    assert "airflow" not in states, "the local profile's `airflow standalone` is not the cluster's"


@pytest.mark.parametrize("verb", ["up", "down", "status", "tools", "env", "secret", "run"])
def test_every_verb_takes_the_profile_after_it(verb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []

    def record(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(stack_main, f"_{verb}", record)
    rest = {"run": ["--", "true"], "secret": ["AWS_SECRET_ACCESS_KEY"]}.get(verb, [])
    assert stack_main.main([verb, "--profile", "cluster", *rest]) == 0
    [args] = seen
    assert args.profile == "cluster"
    assert stack_main.main([verb, *rest]) == 0 and seen[-1].profile is None, "no default: the variable or file decide"
    if verb == "run":
        assert args.command == ["--", "true"]


def test_an_unknown_profile_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        stack_main.main(["status", "--profile", "kubernetes"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'kubernetes'" in capsys.readouterr().err


class _StartingService(_FakeService):
    url = "fake"

    def start(self, paths: StackPaths, env: dict[str, str]) -> str:
        return "started"


def test_up_gives_the_local_broker_its_users_and_acls_as_admin(
    stack_dir: StackPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After Kafka is healthy, `up` makes pipeline's and serving's credentials and ACLs, and the topics, as the
    broker's admin (the pipeline's user may do neither): with the stack folder's generated passwords."""
    import stack.init_resources
    import stack.tools
    from stack.config import stack_environment
    from stack.kafka_auth import admin_settings, client_passwords
    from stack.profiles import Profile

    monkeypatch.delenv("MLOPS_STACK_PROFILE", raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KAFKA_BOOTSTRAP_SERVERS", "MLOPS_KAFKA_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    env = stack_environment({"AWS_ACCESS_KEY_ID": "given-id", "AWS_SECRET_ACCESS_KEY": GIVEN_KEY}, profile="local")
    monkeypatch.setattr(stack_main, "apply_stack_environment", lambda profile=None: env)
    monkeypatch.setattr(stack_main, "every_service", lambda: ())
    kafka = _StartingService("kafka", None)
    monkeypatch.setattr(stack_main, "profile_named", lambda name: Profile("local", (kafka,), (), metastore_writers=1))
    monkeypatch.setattr(stack.tools, "fetch_all", lambda paths: [])
    prepared: list[tuple[Any, dict[str, str]]] = []

    def prepare_kafka(kafka_settings: Any, passwords: dict[str, str]) -> dict[str, Any]:
        prepared.append((kafka_settings, passwords))
        return {"users": sorted(passwords), "acls": 12, "topics_created": []}

    monkeypatch.setattr(stack.init_resources, "prepare_kafka", prepare_kafka)
    assert stack_main.main(["up", "--profile", "local", "--no-airflow"]) == 0
    assert prepared == [(admin_settings(stack_dir), client_passwords(stack_dir))]
    out = capsys.readouterr().out
    assert "users: monitor, pipeline, serving; ACL rules: 12" in out and "topics created: none (all exist)" in out
    assert not [password for password in client_passwords(stack_dir).values() if password in out]


def test_disk_exits_1_saying_how_full_the_disk_is(stack_dir: StackPaths, tmp_path: Path) -> None:
    """`make lint` runs it before mypy, which reports a full disk as an INTERNAL ERROR."""
    enough = _stack(stack_dir, "disk", "--need-gib", "0", "--path", str(tmp_path))
    assert enough.returncode == 0 and f"GiB free on the filesystem of {tmp_path}" in enough.stdout
    too_little = _stack(stack_dir, "disk", "--need-gib", "1e9", "--path", str(tmp_path))
    assert too_little.returncode == 1
    assert f"free on the filesystem of {tmp_path}; this needs 1e+09 GiB" in too_little.stderr


def test_up_refuses_to_start_on_a_full_disk(
    in_process: StackPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import stack.disk

    _running(monkeypatch)
    monkeypatch.setattr(stack.disk, "_free_bytes", lambda path: 0)
    assert stack_main.main(["up", "--profile", "local"]) == 1, "refused before the environment (which would start)"
    error = capsys.readouterr().err
    assert "only 0.0 GiB free on the filesystem of " in error and "this needs 3 GiB" in error
