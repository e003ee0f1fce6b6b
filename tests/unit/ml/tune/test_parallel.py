"""ml.tune.parallel: the resources of data-parallel trials (checked against the cluster before a search starts), how
many run at once, the worker group's decisions, a worker's loop with Train's session functions replaced, and the kept
checkpoints read back from a Train run's storage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray

from ml.train import METRICS_FILE, TRAINING_STATE_FILE
from ml.tune.parallel import (
    CHECKPOINT_PREFIX,
    TRAIN_RUN_NAME,
    ClusterResources,
    Parallelism,
    RayTrainWorkers,
    cluster_resources,
    concurrent_trials,
    kept_checkpoints,
    resolve_parallelism,
)


def _cluster(*nodes: dict[str, float]) -> ClusterResources:
    """A cluster of these nodes' resources, without Ray."""
    total: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            total[key] = total.get(key, 0) + value
    return ClusterResources(total, nodes)


def test_the_cluster_is_read_from_ray_once_with_its_live_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    live, dead = {"CPU": 4.0, "GPU": 1.0}, {"CPU": 8.0}
    monkeypatch.setattr(ray, "cluster_resources", lambda: calls.append("total") or {"CPU": 4.0, "GPU": 1.0})
    nodes = [{"Alive": True, "Resources": live}, {"Alive": False, "Resources": dead}, {"Alive": True}]
    monkeypatch.setattr(ray, "nodes", lambda: calls.append("nodes") or nodes)
    cluster = cluster_resources()
    assert cluster == ClusterResources({"CPU": 4.0, "GPU": 1.0}, (live, {}))
    assert sorted(calls) == ["nodes", "total"]
    live["CPU"] = 0.0
    assert cluster.nodes[0]["CPU"] == 4.0  # a snapshot, not Ray's own objects


def test_parallelism_refuses_bad_values_and_asks_tune_for_what_a_trial_needs() -> None:
    with pytest.raises(ValueError, match="workers_per_trial must be >= 1"):
        Parallelism(0)
    with pytest.raises(ValueError, match="a worker needs"):
        Parallelism(2, 0)
    single = Parallelism(1, 2.0, 1.0)
    assert not single.data_parallel and single.trial_resources() == {"cpu": 2.0, "gpu": 1.0}
    group = Parallelism(2, 1.0)
    # The trial function only drives its trainer: no CPU, or 1 + 2 workers would dead-lock a 2-CPU cluster.
    assert group.data_parallel and group.trial_resources()["cpu"] == 0 and group.trial_resources()["memory"] > 0


def test_gpus_default_to_one_per_worker_only_when_the_cluster_has_enough() -> None:
    assert resolve_parallelism(2, 1.0, None, _cluster({"CPU": 4.0})).gpus_per_worker == 0
    one_gpu = _cluster({"CPU": 4.0, "GPU": 1.0})
    assert resolve_parallelism(2, 1.0, None, one_gpu).gpus_per_worker == 0  # one GPU for two workers: CPU
    assert resolve_parallelism(1, 1.0, None, one_gpu).gpus_per_worker == 1
    two_gpus = _cluster({"CPU": 4.0, "GPU": 1.0}, {"GPU": 1.0})
    assert resolve_parallelism(2, 1.0, None, two_gpus) == Parallelism(2, 1.0, 1.0)
    assert resolve_parallelism(2, 1.0, 0, two_gpus).gpus_per_worker == 0  # asked for CPU only


@pytest.mark.parametrize(
    "nodes,workers,cpus,gpus,message",
    [
        ([{"CPU": 2.0}], 3, 1.0, 0.0, r"3 worker\(s\) x 1 CPU need 3 CPU, the cluster has 2"),
        ([{"CPU": 1.0}, {"CPU": 1.0}], 1, 2.0, 0.0, "no node has 2 CPU for one worker"),
        ([{"CPU": 4.0}], 2, 1.0, 1.0, r"need 2 GPU, the cluster has 0"),
    ],
)
def test_a_trial_the_cluster_can_never_place_is_an_error_before_the_search(
    nodes: list[dict[str, float]], workers: int, cpus: float, gpus: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as error:
        resolve_parallelism(workers, cpus, gpus, _cluster(*nodes))
    assert "lower workers_per_trial" in str(error.value)


def test_only_as_many_data_parallel_trials_run_at_once_as_the_cpus_hold() -> None:
    small = _cluster({"CPU": 2.0})
    assert concurrent_trials(Parallelism(2, 1.0), 4, small) == 1
    assert concurrent_trials(Parallelism(3, 1.0), 4, small) == 1  # never 0
    assert concurrent_trials(Parallelism(1, 1.0), 4, small) == 4  # single-process trials: Tune queues them itself
    assert concurrent_trials(Parallelism(2, 1.0), 3, _cluster({"CPU": 8.0})) == 3
    assert concurrent_trials(Parallelism(2, 2.0), 4, _cluster({"CPU": 4.0}, {"CPU": 4.0})) == 2  # by the totals


def test_a_single_worker_decides_alone() -> None:
    workers = RayTrainWorkers(0, 1, "cpu")
    assert workers.agree(True) and not workers.agree(False)


def test_a_worker_trains_the_trial_with_its_threads_and_names_each_epochs_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from ml.tune.parallel import _worker_loop
    from tests.support.synthetic_features import make_training_data

    reports: list[tuple[dict[str, Any], str | None, set[str]]] = []

    def report(metrics: dict[str, Any], *, checkpoint: Any = None, checkpoint_dir_name: str | None = None) -> None:
        reports.append((dict(metrics), checkpoint_dir_name, {p.name for p in Path(checkpoint.path).iterdir()}))

    context = SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train, "report", report)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(ray.train.torch, "prepare_model", lambda model, move_to_device: model)
    data = make_training_data("classification", 2)
    trial = {"lr": 1e-2, "batch_size": 64, "num_layers": 1, "hidden_size": 8, "max_epochs": 2, "patience": 2}
    threads = torch.get_num_threads()
    try:
        _worker_loop({"trial": {**trial, "threads": 2}, "data": SimpleNamespace(resolve=lambda: data), "threads": 1})
        assert torch.get_num_threads() == 1  # the worker's CPUs, not the trial's own setting
    finally:
        torch.set_num_threads(threads)
    assert [(m["epoch"], name) for m, name, _ in reports] == [
        (1, "checkpoint_epoch_0001"),
        (2, "checkpoint_epoch_0002"),
    ]
    assert all("val_loss" in m and {METRICS_FILE, TRAINING_STATE_FILE} <= files for m, _, files in reports)


def _checkpoint(trial: Path, epoch: int, metrics: dict[str, Any], files: tuple[str, ...] | None = None) -> None:
    folder = trial / TRAIN_RUN_NAME / f"{CHECKPOINT_PREFIX}{epoch:04d}"
    folder.mkdir(parents=True)
    for name in files or ("model_state.pt", "model_config.json", "training_state.pt"):
        (folder / name).write_bytes(b"x")
    if files is None:
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "history": []}))


def test_kept_checkpoints_are_the_complete_ones_with_their_metrics(tmp_path: Path) -> None:
    from pyarrow import fs

    trial = tmp_path / "trial_a"
    _checkpoint(trial, 2, {"epoch": 2, "val_loss": 0.5})
    _checkpoint(trial, 3, {"epoch": 3, "val_loss": None})  # NaN is stored as null
    _checkpoint(trial, 4, {}, files=("model_state.pt",))  # an upload cut short by a killed worker
    (trial / TRAIN_RUN_NAME / "checkpoint_manager_snapshot.json").write_text("{}")
    kept = kept_checkpoints(str(trial), fs.LocalFileSystem())
    assert [Path(path).name for path, _ in kept] == [f"{CHECKPOINT_PREFIX}0002", f"{CHECKPOINT_PREFIX}0003"]
    assert kept[0][1] == {"epoch": 2, "val_loss": 0.5}
    assert kept[1][1]["val_loss"] != kept[1][1]["val_loss"]  # NaN again
    assert kept_checkpoints(str(tmp_path / "never_ran"), fs.LocalFileSystem()) == []
