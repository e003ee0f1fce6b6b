"""Ray for a search: connected (a GCS address or a Ray Client `ray://` address, with token authentication) or
started locally, with the `ml` package and the S3 keys in its runtime environment, and its logs, its workers' output and
Optuna's logs routed through Python logging."""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ml.process_env import scoped_environment
from ml.settings import ML_PACKAGE, RaySettings, S3Settings

log = logging.getLogger(__name__)
worker_output_log = logging.getLogger("ml.tune.workers")

# The name under which ray.init(log_to_driver=True) registers its printer of the workers' output (ray.shutdown removes
# it by that name, so the replacement takes it too).
_RAY_PRINT_HANDLER = "ray_print_logs"

# Tune's warning that per-epoch checkpoints force frequent state snapshots (B2 measures their cost): it would flood
# task logs, so it is filtered out of the log rather than switched off through Ray's environment variable.
_SNAPSHOT_WARNING = "Experiment state snapshotting has been triggered multiple times"


def worker_runtime_env(ray_settings: RaySettings, s3: S3Settings) -> dict[str, Any]:
    """The job's runtime environment: all that Ray's worker processes get from this driver. They run with their
    raylet's environment, not ours: the S3 credentials (session token included) go in `env_vars`, for the keyless
    filesystem (ml.keyless_s3) that signs with the standard AWS chain. On a cluster the `ml` package goes in
    `py_modules` (uploaded once per content hash); a local Ray's workers import it from this checkout."""
    runtime_env: dict[str, Any] = {"env_vars": s3.subprocess_env()}
    if ray_settings.address:
        runtime_env["py_modules"] = [str(ML_PACKAGE)]
        runtime_env["excludes"] = ["__pycache__/", "*.pyc"]
    return runtime_env


def ray_driver_env(ray_settings: RaySettings) -> dict[str, str | None]:
    """The variables Ray's driver side reads during ray.init, as these settings say (None: unset).

    The mode is always explicit: with RAY_AUTH_MODE unset, Ray 2.60 turns token auth on for a local Ray (and writes
    ~/.ray/auth_token), and whatever the worker's environment holds would decide otherwise. The settings' token goes in
    RAY_AUTH_TOKEN, which Ray reads before RAY_AUTH_TOKEN_PATH and ~/.ray/auth_token; without one, those sources of
    the deployment apply, except for a local Ray: it gets a fresh random token, which its processes inherit and no
    one else knows, so other users of the machine cannot submit work to it. RAY_ADDRESS is unset: ray.init would take
    it instead of starting the local Ray the settings ask for."""
    env: dict[str, str | None] = {"RAY_ADDRESS": None, "RAY_AUTH_MODE": ray_settings.resolved_auth_mode}
    if ray_settings.resolved_auth_mode == "token":
        token = ray_settings.auth_token or (None if ray_settings.address else secrets.token_hex(32))
        if token:
            env["RAY_AUTH_TOKEN"] = token
    return env


def _reload_ray_auth() -> None:
    """Make this process's Ray read its auth mode and token again, from the environment as it is now. RayConfig is
    built when `ray` is imported, and the token loader keeps the first token it found: this is what Ray does itself
    when it switches auth on (ray._private.authentication.authentication_token_setup._enable_token_auth,
    authentication_test_utils.reset_auth_token_state)."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # compiled, no stubs

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def ray_auth_scope(ray_settings: RaySettings) -> Iterator[None]:
    """Around a ray.init: Ray's auth mode and token as these settings say (a local Ray: a fresh token of its own),
    re-read by this process's Ray, and the environment put back afterwards (ml.process_env: Ray reads both only from
    there, and needs them only while ray.init connects: the token loader caches the token for the life of the process
    and RayConfig keeps the mode, so the Airflow worker's environment is left as it was found). ensure_ray uses it;
    so do the test and benchmark fixtures that start a local Ray with options of their own."""
    with scoped_environment(ray_driver_env(ray_settings)):
        _reload_ray_auth()
        yield


# Ray Tune copies these from the driver's environment into every trial actor's own runtime environment
# (ray/tune/execution/class_cache.py), over the job's: a driver whose environment holds S3 keys (a shell after
# `eval "$(python -m stack env)"`, or the tests under `python -m stack run`) would give its trials those keys instead
# of the search's (the tune user's, on the stack's S3 server: stack.s3_users).
TUNE_COPIED_AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


@contextmanager
def without_driver_s3_keys() -> Iterator[None]:
    """For the duration of a search: this process's environment without the AWS keys Ray Tune would copy into the
    trials, so that they get only the keys of the job's runtime environment (worker_runtime_env); put back afterwards.
    The driver itself signs with its settings' keys, never the environment's."""
    with scoped_environment(dict.fromkeys(TUNE_COPIED_AWS_VARIABLES)):
        yield


def ensure_ray(ray_settings: RaySettings, s3: S3Settings, *, state_api: bool = False) -> bool:
    """Connect to the configured Ray cluster, else start a local Ray; True when this call started it (the caller
    shuts it down). Workers get the code and the S3 credentials through the job's runtime environment only.

    `state_api`: a local Ray with its dashboard, which serves Ray's state API. Ray Train needs it: its placement
    group cleaner asks the state API whether a trial's Train controller is alive, and without an answer the worker
    group's CPUs stay reserved after Tune stops the trial (ASHA), so that the next trial's workers never start."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = worker_runtime_env(ray_settings, s3)
    with ray_auth_scope(ray_settings):
        # (No ray.LoggingConfig: it also sets the driver's root logger, which silenced this module's INFO progress.)
        if ray_settings.address:
            log.info(
                "connecting to the Ray cluster at %s (auth: %s)", ray_settings.address, ray_settings.resolved_auth_mode
            )
            ray.init(address=ray_settings.address, runtime_env=runtime_env, log_to_driver=True)
        else:
            log.info("starting a local Ray (auth: %s)", ray_settings.resolved_auth_mode)
            # "local": a new Ray in this process, never "the latest cluster started on this machine" that ray.init
            # without an address would look for (/tmp/ray/ray_current_cluster, written by any `ray start`, e.g. the
            # cluster profile's: a stopped one made the task wait on its GCS forever).
            # Ray's servers listen on every interface whatever node address it is given (it turns 127.0.0.1 into the
            # routable address on purpose): the token is what keeps others out.
            with scoped_environment(local_ray_address_env()):
                ray.init(address="local", include_dashboard=state_api, runtime_env=runtime_env, log_to_driver=True)
    log_worker_output()
    return True


def local_ray_address_env() -> dict[str, str]:
    """The GCS port a new local Ray is to listen on, and its address as RAY_ADDRESS, for the ray.init that starts it:
    its processes inherit both, so the ones that look their cluster up by itself find this one. Without it they scan
    the machine for Ray's GCS servers, and with two local Rays at once (two tune tasks) Ray Train's placement group
    cleaner failed with "Found multiple active Ray instances": the worker group's CPUs stayed reserved after a trial
    and the next trial's workers never started. (ray.init(address="local") itself ignores RAY_ADDRESS.)"""
    import ray

    with socket.socket() as probe:  # a free port now; Ray binds it a moment later
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{port}"}


def log_worker_output() -> None:
    """The workers' stdout and stderr, which Ray forwards to the driver, go through logging (stdout at INFO, stderr at
    WARNING, logger `ml.tune.workers`) instead of Ray printing them on this process's stderr.

    Under Airflow every stderr line is an ERROR in the task log, and a worker's stderr carries what is not an error of
    the search: Python's default log handler, abseil's lock diagnostics, the traceback a trial actor prints when Ray
    stops it with SIGTERM at shutdown. A trial that fails is logged at ERROR by Tune on the driver ("Trial task failed
    for trial ..."), with its traceback. Ray has no public hook for this: its printer is replaced by name, and keeps
    the autoscaler's event lines."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printers = [handler for name, handler in dispatcher.handlers if name == _RAY_PRINT_HANDLER]
    if not printers:
        return  # log_to_driver=False, or a Ray Client connection (its logs come another way)
    ray_printer = printers[0]

    def handle(batch: dict[str, Any]) -> None:
        if batch.get("pid") == "autoscaler":
            ray_printer(batch)  # Ray filters the autoscaler's monitor log down to its events (nodes added, removed)
        else:
            log_worker_lines(batch)

    dispatcher.remove_handler(_RAY_PRINT_HANDLER)
    dispatcher.add_handler(_RAY_PRINT_HANDLER, handle)


def log_worker_lines(batch: dict[str, Any]) -> None:
    """One batch of a worker's lines (Ray's log monitor message: pid, actor or task name, is_err, lines)."""
    level = logging.WARNING if batch.get("is_err") else logging.INFO
    source = " ".join(
        str(part) for part in (batch.get("actor_name") or batch.get("task_name"), batch.get("pid")) if part
    )
    for line in batch.get("lines", []):
        worker_output_log.log(level, "(%s) %s", source, line)


class _DropSnapshotWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_SNAPSHOT_WARNING)


def route_library_logs() -> None:
    """Send Ray's and Optuna's driver-side logs through the logging tree instead of their own stderr handlers.

    Under Airflow every line written to stderr shows as an ERROR in the task log; through logging, the task log
    keeps their levels (and a CLI run still prints them through the root handler)."""
    import optuna

    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            ray_logger.removeHandler(handler)
    ray_logger.propagate = True
    state_logger = logging.getLogger("ray.tune.execution.experiment_state")
    if not any(isinstance(f, _DropSnapshotWarning) for f in state_logger.filters):
        state_logger.addFilter(_DropSnapshotWarning())
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
