"""B2: Ray Tune wall time / (sum of trial times / concurrency); target <= 1.2.

Runs `ml.tune.run_search` (S3 storage, a checkpoint per epoch, MLflow child runs, Kafka metrics: everything the
pipeline does) on synthetic features in the local S3 server, then reads every trial's `time_total_s` from the
experiment. The numerator is the whole `run_search` call (reading the splits, the MLflow parent run, Ray Tune's
fit, the summary); Ray itself is started before timing (as a cluster would already be up).

    python -m stack run -- .venv/bin/python -m bench.b2_tune_overhead [--rows 40000] [--trials 8] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def trial_times(experiment_uri: str) -> list[float]:
    from ray.tune import ExperimentAnalysis

    from ml.storage import S3Uri, arrow_filesystem

    uri = S3Uri.parse(experiment_uri)
    analysis = ExperimentAnalysis(f"{uri.bucket}/{uri.key}", storage_filesystem=arrow_filesystem(embed_keys=False))
    return [float(trial.last_result.get("time_total_s", 0.0)) for trial in analysis.trials]


def run(
    rows: int = 40000,
    trials: int = 8,
    concurrency: int = 2,
    epochs: int = 8,
    hidden: int = 256,
    track: bool = True,
    keep: int | None = 2,
) -> dict[str, Any]:
    import ray

    from ml.tune import SearchConfig, run_search
    from tests.support.synthetic_features import write_synthetic_features

    split_rows = {"train": rows, "validation": rows // 5, "test": rows // 5}
    features = write_synthetic_features("classification", 3, rows=split_rows, noise=1.0)
    # Fixed architecture and no early stopping: every trial does the same work, so the ratio measures overhead.
    space = {
        "lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
        "hidden_size": hidden,
        "num_layers": 2,
        "batch_size": 256,
        "norm": "none",
        "activation": "relu",
        "dropout": 0.0,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as temp_dir:
            ray.init(num_cpus=concurrency, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
            try:
                config = SearchConfig(
                    dataset=features.dataset,
                    snapshot_id=features.snapshot_id,
                    run_name=f"b2-{uuid.uuid4().hex[:6]}",
                    search_space=space,
                    num_samples=trials,
                    max_concurrent_trials=concurrency,
                    max_epochs=epochs,
                    patience=epochs,
                    grace_period=epochs,
                    track_mlflow=track,
                    publish_metrics=track,
                    checkpoints_to_keep=keep,
                )
                started = time.perf_counter()
                result = run_search(config)
                wall = time.perf_counter() - started
                times = trial_times(result.experiment_uri)
            finally:
                ray.shutdown()
    finally:
        features.cleanup()
        if track:
            _delete_experiment(features.dataset)
    ideal = sum(times) / concurrency
    return {
        "benchmark": "B2 tune overhead",
        "ratio": wall / ideal,
        "target": "<= 1.2",
        "wall_s": wall,
        "sum_trial_s": sum(times),
        "trial_s": times,
        "concurrency": concurrency,
        "trials": trials,
        "epochs": epochs,
        "train_rows": rows,
        "mlflow_and_kafka": track,
        "checkpoints_to_keep": keep,
    }


def _delete_experiment(name: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        client.delete_experiment(experiment.experiment_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--no-tracking", action="store_true", help="without MLflow child runs and Kafka")
    parser.add_argument("--keep", type=int, default=2, help="checkpoints kept per trial (0: all)")
    args = parser.parse_args(argv)
    result = run(
        args.rows,
        args.trials,
        args.concurrency,
        args.epochs,
        args.hidden,
        track=not args.no_tracking,
        keep=args.keep or None,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
