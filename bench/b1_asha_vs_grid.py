"""B1: ASHA's time to reach 0.98 x the grid's best validation score / the full grid's time; target <= 0.25.

Both runs try the same configurations (a grid over lr x hidden_size x num_layers x norm, in one shuffled order) with
the pipeline's trainable (`ml.train.tune_trainable`) on the same synthetic features, at the same concurrency:
  grid: FIFO, every configuration trained for max_epochs (no early stopping);
  ASHA: the same trials under `ASHAScheduler` (grace 1 epoch, reduction factor 3), which stops the weak ones early.
The score is `val_accuracy` (higher is better, so that 0.98 x best is a meaningful bar). Times are measured on the
driver from the start of `Tuner.fit()` to the result that first reaches the bar. Storage is a local folder: both runs
pay the same checkpoint cost, and S3 timing noise stays out of a scheduler comparison.

    python -m stack run -- .venv/bin/python -m bench.b1_asha_vs_grid [--rows 20000] [--epochs 27]
"""

from __future__ import annotations

import itertools
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import argument_parser, local_ray, report

GRID: dict[str, list[Any]] = {
    "lr": [3e-4, 3e-3, 3e-2],
    "hidden_size": [16, 128],
    "num_layers": [1, 3],
    "norm": ["none", "batch"],
}
METRIC = "val_accuracy"


def grid_trainable(config: dict[str, Any], data: Any) -> None:
    """The pipeline trainable, with the grid's configuration given as one `variant` dict."""
    from ml.train import tune_trainable

    flat = {k: v for k, v in config.items() if k != "variant"}
    tune_trainable({**flat, **config["variant"]}, data)


def _variants(seed: int) -> list[dict[str, Any]]:
    keys = sorted(GRID)
    variants = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(GRID[k] for k in keys))]
    random.Random(seed).shuffle(variants)  # one order for both runs, not the grid's nested-loop order
    return variants


def _search(
    data: Any, variants: list[dict[str, Any]], epochs: int, concurrency: int, asha: bool, storage: str
) -> tuple[float, list[tuple[float, float]]]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    arrivals: list[tuple[float, float]] = []  # (seconds since fit() started, val_accuracy)
    started = [0.0]

    class Arrivals(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            arrivals.append((time.perf_counter() - started[0], float(result[METRIC])))

    scheduler = (
        ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=3)
        if asha
        else FIFOScheduler()
    )
    trainable = tune.with_resources(tune.with_parameters(grid_trainable, data=data), {"cpu": 1})
    tuner = tune.Tuner(
        trainable,
        param_space={
            "variant": tune.grid_search(variants),
            "max_epochs": epochs,
            "patience": epochs,
            "metric": METRIC,
            "mode": "max",
            "seed": 0,
            "batch_size": 256,
            "threads": 1,
        },
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", scheduler=scheduler, max_concurrent_trials=concurrency, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name="asha" if asha else "grid",
            storage_path=storage,
            callbacks=[Arrivals()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )
    started[0] = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - started[0], arrivals


def run(rows: int = 20000, epochs: int = 27, concurrency: int = 2, seed: int = 0) -> dict[str, Any]:
    """B1 uses no service (in-memory data, local storage): it takes no settings."""
    from ml.data import TrainingData
    from tests.support.synthetic_features import make_arrays, make_spec

    split_rows = {"train": rows, "validation": rows // 4}
    spec = make_spec("b1", "snap", "classification", 3, num_numeric=12, rows=split_rows)
    splits = make_arrays(spec, split_rows, seed=seed, noise=2.0)  # noisy: the configurations differ visibly
    data = TrainingData(spec, splits["train"], splits["validation"])
    variants = _variants(seed)
    with tempfile.TemporaryDirectory(prefix="b1-") as storage, local_ray(concurrency):
        grid_s, grid_results = _search(data, variants, epochs, concurrency, asha=False, storage=storage)
        asha_s, asha_results = _search(data, variants, epochs, concurrency, asha=True, storage=storage)
    best = max(score for _, score in grid_results)
    bar = 0.98 * best
    asha_reach = next((t for t, score in asha_results if score >= bar), None)
    grid_reach = next((t for t, score in grid_results if score >= bar), None)
    return {
        "name": "B1 ASHA vs grid",
        "ratio": (asha_reach / grid_s) if asha_reach is not None else None,
        "target": "<= 0.25",
        "grid_full_s": grid_s,
        "grid_best_val_accuracy": best,
        "bar": bar,
        "asha_time_to_bar_s": asha_reach,
        "asha_full_s": asha_s,
        "asha_best_val_accuracy": max(score for _, score in asha_results),
        "grid_time_to_bar_s": grid_reach,
        "configs": len(variants),
        "epochs": epochs,
        "concurrency": concurrency,
        "grid_epochs_trained": len(grid_results),
        "asha_epochs_trained": len(asha_results),
        "train_rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return report("b1_asha_vs_grid", run(args.rows, args.epochs, args.concurrency, args.seed))


if __name__ == "__main__":
    main()
