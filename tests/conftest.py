"""Shared test set-up: the stack's environment for every test, and fixtures that fail loudly when a service is absent.

Integration and end-to-end tests talk to the real services that `make test` starts (`make stack-up` for one file at a
time). A missing service is a failure with a hint, never a skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stack.config import apply_stack_environment
from stack.services import SERVICES, Service


def pytest_configure(config: pytest.Config) -> None:
    apply_stack_environment()


def _require(service: Service) -> None:
    from stack.config import stack_environment

    if not service.is_healthy(stack_environment()):
        pytest.fail(
            f"{service.name} is not reachable at {service.url}: integration tests need the real local stack "
            "(run `make stack-up`, or `make test`, which starts it)",
            pytrace=False,
        )


def _service(name: str) -> Service:
    return next(service for service in SERVICES if service.name == name)


@pytest.fixture(scope="session")
def s3_service() -> None:
    _require(_service("s3"))


@pytest.fixture(scope="session")
def kafka_service() -> None:
    _require(_service("kafka"))


@pytest.fixture(scope="session")
def mlflow_service() -> None:
    _require(_service("mlflow"))


@pytest.fixture(scope="session")
def s3_client(s3_service: None) -> Any:
    import boto3

    return boto3.client("s3")


@pytest.fixture
def unique_prefix() -> str:
    """A key prefix no other test (or earlier run) uses."""
    return f"tests/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def kafka_topic(kafka_service: None) -> Iterator[str]:
    """A fresh single-partition topic, deleted afterwards."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"test.{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    try:
        yield name
    finally:
        admin.delete_topics([name])
        admin.close()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray for one test module, with its own short temp dir (Ray's socket paths are long)."""
    import tempfile

    import ray

    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as temp_dir:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
