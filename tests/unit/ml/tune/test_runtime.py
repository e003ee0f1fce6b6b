"""ml.tune.runtime: Ray connected (GCS or Ray Client address, token auth) or started locally, its workers given the
`ml` package and the S3 keys through the runtime environment only, the auth variables Ray reads set around ray.init
and put back (ray.init faked; one check against the installed Ray's own token loader, in a child process); Ray's and
Optuna's logs routed through the logging tree with Tune's snapshot warning filtered out."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from _pytest.logging import LogCaptureHandler

from ml.settings import PROJECT_ROOT, RaySettings, S3Settings
from ml.tune import runtime
from ml.tune.runtime import _SNAPSHOT_WARNING, _DropSnapshotWarning, ensure_ray, ray_driver_env, route_library_logs

S3 = S3Settings(endpoint_url="http://s3.invalid:9000", access_key_id="id", secret_access_key="sk")
AUTH_VARIABLES = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_GCS_SERVER_PORT")


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """ray.init replaced; each call records its arguments and the Ray variables of the environment at that moment
    (and the test process's Ray configuration is not reloaded)."""
    import ray

    calls: list[dict[str, Any]] = []

    def init(**kwargs: Any) -> None:
        calls.append({**kwargs, "environment": {key: os.environ.get(key) for key in AUTH_VARIABLES}})

    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(runtime, "_reload_ray_auth", lambda: None)
    return calls


@pytest.fixture
def worker_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What an Airflow worker's environment might hold: another cluster's address and the local stack's mode."""
    monkeypatch.setenv("RAY_ADDRESS", "other-cluster:6379")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    return {key: value for key, value in os.environ.items() if key.startswith("RAY_")}


def ray_variables() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith("RAY_")}


def test_a_local_ray_is_started_with_the_s3_settings_for_its_workers(
    fake_ray: list[dict[str, Any]], worker_environment: dict[str, str]
) -> None:
    assert ensure_ray(RaySettings(), S3) is True
    ((init,),) = [fake_ray]
    assert init["runtime_env"] == {"env_vars": S3.subprocess_env()}, "a local Ray's workers import this checkout"
    assert init["runtime_env"]["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "sk"
    # "local" starts a Ray here, never the machine's latest `ray start` cluster (/tmp/ray/ray_current_cluster)
    assert init["address"] == "local" and init["include_dashboard"] is False
    # the settings decide, not the worker's environment: a local Ray on a port of its own, which its processes find
    # as RAY_ADDRESS (not the worker's other cluster), token auth with a fresh token
    environment = init["environment"]
    port = int(environment["RAY_GCS_SERVER_PORT"])
    assert environment["RAY_ADDRESS"] == f"{ray.util.get_node_ip_address()}:{port}" and 0 < port < 65536
    assert environment["RAY_AUTH_MODE"] == "token"
    assert re.fullmatch("[0-9a-f]{64}", environment["RAY_AUTH_TOKEN"])
    assert ray_variables() == worker_environment, "the worker's environment is put back"
    assert ensure_ray(RaySettings(), S3) is False  # already up: not ours to shut down
    assert len(fake_ray) == 1


def test_every_local_ray_gets_its_own_token_unless_one_is_configured() -> None:
    first, second = (ray_driver_env(RaySettings())["RAY_AUTH_TOKEN"] for _ in range(2))
    assert first and second and first != second
    configured = uuid.uuid4().hex
    assert ray_driver_env(RaySettings(auth_token=configured))["RAY_AUTH_TOKEN"] == configured
    # a cluster's token comes from its settings or Ray's own files, never made up
    assert "RAY_AUTH_TOKEN" not in ray_driver_env(RaySettings("10.0.0.5:6380", auth_mode="token"))
    assert "RAY_AUTH_TOKEN" not in ray_driver_env(RaySettings(auth_mode="disabled"))


@pytest.mark.parametrize("address", ["ray://head:10001", "10.0.0.5:6380"], ids=["ray-client", "gcs"])
def test_a_configured_cluster_is_joined_with_the_code_and_the_keys(
    fake_ray: list[dict[str, Any]], worker_environment: dict[str, str], address: str
) -> None:
    s3 = S3Settings(access_key_id="id", secret_access_key="sk", session_token=uuid.uuid4().hex)
    assert ensure_ray(RaySettings(address), s3) is True
    [init] = fake_ray
    assert init["address"] == address
    runtime_env = init["runtime_env"]
    assert runtime_env["env_vars"] == s3.subprocess_env()
    assert runtime_env["env_vars"]["AWS_SESSION_TOKEN"] == s3.session_token, "temporary credentials work on workers"
    assert runtime_env["py_modules"] == [str(PROJECT_ROOT / "ml")], "the cluster's workers do not have this checkout"
    assert "__pycache__/" in runtime_env["excludes"]
    assert init["environment"]["RAY_AUTH_MODE"] == "disabled", "no token in the settings: auth off, explicitly"
    assert ray_variables() == worker_environment


def test_the_token_is_in_the_environment_during_ray_init_only(
    fake_ray: list[dict[str, Any]], worker_environment: dict[str, str]
) -> None:
    token = uuid.uuid4().hex
    ensure_ray(RaySettings("ray://head:10001", auth_token=token), S3)
    [init] = fake_ray
    assert init["environment"] == {
        "RAY_ADDRESS": None,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_GCS_SERVER_PORT": None,  # a cluster's port is the cluster's
    }
    assert ray_variables() == worker_environment
    assert token not in json.dumps(init["runtime_env"]), "Ray's workers get their raylet's token, never ours"


def test_the_environment_is_put_back_when_ray_init_fails(
    fake_ray: list[dict[str, Any]], worker_environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    def refuse(**kwargs: Any) -> None:
        raise ConnectionError("Unauthenticated")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConnectionError):
        ensure_ray(RaySettings("10.0.0.5:6380", auth_token=uuid.uuid4().hex), S3)
    assert ray_variables() == worker_environment


def test_ray_keeps_the_token_after_the_environment_is_put_back(tmp_path: Path) -> None:
    """Against the installed Ray, in a child process (its configuration is process-wide): inside the scope Ray's own
    configuration switches to token mode and its C++ token loader finds the settings' token; once the environment is
    put back, the loader still answers with it (what the gRPC interceptors of a connected driver use)."""
    token = uuid.uuid4().hex
    script = textwrap.dedent(
        f"""
        import json, os
        import ray
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
        from ray._raylet import AuthenticationTokenLoader
        from ml.settings import RaySettings
        from ml.process_env import scoped_environment
        from ml.tune.runtime import _reload_ray_auth, ray_driver_env

        before = is_token_auth_enabled()
        with scoped_environment(ray_driver_env(RaySettings("10.0.0.5:6380", auth_token={token!r}))):
            _reload_ray_auth()
            inside = AuthenticationTokenLoader.instance().has_token()
        print(json.dumps({{
            "before": before,
            "inside": inside,
            "after": is_token_auth_enabled(),
            "header": AuthenticationTokenLoader.instance().get_token_for_http_header(),
            "environment": {{k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH") or k == "RAY_ADDRESS"}},
        }}))
        """
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(PROJECT_ROOT))  # no ~/.ray/auth_token of this machine
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    seen = json.loads(completed.stdout.strip().splitlines()[-1])
    assert (seen["before"], seen["inside"], seen["after"]) == (False, True, True)
    assert seen["header"] == {"authorization": f"Bearer {token}"}
    assert seen["environment"] == {}


@pytest.fixture
def library_loggers() -> Iterator[logging.Logger]:
    """Ray's logger as `import ray` leaves it; everything put back afterwards."""
    import optuna

    ray_logger = logging.getLogger("ray")
    state_logger = logging.getLogger("ray.tune.execution.experiment_state")
    before, propagated, filters = list(ray_logger.handlers), ray_logger.propagate, list(state_logger.filters)
    ray_logger.addHandler(logging.StreamHandler())  # what `import ray` installs (an earlier search may have removed it)
    ray_logger.propagate = False
    try:
        yield ray_logger
    finally:
        ray_logger.handlers[:] = before
        ray_logger.propagate = propagated
        state_logger.filters[:] = filters
        optuna.logging.enable_default_handler()
        optuna.logging.disable_propagation()


def test_ray_and_optuna_logs_go_through_the_logging_tree(library_loggers: logging.Logger) -> None:
    """Under Airflow a line on stderr is an ERROR in the task log: library logs must keep their levels instead."""
    file_handler = logging.FileHandler("/dev/null", delay=True)
    library_loggers.addHandler(file_handler)  # Ray's own log files stay
    route_library_logs()
    assert library_loggers.propagate
    assert file_handler in library_loggers.handlers
    stream_handlers = [h for h in library_loggers.handlers if isinstance(h, logging.StreamHandler)]
    assert all(isinstance(h, logging.FileHandler) for h in stream_handlers), stream_handlers
    optuna_logger = logging.getLogger("optuna")
    # (pytest attaches its capture handler to loggers that did not propagate when the test started: not Optuna's.)
    assert optuna_logger.propagate
    assert [h for h in optuna_logger.handlers if not isinstance(h, LogCaptureHandler)] == []


def test_tunes_snapshot_warning_is_filtered_out_once(
    library_loggers: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    route_library_logs()
    route_library_logs()  # a second search in the same process adds no second filter
    state_logger = logging.getLogger("ray.tune.execution.experiment_state")
    assert sum(isinstance(f, _DropSnapshotWarning) for f in state_logger.filters) == 1
    with caplog.at_level(logging.WARNING, "ray.tune.execution.experiment_state"):
        state_logger.warning("%s in the last 30 seconds ...", _SNAPSHOT_WARNING)
        state_logger.warning("Experiment state could not be saved")
    assert [r.getMessage() for r in caplog.records] == ["Experiment state could not be saved"]


def test_a_search_hides_the_drivers_s3_keys_that_ray_tune_would_copy_into_its_trials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray Tune copies the driver's AWS key variables into every trial's runtime environment, over the job's (where
    the search puts its own keys): while a search runs they are out of this process's environment, and back after."""
    from ray.tune.execution.class_cache import ENV_VARS_TO_PROPAGATE

    assert set(runtime.TUNE_COPIED_AWS_VARIABLES) == {name for name in ENV_VARS_TO_PROPAGATE if name.startswith("AWS_")}
    given = {name: uuid.uuid4().hex for name in runtime.TUNE_COPIED_AWS_VARIABLES}
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    with runtime.without_driver_s3_keys():
        assert not set(runtime.TUNE_COPIED_AWS_VARIABLES) & set(os.environ)
    assert {name: os.environ[name] for name in given} == given


@pytest.fixture
def ray_printer(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Ray's dispatcher of the workers' output holding a stand-in for the printer ray.init(log_to_driver=True)
    registers; the batches that printer receives are recorded."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printed: list[dict[str, Any]] = []
    monkeypatch.setattr(dispatcher, "handlers", [("ray_print_logs", printed.append)])
    return printed


def test_the_workers_output_goes_through_logging_at_its_streams_level(
    ray_printer: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """Under Airflow a line on stderr is an ERROR in the task log; a worker's stderr holds log lines and Ray's own
    diagnostics (a failed trial is Tune's ERROR on the driver), so it is logged at WARNING, its stdout at INFO."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    runtime.log_worker_output()
    sigterm = '  File "ray/_private/worker.py", line 1063, in sigterm_handler'
    with caplog.at_level(logging.INFO, "ml.tune.workers"):
        dispatcher.emit({"pid": 25015, "actor_name": "tune_trainable", "is_err": True, "lines": ["Exception", sigterm]})
        dispatcher.emit({"pid": 7, "task_name": "load", "is_err": False, "lines": ["epoch 1"]})
        dispatcher.emit({"pid": 8, "is_err": True, "lines": ["[mutex.cc : 452] RAW: Lock blocking 0x7f"]})
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "(tune_trainable 25015) Exception"),
        (logging.WARNING, f"(tune_trainable 25015) {sigterm}"),
        (logging.INFO, "(load 7) epoch 1"),
        (logging.WARNING, "(8) [mutex.cc : 452] RAW: Lock blocking 0x7f"),
    ]
    assert ray_printer == [], "nothing printed on the process's own streams"
    assert [name for name, _ in dispatcher.handlers] == ["ray_print_logs"], "ray.shutdown removes it by that name"


def test_the_autoscalers_events_are_left_to_rays_printer(
    ray_printer: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    runtime.log_worker_output()
    batch = {"pid": "autoscaler", "is_err": False, "lines": ["Adding 1 node(s) of type worker"]}
    with caplog.at_level(logging.INFO, "ml.tune.workers"):
        dispatcher.emit(batch)
    assert ray_printer == [batch] and caplog.records == []


def test_without_rays_printer_nothing_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """log_to_driver=False or a Ray Client connection: no printer of the workers' output to replace."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    monkeypatch.setattr(dispatcher, "handlers", [])
    runtime.log_worker_output()
    assert dispatcher.handlers == []


def test_ensure_ray_routes_the_workers_output_after_ray_init(
    fake_ray: list[dict[str, Any]], ray_printer: list[dict[str, Any]]
) -> None:
    """ray.init registers Ray's printer, so the replacement comes after it (a connected cluster's workers too)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    ensure_ray(RaySettings(address="ray-head:6379", auth_token="t" * 64), S3)
    ((name, handler),) = dispatcher.handlers
    assert name == "ray_print_logs" and handler != ray_printer.append
