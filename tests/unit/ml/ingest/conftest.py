"""An in-memory S3 (moto) for the ingest unit tests: the `raw` and `lake` buckets, reached through ml.clients with
settings that name moto's endpoint and a throwaway key made up per test (nothing is written anywhere)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ml.settings import LakeSettings, S3Settings

# An AWS endpoint, which moto answers (an AWS_ENDPOINT_URL in the environment would otherwise win over None).
MOTO_ENDPOINT = "https://s3.us-east-1.amazonaws.com"


@pytest.fixture
def s3() -> Iterator[S3Settings]:
    from moto import mock_aws

    with mock_aws():
        settings = S3Settings(
            endpoint_url=MOTO_ENDPOINT, access_key_id=uuid.uuid4().hex, secret_access_key=uuid.uuid4().hex
        )
        yield settings


@pytest.fixture
def lake() -> LakeSettings:
    return LakeSettings(raw_bucket="raw", lake_bucket="lake")


@pytest.fixture
def client(s3: S3Settings, lake: LakeSettings) -> Any:
    from ml.clients import s3_client

    created = s3_client(s3)
    created.create_bucket(Bucket=lake.raw_bucket)
    created.create_bucket(Bucket=lake.lake_bucket)
    return created
