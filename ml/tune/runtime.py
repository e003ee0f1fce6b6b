"""Ray for a search: connected or started with the S3 keys in its runtime environment, and its logs (and
Optuna's) routed through Python logging."""

from __future__ import annotations

import logging

from ml.settings import RaySettings, S3Settings

log = logging.getLogger(__name__)

# Tune's warning that per-epoch checkpoints force frequent state snapshots (B2 measures their cost): it would flood
# task logs, so it is filtered out of the log rather than switched off through Ray's environment variable.
_SNAPSHOT_WARNING = "Experiment state snapshotting has been triggered multiple times"


def ensure_ray(ray_settings: RaySettings, s3: S3Settings) -> bool:
    """Connect to the configured Ray cluster, else start a local Ray; True when this call started it (the caller
    shuts it down). Workers get the S3 credentials through the job's runtime environment: they read and write
    checkpoints with the keyless filesystem (ml.keyless_s3), which signs with the standard AWS chain."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": s3.subprocess_env()}
    # (No ray.LoggingConfig: it also sets the driver's root logger, which silenced this module's INFO progress.)
    if ray_settings.address:
        log.info("connecting to the Ray cluster at %s", ray_settings.address)
        ray.init(address=ray_settings.address, runtime_env=runtime_env, log_to_driver=True)
    else:
        log.info("starting a local Ray")
        ray.init(include_dashboard=False, runtime_env=runtime_env, log_to_driver=True)
    return True


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
