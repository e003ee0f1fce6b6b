"""Shared test set-up. The tier of a test is its folder (tests/unit, tests/integration, tests/e2e, tests/cluster),
marked here.

Unit tests need no stack and change no environment. Integration and end-to-end tests talk to the real services that
`make test` starts (`make stack-up` for one file at a time) and get their endpoints and keys as a `Settings` value
(the `settings` fixture), never through this process's environment. A missing service is a failure with a hint,
never a skip.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e", "cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).resolve().relative_to(TESTS_DIR).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process with pytest's own status once pytest is done (every fixture torn down, the report
    written), skipping the interpreter's finalization. The stack suite loads native libraries in this process (Ray's
    core worker, pyarrow's S3 client, torch) and leaves library threads behind (kafka-python closes unclosed producers
    from an atexit handler, logging into streams pytest has closed): a CI run crashed there with SIGSEGV after all 184
    tests had passed, and exit status 139 is what CI read. Nothing a test checks happens after this point."""
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The local stack's environment (endpoints, generated keys), for the subprocesses a test starts."""
    from stack.config import stack_environment

    return stack_environment()


@pytest.fixture(scope="session")
def settings(stack_env: dict[str, str]) -> Any:
    """The local stack as ml.settings.Settings: what integration tests pass to `ml`."""
    from ml.settings import Settings

    return Settings.from_env(stack_env)


def _require(name: str, env: dict[str, str]) -> None:
    from stack.services import SERVICES

    service = next(service for service in SERVICES if service.name == name)
    if not service.is_healthy(env):
        pytest.fail(
            f"{service.name} is not reachable at {service.url}: integration tests need the real local stack "
            "(run `make stack-up`, or `make test`, which starts it)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def s3_service(stack_env: dict[str, str]) -> None:
    _require("s3", stack_env)


@pytest.fixture(scope="session")
def kafka_service(stack_env: dict[str, str]) -> None:
    _require("kafka", stack_env)


@pytest.fixture(scope="session")
def mlflow_service(stack_env: dict[str, str]) -> None:
    _require("mlflow", stack_env)


@pytest.fixture(scope="session")
def s3_client(s3_service: None, settings: Any) -> Any:
    from ml.clients import s3_client

    return s3_client(settings.s3)


@pytest.fixture(scope="session")
def mlflow_client(mlflow_service: None, settings: Any) -> Any:
    from ml.clients import mlflow_client

    return mlflow_client(settings.mlflow)


@pytest.fixture
def unique_prefix() -> str:
    """A key prefix no other test (or earlier run) uses."""
    return f"tests/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def kafka_topic(kafka_service: None, settings: Any, stack_env: dict[str, str]) -> Iterator[str]:
    """A fresh single-partition topic that the settings' Kafka user may write and read, deleted afterwards (created
    by the broker's admin, with ACLs for that user: stack.kafka_auth.throwaway_topic)."""
    from stack.config import StackPaths
    from stack.kafka_auth import throwaway_topic

    paths = StackPaths(Path(stack_env["MLOPS_STACK_DIR"]))
    with throwaway_topic(settings.kafka, paths, f"test.{uuid.uuid4().hex[:12]}") as name:
        yield name


@contextmanager
def _local_ray(settings: Any, *, state_api: bool) -> Iterator[None]:
    """A local Ray with its own short temp dir (Ray's socket paths are long). Its workers get the S3 keys through the
    job's runtime environment, as ml.tune.search.ensure_ray gives them; `state_api`: with the dashboard, which Ray
    Train needs (ml.tune.runtime.ensure_ray)."""
    import tempfile

    import ray

    from ml.settings import RaySettings
    from ml.tune.runtime import ray_auth_scope

    # A Ray process still ending after ray.shutdown() (the dashboard's, after a data-parallel search) may write one
    # more log line into the session folder while it is removed: that must not fail the module's last test.
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp", ignore_cleanup_errors=True) as temp_dir:
        with ray_auth_scope(RaySettings()):  # token auth, a token of its own, as a task's local Ray
            ray.init(
                address="local",  # never the machine's latest `ray start` cluster (the cluster profile's)
                num_cpus=2,
                include_dashboard=state_api,
                _temp_dir=temp_dir,
                log_to_driver=False,
                runtime_env={"env_vars": settings.s3.subprocess_env()},
            )
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(settings: Any) -> Iterator[None]:
    """A local Ray for one test module."""
    with _local_ray(settings, state_api=False):
        yield


@pytest.fixture(scope="module")
def local_ray_with_state_api(settings: Any) -> Iterator[None]:
    """A local Ray for one test module of data-parallel trials (Ray Train)."""
    with _local_ray(settings, state_api=True):
        yield
