"""`python -m ml preprocess`: the Spark job through spark-submit."""

from __future__ import annotations

import argparse
from typing import Any

from ml.settings import Settings, SparkSettings


def _cli(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from dataclasses import replace

    from ml.preprocess.submit import run_preprocess

    spark: SparkSettings = replace(settings.spark, master=args.master) if args.master else settings.spark
    return run_preprocess(
        args.dataset,
        args.snapshot,
        s3=settings.s3,
        lake=settings.lake,
        spark=spark,
        seed=args.seed,
        max_categories=args.max_categories,
        force=args.force,
    )


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("preprocess", help="Spark: clean, split, encode, write features + Hive table")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--snapshot", required=True, help="snapshot id printed by `ingest`")
    parser.add_argument("--master", help="Spark master (default: $SPARK_MASTER, local[*])")
    parser.add_argument("--seed", type=int, default=None, help="seed of the deterministic split (default 42)")
    parser.add_argument("--max-categories", type=int, default=None, help="cardinality cap per categorical column")
    parser.add_argument("--force", action="store_true", help="recompute even if the features exist")
    parser.set_defaults(handler=_cli)
