"""`python -m ml tune`: a search from the command line (prints the SearchResult JSON)."""

from __future__ import annotations

import argparse
from typing import Any

from ml.settings import Settings
from ml.train import DEFAULT_METRIC
from ml.tune.config import SearchConfig


def search_config_from_args(args: argparse.Namespace, settings: Settings) -> SearchConfig:
    return SearchConfig.create(
        s3=settings.s3,
        dataset=args.dataset,
        snapshot_id=args.snapshot,
        run_name=args.run_name,
        search_space=args.search_space,
        features_uri=args.features_uri,
        num_samples=args.num_samples,
        max_concurrent_trials=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        workers_per_trial=args.workers_per_trial,
        gpus_per_worker=args.gpus_per_worker,
        cache_mb=args.cache_mb,
        max_epochs=args.max_epochs,
        patience=args.patience,
        metric=args.metric,
        mode=args.mode,
        seed=args.seed,
        dag_run_id=args.dag_run_id,
    )


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of data-parallel trials (`python -m ml tune` and `python -m ml run-all`)."""
    parser.add_argument(
        "--workers-per-trial",
        type=int,
        default=1,
        help="DDP workers per trial (Ray Train; > 1 trains each trial data-parallel, batch size per worker)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="default: one GPU per worker when the Ray cluster has enough, else CPU only",
    )
    parser.add_argument(
        "--cache-mb",
        type=float,
        default=1024.0,
        help="splits up to this size are read once and shared in memory; larger ones are streamed from S3",
    )


def _tune_command(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from ml.tune.search import run_search

    result = run_search(
        search_config_from_args(args, settings),
        s3=settings.s3,
        lake=settings.lake,
        ray=settings.ray,
        mlflow=None if args.no_mlflow else settings.mlflow,
        kafka=None if args.no_kafka else settings.kafka,
    )
    return result.to_dict()


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="hyper-parameter search with Ray Tune (resumes a run of the same name)",
        description="Search the model space on a snapshot's features; prints the SearchResult JSON. Re-running with "
        "the same --run-name resumes an interrupted search or returns the completed one.",
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--snapshot", required=True, help="snapshot id (the features' folder)")
    parser.add_argument("--run-name", required=True, help="resume key, e.g. the DAG run id (sanitised)")
    parser.add_argument(
        "--search-space",
        help="a JSON/YAML file, an s3:// URI, inline JSON, or a shipped space's name "
        "(default, small); default: default",
    )
    parser.add_argument("--features-uri", help="default s3://LAKE/datasets/DATASET/features/SNAPSHOT")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="per worker of a data-parallel trial")
    add_parallel_arguments(parser)
    parser.add_argument("--metric", help=f"validation metric to optimise (default {DEFAULT_METRIC})")
    parser.add_argument("--mode", choices=("min", "max"), help="default: inferred from the metric")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dag-run-id")
    parser.add_argument("--no-mlflow", action="store_true", help="do not track in MLflow")
    parser.add_argument("--no-kafka", action="store_true", help="do not publish epoch metrics to Kafka")
    parser.set_defaults(handler=_tune_command)
