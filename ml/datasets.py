"""Datasets for demos, tests and benchmarks: real ones that ship inside PyPI packages (nothing is downloaded at run
time) and a synthetic generator of any size. `python -m ml upload-dataset NAME` puts one into the raw bucket."""

from __future__ import annotations

import argparse
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.settings import Settings
from ml.storage import S3Uri

if TYPE_CHECKING:
    import pandas as pd  # imported where a frame is made: `python -m ml --help` stays fast (pandas takes ~0.5 s)

# name -> (description, default target)
SHIPPED = {
    "penguins": ("palmerpenguins: 344 penguins, 3 species, numeric and categorical columns, missing values", "species"),
    "cars": ("vega_datasets: 406 cars, numeric and categorical columns, missing values", "Miles_per_Gallon"),
}


def load_shipped(name: str) -> pd.DataFrame:
    """A real dataset shipped inside a package, as a DataFrame."""
    import pandas as pd

    if name == "penguins":
        from palmerpenguins import load_penguins

        return load_penguins()
    if name == "cars":
        from vega_datasets import local_data

        cars = local_data.cars()
        cars["Year"] = pd.to_datetime(cars["Year"]).dt.year
        return cars.drop(columns=["Name"])
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(SHIPPED)} (or `synthetic`)")


def synthetic(
    rows: int,
    *,
    numeric: int = 8,
    categorical: int = 2,
    null_share: float = 0.05,
    seed: int = 0,
    task: str = "classification",
) -> pd.DataFrame:
    """A learnable tabular dataset of any size: numeric columns with nulls, categoricals, and a `target`."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    signal = np.zeros(rows)
    for i in range(numeric):
        column = rng.normal(loc=i, scale=1.0 + i / 4, size=rows)
        signal += column * (1.0 if i % 2 == 0 else -0.5) / (1.0 + i / 4)
        column[rng.random(rows) < null_share] = np.nan
        data[f"x{i}"] = column
    for j in range(categorical):
        levels = np.array([f"c{j}_{k}" for k in range(5 + 5 * j)])
        picks = rng.integers(0, len(levels), size=rows)
        signal += (picks % 3 - 1) * 0.8
        data[f"cat{j}"] = levels[picks]
    noise = rng.normal(scale=0.5, size=rows)
    if task == "regression":
        data["target"] = signal + noise
    else:
        data["target"] = np.where(signal + noise > np.median(signal), "yes", "no")
    return pd.DataFrame(data)


def upload_frame(frame: pd.DataFrame, uri: S3Uri, s3_client: Any, fmt: str = "csv") -> dict[str, Any]:
    """Write a DataFrame to S3 as CSV or Parquet; returns the key and size."""
    buffer = io.BytesIO()
    if fmt == "csv":
        frame.to_csv(buffer, index=False)
    elif fmt == "parquet":
        frame.to_parquet(buffer, index=False)
    else:
        raise ValueError(f"format must be csv or parquet, not {fmt!r}")
    s3_client.put_object(Bucket=uri.bucket, Key=uri.key, Body=buffer.getvalue())
    return {"uri": str(uri), "bytes": buffer.tell(), "rows": len(frame)}


def _upload_cli(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from ml.clients import s3_client

    if args.name == "synthetic":
        frame = synthetic(args.rows, task=args.task, seed=args.seed)
    else:
        frame = load_shipped(args.name)
    key = args.key or f"{args.name}/{args.name}.{args.format}"
    result = upload_frame(
        frame, S3Uri(args.bucket or settings.lake.raw_bucket, key), s3_client(settings.s3), args.format
    )
    if args.name in SHIPPED:
        result["default_target"] = SHIPPED[args.name][1]
    return result


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "upload-dataset", help="upload a shipped dataset (penguins, cars) or synthetic data to the raw bucket"
    )
    parser.add_argument("name", choices=[*SHIPPED, "synthetic"])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of synthetic data")
    parser.add_argument("--task", choices=["classification", "regression"], default="classification")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--bucket", help="default: the raw bucket ($MLOPS_RAW_BUCKET)")
    parser.add_argument("--key", help="default: NAME/NAME.FORMAT")
    parser.set_defaults(handler=_upload_cli)
