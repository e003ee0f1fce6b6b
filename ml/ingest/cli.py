"""`python -m ml ingest`."""

from __future__ import annotations

import argparse
from typing import Any

from ml.ingest.config import IngestConfig
from ml.settings import Settings


def _cli(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from ml.ingest.snapshot import ingest

    config = IngestConfig(
        raw_uri=args.raw_uri,
        dataset=args.dataset,
        target=args.target,
        task=args.task,
        max_bad_share=args.max_bad_share,
        allow_schema_drift=args.allow_schema_drift,
    )
    return ingest(config, s3=settings.s3, lake=settings.lake).to_dict()


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("ingest", help="validate raw CSV/Parquet in S3 and snapshot it into the lake")
    parser.add_argument("--raw-uri", required=True, help="s3://bucket/key or s3://bucket/prefix/")
    parser.add_argument("--dataset", required=True, help="dataset name (lake prefix, Hive table, model name)")
    parser.add_argument("--target", required=True, help="the column to predict")
    parser.add_argument("--task", choices=["classification", "regression"], help="default: inferred from the target")
    parser.add_argument(
        "--max-bad-share",
        type=float,
        default=0.01,
        help="share of non-numeric values tolerated in a numeric column (default 0.01)",
    )
    parser.add_argument("--allow-schema-drift", action="store_true", help="accept lost or retyped columns")
    parser.set_defaults(handler=_cli)
