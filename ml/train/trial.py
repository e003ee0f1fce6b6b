"""A trial's training (`train_trial`: the same steps in a single-process trial and in each worker of a data-parallel
one), and the single-process Ray Tune trial: `tune_trainable` runs it as a Ray Tune function trainable that reports
each epoch's metrics with a checkpoint (`ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(dir))`)
and resumes from `ray.tune.get_checkpoint()` after a restore. (A data-parallel trial: ml.tune.parallel.)"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ml.data import StreamingData, TrainingData
from ml.train.config import configs_from_trial, training_target_stats
from ml.train.loop import ReportFn, SingleWorker, TrainResult, WorkerGroup, train_model


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, int | float]:
    """What a trial reports to Tune: the numbers (Tune's result rows and callbacks take nothing else)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def quiet_checkpoint_logs() -> None:
    """Ray Train logs "Checkpoint successfully created" at INFO for every epoch, on the worker's stderr, which the
    driver logs at WARNING (ml.tune.runtime.log_worker_output): a task log flooded with warnings. Warnings and errors
    still come through."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)


@contextmanager
def local_copy(checkpoint: Any) -> Iterator[Path | None]:
    """A private local copy of a Ray checkpoint's few small files (None for no checkpoint): `as_directory()`
    downloads from storage or shares a local copy that others may delete."""
    if checkpoint is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="resume-") as local:
        with checkpoint.as_directory() as directory:
            for item in Path(directory).iterdir():
                if item.is_file():
                    (Path(local) / item.name).write_bytes(item.read_bytes())
        yield Path(local)


def train_trial(
    config: dict[str, Any],
    data: TrainingData | StreamingData,
    *,
    report: ReportFn,
    checkpoint: Any,
    group: WorkerGroup,
) -> TrainResult:
    """One trial's `train_model` run: its configs from the trial's `config` and the training labels' scale, resumed
    from a private local copy of `checkpoint` (a Ray checkpoint; None: from the start). What differs between a
    single-process trial and a data-parallel worker comes in: `report`, the checkpoint and `group` (the device too)."""
    quiet_checkpoint_logs()
    mean, std = training_target_stats(data)
    model_config, train_config = configs_from_trial(config, data.spec, target_mean=mean, target_std=std)
    with local_copy(checkpoint) as resume_from:
        return train_model(data, model_config, train_config, report=report, resume_from=resume_from, group=group)


def tune_trainable(config: dict[str, Any], data: TrainingData | StreamingData, device: str = "cpu") -> None:
    """Ray Tune function trainable: one trial. `data` arrives through `tune.with_parameters` (object store): the
    arrays, or the footers of splits the trial streams from S3."""
    from ray import tune

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        # Tune copies the directory to the run's storage (S3) inside report(), before the directory is removed.
        checkpoint = tune.Checkpoint.from_directory(str(directory)) if directory is not None else None
        tune.report(numeric_metrics(metrics), checkpoint=checkpoint)

    train_trial(config, data, report=report, checkpoint=tune.get_checkpoint(), group=SingleWorker(device))
