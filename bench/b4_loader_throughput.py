"""B4: our Parquet -> training samples/s / a tensor-slicing reference loop's samples/s; target >= 0.8.

Ours: `ml.data.read_split` reads the train split's Parquet parts from the local S3 server into numpy (once, through
the pyarrow filesystem of `ml.clients.arrow_filesystem`, as a search reads its splits), then
`ml.data.TensorBatches` shuffles and slices batches for E epochs; the read is counted in our time. The reference
starts from tensors already in memory and, per batch, gathers a random index slice (`X[perm[i:i+bs]]`). Both feed
the same consumer: an MLP training step (what "training samples/s" means), and separately a bare touch of the batch
(loader only).

Streamed (reported beside ours, as `streamed_*` against the same reference): `ml.data.ParquetSplit.open` reads the
split's footers, then `ml.data.StreamedBatches` (one worker, default block and shuffle-buffer sizes) reads it from the
S3 server again every epoch, block by block, as a data-parallel worker whose shard does not fit in memory would; the
footer read and every epoch's reads are counted in its time.

The DDP figure (`ddp_speedup`, no target): the same streamed split trained by `--ddp-workers` Ray Train workers (DDP
over gloo, one CPU and one torch thread each, every worker streaming its own shard) against one worker, in one local
Ray; samples/s = all workers' rows / the slowest worker's loop time (the worker group's start is left out). On a
2-core machine two workers cannot show much gain: the figure says what DDP costs or gains here, nothing more.

    python -m stack run -- .venv/bin/python -m bench.b4_loader_throughput [--rows 200000] [--epochs 5] [--ddp-workers 2]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import argument_parser, benchmark_settings, local_ray, report
from ml.settings import S3Settings, Settings


def _consumers(width: int, classes: int) -> dict[str, Callable[[Any, Any], None]]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.ReLU(), torch.nn.Linear(64, classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step(xb: Any, yb: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()

    def touch(xb: Any, yb: Any) -> None:
        float(xb[0, 0]) + int(yb[0])

    return {"train_step": train_step, "loader_only": touch}


def _consume(batches: Iterable[tuple[Any, Any]], consumer: Callable[[Any, Any], None]) -> int:
    rows = 0
    for xb, yb in batches:
        consumer(xb, yb)
        rows += xb.shape[0]
    return rows


def ours(
    features: Any, s3: S3Settings, epochs: int, batch_size: int, consumer: Callable[[Any, Any], None]
) -> tuple[float, float, int]:
    import torch

    from ml.clients import arrow_filesystem
    from ml.data import TensorBatches, read_split, to_tensors

    started = time.perf_counter()
    split = read_split(features.uri, "train", features.spec, arrow_filesystem(s3))
    X, y = to_tensors(split)
    read_s = time.perf_counter() - started
    batches = TensorBatches(X, y, batch_size, generator=torch.Generator().manual_seed(0))
    rows = sum(_consume(batches, consumer) for _ in range(epochs))
    return time.perf_counter() - started, read_s, rows


def streamed(
    features: Any, s3: S3Settings, epochs: int, batch_size: int, consumer: Callable[[Any, Any], None]
) -> tuple[float, int]:
    from ml.clients import arrow_filesystem
    from ml.data import ParquetSplit, StreamedBatches

    started = time.perf_counter()
    filesystem = arrow_filesystem(s3)
    split = ParquetSplit.open(features.uri, "train", features.spec, filesystem)
    batches = StreamedBatches(split, filesystem, batch_size, seed=0)
    rows = sum(_consume(batches.epoch(epoch), consumer) for epoch in range(epochs))
    return time.perf_counter() - started, rows


def _ddp_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: its shard of the streamed split, `epochs` times, through a DDP-wrapped MLP step; reports
    the rows it trained and the seconds its loop took (the worker group's start is not in them)."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    torch.set_num_threads(1)
    from ml.data import StreamedBatches

    context = ray.train.get_context()
    batches = StreamedBatches(
        config["split"],
        config["filesystem"],
        config["batch_size"],
        seed=0,
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
    )
    torch.manual_seed(0)
    model = prepare_model(
        torch.nn.Sequential(torch.nn.Linear(config["width"], 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)),
        move_to_device=False,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    rows = 0
    for epoch in range(config["epochs"]):
        for xb, yb in batches.epoch(epoch):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            rows += xb.shape[0]
    metrics = {"rows": rows, "loop_s": time.perf_counter() - started}
    # Train V2 hands a run's metrics back only with a checkpoint: rank 0 reports an empty one.
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = ray.train.Checkpoint.from_directory(directory) if context.get_world_rank() == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)


def data_parallel(features: Any, s3: S3Settings, epochs: int, batch_size: int, workers: int) -> dict[str, float]:
    """Samples/s of `workers` DDP workers (Ray Train, gloo) streaming the split, as a data-parallel trial trains:
    all workers' rows / the slowest worker's loop time."""
    from ray.train.v2.api.config import RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    from ml.clients import arrow_filesystem, keyless_arrow_filesystem
    from ml.data import ParquetSplit

    split = ParquetSplit.open(features.uri, "train", features.spec, arrow_filesystem(s3))
    with tempfile.TemporaryDirectory(prefix="b4-ddp-") as storage:
        result = TorchTrainer(
            _ddp_loop,
            train_loop_config={
                "split": split,
                "filesystem": keyless_arrow_filesystem(s3),
                "batch_size": batch_size,
                "epochs": epochs,
                "width": len(split.feature_columns),
            },
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=f"b4-ddp-{workers}", storage_path=storage),
        ).fit()
    # Rank 0's report is the result's; every worker trains the same number of rows, so the total is rows x workers.
    rows, loop_s = result.metrics["rows"] * workers, result.metrics["loop_s"]
    return {"samples_per_s": rows / loop_s, "loop_s": loop_s, "rows": rows}


def reference(X: Any, y: Any, epochs: int, batch_size: int, consumer: Callable[[Any, Any], None]) -> tuple[float, int]:
    import torch

    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    rows = 0
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], generator=generator)
        for start in range(0, X.shape[0], batch_size):
            index = perm[start : start + batch_size]
            xb, yb = X[index], y[index]
            consumer(xb, yb)
            rows += xb.shape[0]
    return time.perf_counter() - started, rows


def run(
    settings: Settings,
    rows: int = 200000,
    features: int = 32,
    epochs: int = 5,
    batch_size: int = 256,
    ddp_workers: int = 2,
) -> dict[str, Any]:
    import torch

    from tests.support.synthetic_features import write_synthetic_features

    torch.set_num_threads(1)  # one trial's share of a node; also keeps the comparison stable on a busy machine
    data = write_synthetic_features(
        settings,
        "classification",
        3,
        rows={"train": rows, "validation": 10, "test": 10},
        num_numeric=features - 3,
        parts=4,
    )
    try:
        train = data.splits["train"]
        X, y = torch.from_numpy(train.X.copy()), torch.from_numpy(train.y.copy())
        results: dict[str, Any] = {}
        for name in ("loader_only", "train_step"):
            consumer = _consumers(X.shape[1], 3)[name]
            ours_s, read_s, ours_rows = ours(data, settings.s3, epochs, batch_size, consumer)
            consumer = _consumers(X.shape[1], 3)[name]
            ref_s, ref_rows = reference(X, y, epochs, batch_size, consumer)
            consumer = _consumers(X.shape[1], 3)[name]
            streamed_s, streamed_rows = streamed(data, settings.s3, epochs, batch_size, consumer)
            results[name] = {
                "ours_samples_per_s": ours_rows / ours_s,
                "reference_samples_per_s": ref_rows / ref_s,
                "ratio": (ours_rows / ours_s) / (ref_rows / ref_s),
                "ours_s": ours_s,
                "ours_parquet_read_s": read_s,
                "reference_s": ref_s,
                "ratio_without_read": (ours_rows / (ours_s - read_s)) / (ref_rows / ref_s),
                "streamed_samples_per_s": streamed_rows / streamed_s,
                "streamed_ratio": (streamed_rows / streamed_s) / (ref_rows / ref_s),
                "streamed_s": streamed_s,
            }
        # The DDP figure: the same streamed split trained by 2 Ray Train workers against 1, in one local Ray.
        with local_ray(ddp_workers, settings.s3, state_api=True):
            one = data_parallel(data, settings.s3, epochs, batch_size, 1)
            many = data_parallel(data, settings.s3, epochs, batch_size, ddp_workers)
        results["data_parallel"] = {
            "workers": ddp_workers,
            "one_worker": one,
            "workers_together": many,
            "speedup": many["samples_per_s"] / one["samples_per_s"],
        }
    finally:
        data.cleanup()
    return {
        "name": "B4 loader throughput",
        "ratio": results["train_step"]["ratio"],
        "streamed_ratio": results["train_step"]["streamed_ratio"],
        "ddp_speedup": results["data_parallel"]["speedup"],
        "target": ">= 0.8",
        "streamed_target": ">= 0.8 (issue 13)",
        "rows": rows,
        "features": X.shape[1],
        "epochs": epochs,
        "batch_size": batch_size,
        **results,
    }


def main(argv: list[str] | None, settings: Settings) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--ddp-workers", type=int, default=2, help="the DDP figure: this many workers against 1")
    args = parser.parse_args(argv)
    figures = run(settings, args.rows, args.features, args.epochs, args.batch_size, args.ddp_workers)
    return report("b4_loader_throughput", figures)


if __name__ == "__main__":
    main(sys.argv[1:], benchmark_settings())
