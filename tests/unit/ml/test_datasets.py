"""ml.datasets: the shipped datasets, the synthetic generator, and uploading a frame (to an in-memory S3, moto)."""

from __future__ import annotations

import argparse
import io
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml import clients, datasets
from ml.datasets import SHIPPED, load_shipped, synthetic, upload_frame
from ml.settings import LakeSettings, S3Settings, Settings
from ml.storage import S3Uri

MOTO_ENDPOINT = "https://s3.us-east-1.amazonaws.com"  # moto answers it (an AWS_ENDPOINT_URL would win over None)


def test_shipped_datasets_hold_their_default_target() -> None:
    penguins, cars = load_shipped("penguins"), load_shipped("cars")
    assert len(penguins) == 344 and SHIPPED["penguins"][1] in penguins.columns
    assert penguins["species"].nunique() == 3 and penguins.isna().any().any()
    assert len(cars) == 406 and SHIPPED["cars"][1] in cars.columns
    assert "Name" not in cars.columns and cars["Year"].between(1970, 1982).all()
    with pytest.raises(ValueError, match="unknown dataset 'iris'; known: penguins, cars"):
        load_shipped("iris")


def test_synthetic_classification() -> None:
    frame = synthetic(2000, numeric=3, categorical=2, null_share=0.1, seed=4)
    assert list(frame.columns) == ["x0", "x1", "x2", "cat0", "cat1", "target"]
    assert set(frame["target"]) == {"yes", "no"} and 0.4 < (frame["target"] == "yes").mean() < 0.6
    assert 0.07 < frame["x0"].isna().mean() < 0.13 and not frame["target"].isna().any()
    assert frame["cat0"].nunique() == 5 and frame["cat1"].nunique() == 10
    pd.testing.assert_frame_equal(frame, synthetic(2000, numeric=3, categorical=2, null_share=0.1, seed=4))
    assert not frame.equals(synthetic(2000, numeric=3, categorical=2, null_share=0.1, seed=5))


def test_synthetic_regression_is_learnable() -> None:
    frame = synthetic(3000, numeric=2, categorical=0, null_share=0.0, task="regression")
    assert frame["target"].dtype == np.float64
    # the target follows the features: a linear fit explains most of it
    x = np.column_stack([frame["x0"], frame["x1"], np.ones(len(frame))])
    residual = frame["target"] - x @ np.linalg.lstsq(x, frame["target"], rcond=None)[0]
    assert residual.var() < 0.5 * frame["target"].var()


@pytest.fixture
def s3() -> Iterator[S3Settings]:
    from moto import mock_aws

    with mock_aws():
        yield S3Settings(endpoint_url=MOTO_ENDPOINT, access_key_id=uuid.uuid4().hex, secret_access_key=uuid.uuid4().hex)


@pytest.fixture
def client(s3: S3Settings) -> Any:
    created = clients.s3_client(s3)
    created.create_bucket(Bucket="raw")
    return created


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_upload_frame(client: Any, fmt: str) -> None:
    frame = synthetic(50, numeric=2, categorical=1)
    result = upload_frame(frame, S3Uri("raw", f"toy/toy.{fmt}"), client, fmt)
    body = client.get_object(Bucket="raw", Key=f"toy/toy.{fmt}")["Body"].read()
    assert result == {"uri": f"s3://raw/toy/toy.{fmt}", "bytes": len(body), "rows": 50}
    restored = pd.read_csv(io.BytesIO(body)) if fmt == "csv" else pd.read_parquet(io.BytesIO(body))
    pd.testing.assert_frame_equal(restored, frame, check_exact=False)


def test_upload_frame_refuses_other_formats(client: Any) -> None:
    with pytest.raises(ValueError, match="format must be csv or parquet, not 'json'"):
        upload_frame(synthetic(5), S3Uri("raw", "x.json"), client, "json")
    assert client.list_objects_v2(Bucket="raw")["KeyCount"] == 0


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    datasets.register_cli(parser.add_subparsers(dest="stage", required=True))
    return parser.parse_args(["upload-dataset", *argv])


def test_the_command_uploads_to_the_raw_bucket_of_the_settings(s3: S3Settings, client: Any) -> None:
    settings = Settings(s3=s3, lake=LakeSettings(raw_bucket="raw"))
    args = parse("penguins")
    result = args.handler(args, settings)
    assert result["uri"] == "s3://raw/penguins/penguins.csv" and result["rows"] == 344
    assert result["default_target"] == "species"
    args = parse("synthetic", "--rows", "30", "--task", "regression", "--format", "parquet", "--key", "s/one.parquet")
    result = args.handler(args, settings)
    assert result["uri"] == "s3://raw/s/one.parquet" and result["rows"] == 30 and "default_target" not in result
    client.create_bucket(Bucket="elsewhere")
    args = parse("synthetic", "--rows", "10", "--bucket", "elsewhere")
    assert args.handler(args, settings)["uri"] == "s3://elsewhere/synthetic/synthetic.csv"


def test_the_command_knows_its_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("iris")
    assert "invalid choice: 'iris'" in capsys.readouterr().err
