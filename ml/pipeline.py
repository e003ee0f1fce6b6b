"""`python -m ml run-all`: the whole pipeline in one process, without Airflow (same stage functions, same order).

Useful to try a dataset quickly, and the baseline of benchmark B7 (the DAG's wall time under Airflow against this).
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from typing import Any

from ml.procfs import status_kib
from ml.settings import Settings

log = logging.getLogger(__name__)


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started: logged after each stage, so that the stage that raised
    it shows (benchmark B9 reads it). The kernel's VmHWM where there is one: rusage's ru_maxrss (the fallback) is
    carried across fork and exec on Linux, so a run-all started by a large process would report that process's size."""
    kib = status_kib("self", "VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def run_pipeline(
    settings: Settings,
    raw_uri: str,
    dataset: str,
    target: str,
    *,
    task: str | None = None,
    run_name: str,
    search_space: Any = None,
    num_samples: int = 8,
    max_concurrent_trials: int = 2,
    max_epochs: int = 30,
    workers_per_trial: int = 1,
    gpus_per_worker: float | None = None,
    cache_mb: float = 1024.0,
    margin: float = 0.0,
    register: bool = True,
) -> dict[str, Any]:
    """ingest -> preprocess (spark-submit) -> tune -> evaluate -> register + gate; a summary with stage times."""
    from ml.evaluate import evaluate_best
    from ml.ingest.config import IngestConfig
    from ml.ingest.snapshot import ingest
    from ml.lineage import code_version
    from ml.preprocess.submit import run_preprocess
    from ml.registry.context import RegistryContext
    from ml.registry.promote import register_and_promote
    from ml.tune.config import SearchConfig
    from ml.tune.search import run_search
    from ml.tune.space import resolve_search_space

    timings: dict[str, float] = {}

    def timed(stage: str, started: float) -> None:
        timings[stage] = round(time.perf_counter() - started, 2)
        log.info("stage %s done in %.1f s (peak RSS so far %.0f MiB)", stage, timings[stage], peak_rss_mib())

    started = time.perf_counter()
    s3, lake = settings.s3, settings.lake
    snapshot = ingest(IngestConfig(raw_uri, dataset, target, task=task), s3=s3, lake=lake)
    timed("ingest", started)
    started = time.perf_counter()
    features = run_preprocess(dataset, snapshot.snapshot_id, s3=s3, lake=lake, spark=settings.spark)
    timed("preprocess", started)
    started = time.perf_counter()
    config = SearchConfig(
        dataset=dataset,
        snapshot_id=snapshot.snapshot_id,
        run_name=run_name,
        search_space=resolve_search_space(search_space, s3),
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent_trials,
        max_epochs=max_epochs,
        workers_per_trial=workers_per_trial,
        gpus_per_worker=gpus_per_worker,
        cache_mb=cache_mb,
        dag_run_id=run_name,
    )
    search = run_search(config, s3=s3, lake=lake, ray=settings.ray, mlflow=settings.mlflow, kafka=settings.kafka)
    timed("tune", started)
    started = time.perf_counter()
    evaluation = evaluate_best(search.to_dict(), s3=s3, mlflow=settings.mlflow)
    timed("evaluate", started)
    model: dict[str, Any] | None = None
    if register:
        started = time.perf_counter()
        context = RegistryContext(mlflow=settings.mlflow, s3=s3, lake=lake, kafka=settings.kafka)
        model = register_and_promote(
            evaluation, context, dag_id="ml.pipeline", dag_run_id=run_name, code_version=code_version(), margin=margin
        )
        timed("register", started)
    return {
        "dataset": dataset,
        "snapshot_id": snapshot.snapshot_id,
        "rows": features["rows"],
        "best_params": search.best_params,
        "num_trials": search.num_trials,
        "test_metrics": evaluation["test_metrics"],
        "baseline_test_metrics": evaluation["baseline_test_metrics"],
        "model": model,
        "timings_s": timings,
        "total_s": round(sum(timings.values()), 2),
    }


def _cli(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    return run_pipeline(
        settings,
        args.raw_uri,
        args.dataset,
        args.target,
        task=args.task,
        run_name=args.run_name,
        search_space=args.search_space,
        num_samples=args.num_samples,
        max_concurrent_trials=args.max_concurrent,
        max_epochs=args.max_epochs,
        workers_per_trial=args.workers_per_trial,
        gpus_per_worker=args.gpus_per_worker,
        cache_mb=args.cache_mb,
        margin=args.margin,
        register=not args.no_register,
    )


def register_cli(subparsers: Any) -> None:
    from ml.tune.cli import add_parallel_arguments

    parser = subparsers.add_parser("run-all", help="every stage in one process, without Airflow")
    parser.add_argument("--raw-uri", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--task", choices=["classification", "regression"])
    parser.add_argument("--run-name", required=True, help="names the search (resume key) and the registration")
    parser.add_argument("--search-space", default=None, help="JSON, a shipped space's name, or a file")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=30)
    add_parallel_arguments(parser)
    parser.add_argument("--margin", type=float, default=0.0, help="promotion margin")
    parser.add_argument("--no-register", action="store_true", help="stop after evaluation")
    parser.set_defaults(handler=_cli)
