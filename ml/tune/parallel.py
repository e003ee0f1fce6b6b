"""Data-parallel trials: Ray Train's `TorchTrainer` (Train V2) run inside a Ray Tune trial, DDP over gloo on CPU and
NCCL on GPU.

The trial function itself asks for no CPU (it only drives the trainer: a 2-CPU cluster would otherwise dead-lock with
one trial of two workers); each of its `workers` asks for `cpus_per_worker` CPUs and `gpus_per_worker` GPUs.
Train keeps the trial's checkpoints under the trial's folder (`<trial>/train/checkpoint_epoch_NNNN`, through the
search's signed filesystem), the best `checkpoints_to_keep` by the objective plus the latest, and restarts a failed
worker group once from the latest; a trial that Tune starts again (a resumed search) resumes from the same folder.
Rank 0's metrics reach Tune once per epoch through Train's `TuneReportCallback`, so ASHA, Optuna, MLflow and Kafka see
one result per trial-epoch; Tune itself holds no checkpoint of such a trial, and the search reads the kept ones from
storage (`kept_checkpoints`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.train import METRICS_FILE, TRAINING_STATE_FILE
from ml.train.trial import numeric_metrics, quiet_checkpoint_logs, train_trial

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

TRAIN_RUN_NAME = "train"  # a data-parallel trial's Train run: <trial folder>/train
CHECKPOINT_PREFIX = "checkpoint_epoch_"
TRIAL_DRIVER_MEMORY = 256 * 1024 * 1024  # bytes of Ray's memory resource


@dataclass(frozen=True)
class Parallelism:
    """How one trial trains: `workers` processes with these resources each."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers_per_trial must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError(
                f"a worker needs > 0 CPUs and >= 0 GPUs, got {self.cpus_per_worker} and {self.gpus_per_worker}"
            )

    @property
    def data_parallel(self) -> bool:
        return self.workers > 1

    def trial_resources(self) -> dict[str, float]:
        """What a trial asks Tune for. A data-parallel one only drives its trainer: no CPU (its workers ask for them),
        and a little memory, since Tune refuses a request of nothing at all."""
        if self.data_parallel:
            return {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}
        return {"cpu": self.cpus_per_worker, "gpu": self.gpus_per_worker}


@dataclass(frozen=True)
class ClusterResources:
    """The connected cluster's resources, read once for a search: its totals and each live node's (Ray's names:
    "CPU", "GPU", ...). What `resolve_parallelism` and `concurrent_trials` decide from, without Ray."""

    total: Mapping[str, float]
    nodes: tuple[Mapping[str, float], ...] = ()


def cluster_resources() -> ClusterResources:
    """What the connected Ray cluster has now (`ray.cluster_resources()` and the live nodes' `ray.nodes()`)."""
    import ray

    nodes = tuple(dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive"))
    return ClusterResources(dict(ray.cluster_resources()), nodes)


def resolve_parallelism(
    workers: int, cpus_per_worker: float, gpus_per_worker: float | None, cluster: ClusterResources
) -> Parallelism:
    """The trial's resources on `cluster`: `gpus_per_worker` None takes one GPU per worker when the cluster has
    enough GPUs for all of a trial's workers, else none. Raises ValueError, naming what is missing, when no node set
    of the cluster can ever place the trial (a search that would wait forever)."""
    total = cluster.total
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if total.get("GPU", 0) >= workers else 0.0
    parallelism = Parallelism(workers, cpus_per_worker, gpus_per_worker)
    problems = []
    for resource, each in (("CPU", parallelism.cpus_per_worker), ("GPU", parallelism.gpus_per_worker)):
        if not each:
            continue
        if total.get(resource, 0) < each * workers:
            problems.append(
                f"{workers} worker(s) x {each:g} {resource} need {each * workers:g} {resource}, "
                f"the cluster has {total.get(resource, 0):g}"
            )
        elif not any(node.get(resource, 0) >= each for node in cluster.nodes):
            problems.append(f"no node has {each:g} {resource} for one worker")
    if problems:
        raise ValueError(
            "the trials cannot be placed on this Ray cluster: "
            + "; ".join(problems)
            + " (lower workers_per_trial, cpus_per_trial or gpus_per_worker)"
        )
    return parallelism


def concurrent_trials(parallelism: Parallelism, requested: int, cluster: ClusterResources) -> int:
    """At most as many data-parallel trials at once as the cluster's CPUs hold worker groups: a trial whose workers
    cannot start waits in Train for a limited time and then fails, where it should wait its turn in Tune."""
    if not parallelism.data_parallel:
        return requested
    cpus = cluster.total.get("CPU", 0)
    fits = max(1, int(cpus // (parallelism.cpus_per_worker * parallelism.workers)))
    if fits < requested:
        log.info("%d data-parallel trial(s) at once (the cluster's %g CPUs), not %d", fits, cpus, requested)
    return min(requested, fits)


@dataclass(frozen=True)
class RayTrainWorkers:
    """This worker's place in its Train worker group (ml.train.WorkerGroup)."""

    rank: int
    world_size: int
    device: str

    def wrap(self, model: nn.Module) -> nn.Module:
        from ray.train.torch import prepare_model

        return prepare_model(model, move_to_device=False)  # DistributedDataParallel when world_size > 1

    def agree(self, stop: bool) -> bool:
        import torch
        import torch.distributed as dist

        if self.world_size == 1:
            return stop
        flag = torch.tensor([1 if stop else 0], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())


@dataclass(frozen=True)
class DataHandle:
    """The trial's data for its workers: an object-store reference, so that each worker maps the arrays the driver
    put there once instead of receiving a pickled copy through the trainer's config (streamed splits: their
    footers, which each worker reads its shard with)."""

    ref: Any

    def resolve(self) -> Any:
        import ray

        return ray.get(self.ref)


def data_parallel_trainable(
    config: dict[str, Any],
    data: DataHandle,
    parallelism: Parallelism,
    experiment_path: str,
    filesystem: Any,
    metric: str,
    mode: str,
    checkpoints_to_keep: int | None,
) -> None:
    """Ray Tune function trainable: one trial trained by `parallelism.workers` DDP workers."""
    from ray import tune
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer  # Train V2, whatever RAY_TRAIN_V2_ENABLED says
    from ray.tune.integration.ray_train import TuneReportCallback

    quiet_checkpoint_logs()
    resources = {"CPU": parallelism.cpus_per_worker}
    if parallelism.gpus_per_worker:
        resources["GPU"] = parallelism.gpus_per_worker
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"trial": config, "data": data, "threads": max(1, int(parallelism.cpus_per_worker))},
        scaling_config=ScalingConfig(
            num_workers=parallelism.workers,
            use_gpu=parallelism.gpus_per_worker > 0,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=TRAIN_RUN_NAME,
            storage_path=f"{experiment_path}/{tune.get_context().get_trial_name()}",
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=1),
            checkpoint_config=CheckpointConfig(
                num_to_keep=checkpoints_to_keep,
                checkpoint_score_attribute=metric,
                checkpoint_score_order="max" if mode == "max" else "min",
            ),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """One DDP worker: the trial's training loop on its shard of every epoch."""
    import ray.train
    from ray.train.torch import get_device
    from ray.train.v2._internal.execution import context as train_context

    # Train logs every report with its metrics at INFO, under a logger named by its file's path.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    context = ray.train.get_context()
    group = RayTrainWorkers(context.get_world_rank(), context.get_world_size(), str(get_device()))

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        # Every worker reports (Train waits for all of them); rank 0's metrics and checkpoint are the trial's.
        if directory is None:
            ray.train.report(numeric_metrics(metrics))
            return
        ray.train.report(
            numeric_metrics(metrics),
            checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
            checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{int(metrics['epoch']):04d}",
        )

    trial = {**loop_config["trial"], "threads": loop_config["threads"]}
    checkpoint = ray.train.get_checkpoint()
    train_trial(trial, loop_config["data"].resolve(), report=report, checkpoint=checkpoint, group=group)


def kept_checkpoints(trial_path: str, filesystem: Any) -> list[tuple[str, dict[str, Any]]]:
    """A data-parallel trial's checkpoints in storage, each with the metrics of its epoch (its `metrics.json`).

    Train keeps the best ones by the objective and the latest; a folder that lacks any of a checkpoint's files (an
    upload cut short by a killed worker) is no checkpoint."""
    from pyarrow import fs

    from ml.models import MODEL_CONFIG_FILE, MODEL_STATE_FILE

    run = f"{trial_path.rstrip('/')}/{TRAIN_RUN_NAME}"
    try:
        entries = filesystem.get_file_info(fs.FileSelector(run, recursive=True))
    except FileNotFoundError:
        return []
    files: dict[str, set[str]] = {}
    for entry in entries:
        parent, _, name = entry.path.rpartition("/")
        if entry.type == fs.FileType.File and parent.rpartition("/")[2].startswith(CHECKPOINT_PREFIX):
            files.setdefault(parent, set()).add(name)
    needed = {MODEL_STATE_FILE, MODEL_CONFIG_FILE, TRAINING_STATE_FILE, METRICS_FILE}
    kept = []
    for folder, names in sorted(files.items()):
        if not needed <= names:
            log.warning("%s: incomplete checkpoint (has %s), ignored", folder, sorted(names))
            continue
        with filesystem.open_input_stream(f"{folder}/{METRICS_FILE}") as stream:
            metrics = json.loads(stream.read())["metrics"]
        kept.append((folder, {k: (math.nan if v is None else v) for k, v in metrics.items()}))
    return kept
