"""ml.tune.runtime: Ray connected or started with the S3 keys in its runtime environment (ray.init faked), and Ray's
and Optuna's logs routed through the logging tree with Tune's snapshot warning filtered out."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from _pytest.logging import LogCaptureHandler

from ml.settings import RaySettings, S3Settings
from ml.tune.runtime import _SNAPSHOT_WARNING, _DropSnapshotWarning, ensure_ray, route_library_logs

S3 = S3Settings(endpoint_url="http://s3.invalid:9000", access_key_id="id", secret_access_key="sk")


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import ray

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    return calls


def test_a_local_ray_is_started_with_the_s3_settings_for_its_workers(fake_ray: list[dict[str, Any]]) -> None:
    assert ensure_ray(RaySettings(), S3) is True
    ((init,),) = [fake_ray]
    assert init["runtime_env"] == {"env_vars": S3.subprocess_env()}
    assert init["runtime_env"]["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "sk"
    assert "address" not in init and init["include_dashboard"] is False
    assert ensure_ray(RaySettings(), S3) is False  # already up: not ours to shut down
    assert len(fake_ray) == 1


def test_a_configured_cluster_is_joined(fake_ray: list[dict[str, Any]]) -> None:
    assert ensure_ray(RaySettings("ray://head:10001"), S3) is True
    assert fake_ray[0]["address"] == "ray://head:10001"
    assert fake_ray[0]["runtime_env"] == {"env_vars": S3.subprocess_env()}


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
