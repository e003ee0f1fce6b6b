"""`python -m ml score`: batch scoring through spark-submit."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from ml.registry.conventions import CHAMPION
from ml.settings import Settings


def _date(value: str) -> str:
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date YYYY-MM-DD") from None


def _cli(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from dataclasses import replace

    from ml.scoring.model import resolve_scoring_model
    from ml.scoring.submit import run_scoring

    raw_uri = None if args.table else (args.raw_uri or f"s3://{settings.lake.raw_bucket}/{args.dataset}/")
    model = resolve_scoring_model(settings.mlflow, args.model, str(args.version) if args.version else args.alias)
    spark = replace(settings.spark, master=args.master) if args.master else settings.spark
    return run_scoring(
        args.dataset,
        model,
        args.date,
        s3=settings.s3,
        lake=settings.lake,
        spark=spark,
        table=args.table,
        raw_uri=raw_uri,
    )


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("score", help="Spark: score a raw dataset or Hive table into a predictions table")
    parser.add_argument("--dataset", required=True, help="names the table mlops.<dataset>_predictions")
    parser.add_argument("--model", required=True, help="registered model, e.g. penguins-classification")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a version number (default: the alias)")
    which.add_argument("--alias", default=CHAMPION, help="a registry alias (default: champion)")
    parser.add_argument("--date", required=True, type=_date, help="score date YYYY-MM-DD: the partition written")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--table", help="Hive table to score (default: the raw prefix)")
    source.add_argument("--raw-uri", help="raw CSV/Parquet prefix (default: s3://<raw bucket>/<dataset>/)")
    parser.add_argument("--master", help="Spark master (default: $SPARK_MASTER, local[*])")
    parser.set_defaults(handler=_cli)
