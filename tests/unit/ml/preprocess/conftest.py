"""Fixtures of the preprocessing unit tests: an in-memory S3 (moto). (Their SparkSession: tests/unit/ml/conftest.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def moto_client() -> Iterator[Any]:
    """A boto3 client on an in-memory S3 (moto) holding an empty `lake` bucket; a throwaway key made up here."""
    import uuid

    from moto import mock_aws

    from ml.clients import s3_client
    from ml.settings import S3Settings

    with mock_aws():
        settings = S3Settings(
            endpoint_url="https://s3.us-east-1.amazonaws.com",
            access_key_id=uuid.uuid4().hex,
            secret_access_key=uuid.uuid4().hex,
        )
        client = s3_client(settings)
        client.create_bucket(Bucket="lake")
        yield client
