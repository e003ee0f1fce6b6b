"""ml.train.trial: a trial's training (`train_trial`, the steps shared by a single-process trial and a data-parallel
worker) and the Ray Tune trainable, with Tune's report/get_checkpoint replaced by fakes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ml.train import METRICS_FILE, TRAINING_STATE_FILE, SingleWorker, target_stats, train_trial, tune_trainable
from ml.train.config import training_target_stats
from tests.support.synthetic_features import LocalLake, make_training_data


class FakeTuneSession:
    """Stands in for ray.tune.report / ray.tune.get_checkpoint: keeps each report's metrics and a copy of its
    checkpoint directory (which lives only during the call)."""

    def __init__(self, keep: Path, checkpoint: Any = None) -> None:
        self.keep = keep
        self.checkpoint = checkpoint
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any], *, checkpoint: Any = None) -> None:
        self.reports.append(dict(metrics))
        assert checkpoint is not None, "every epoch reports a checkpoint"
        shutil.copytree(checkpoint.path, self.keep / f"epoch{metrics['epoch']}")

    def get_checkpoint(self) -> Any:
        return self.checkpoint


def _trial_config(**overrides: Any) -> dict[str, Any]:
    return {
        "lr": 1e-2,
        "batch_size": 64,
        "num_layers": 1,
        "hidden_size": 16,
        "max_epochs": 3,
        "patience": 3,
        "seed": 2,
        "metric": "val_loss",
        "mode": "min",
        "threads": 1,
        **overrides,
    }


def test_the_trainable_reports_every_epoch_with_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import tune

    data = make_training_data("regression")
    session = FakeTuneSession(tmp_path)
    monkeypatch.setattr(tune, "report", session.report)
    monkeypatch.setattr(tune, "get_checkpoint", session.get_checkpoint)
    tune_trainable(_trial_config(), data)

    assert [m["epoch"] for m in session.reports] == [1, 2, 3]
    assert all(isinstance(v, int | float) for m in session.reports for v in m.values())
    assert {"train_loss", "val_loss", "val_rmse", "epoch_time_s"} <= set(session.reports[0])
    saved = sorted(p.name for p in (tmp_path / "epoch3").iterdir())
    assert saved == sorted([METRICS_FILE, "model_config.json", "model_state.pt", TRAINING_STATE_FILE])
    # The regression model carries the training labels' scale (what serving needs).
    config = json.loads((tmp_path / "epoch3" / "model_config.json").read_text())
    assert (config["target_mean"], config["target_std"]) == pytest.approx(target_stats(data.spec, data.train.y))


def test_the_trainable_resumes_after_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import tune

    data = make_training_data("classification", 2)
    full = FakeTuneSession(tmp_path / "full")
    (tmp_path / "full").mkdir()
    monkeypatch.setattr(tune, "report", full.report)
    monkeypatch.setattr(tune, "get_checkpoint", full.get_checkpoint)
    tune_trainable(_trial_config(dropout=0.2), data)

    resumed = FakeTuneSession(tmp_path / "resumed", tune.Checkpoint.from_directory(str(tmp_path / "full" / "epoch1")))
    (tmp_path / "resumed").mkdir()
    monkeypatch.setattr(tune, "report", resumed.report)
    monkeypatch.setattr(tune, "get_checkpoint", resumed.get_checkpoint)
    tune_trainable(_trial_config(dropout=0.2), data)

    assert [m["epoch"] for m in resumed.reports] == [2, 3]  # continues after epoch 1; does not start over
    for before, after in zip(full.reports[1:], resumed.reports, strict=True):
        assert after["train_loss"] == before["train_loss"] and after["val_loss"] == before["val_loss"]
    assert sorted(p.name for p in (tmp_path / "full" / "epoch1").iterdir())  # the restored checkpoint is untouched


# -- the trial's training, whatever runs it


class _Follower:
    """Rank 1 of a data-parallel group whose rank 0 never stops early (no process group)."""

    rank, world_size, device = 1, 2, "cpu"

    def wrap(self, model: Any) -> Any:
        return model

    def agree(self, stop: bool) -> bool:
        return False


def _streamed_regression(tmp_path: Path) -> Any:
    from ml.data import training_data
    from ml.storage import S3Uri

    memory = make_training_data("regression", 1)
    lake = LocalLake(tmp_path)
    uri = S3Uri("lake", "features")
    lake.write_features(memory.spec, {"train": memory.train, "validation": memory.validation}, uri)
    return training_data(uri, memory.spec, lake.filesystem, trial_filesystem=lake.filesystem, cache_bytes=0)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_trial_trains_from_its_config_with_the_training_labels_scale(tmp_path: Path, streamed: bool) -> None:
    data = _streamed_regression(tmp_path) if streamed else make_training_data("regression", 1)
    configs: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        assert directory is not None
        configs.append(json.loads((directory / "model_config.json").read_text()))

    config = _trial_config(max_epochs=2, patience=2, hidden_size=12)
    result = train_trial(config, data, report=report, checkpoint=None, group=SingleWorker())
    assert [m["epoch"] for m in result.history] == [1, 2] and len(configs) == 2
    assert configs[-1]["hidden_size"] == 12
    # The scale of the training labels: the arrays' own, or the driver's moments of a streamed split's.
    scale = (configs[-1]["target_mean"], configs[-1]["target_std"])
    assert scale == pytest.approx(training_target_stats(data))
    assert scale != pytest.approx((0.0, 1.0))


def test_a_trial_resumes_from_a_private_copy_of_its_checkpoint(tmp_path: Path) -> None:
    from ray import tune

    data = make_training_data("classification", 2)

    def keep(metrics: dict[str, Any], directory: Path | None) -> None:
        assert directory is not None
        shutil.copytree(directory, tmp_path / f"epoch{metrics['epoch']}")

    full = train_trial(_trial_config(), data, report=keep, checkpoint=None, group=SingleWorker())
    resumed: list[dict[str, Any]] = []
    checkpoint = tune.Checkpoint.from_directory(str(tmp_path / "epoch1"))
    train_trial(
        _trial_config(), data, report=lambda m, _: resumed.append(m), checkpoint=checkpoint, group=SingleWorker()
    )
    assert [m["epoch"] for m in resumed] == [2, 3]  # continues after epoch 1
    assert [m["val_loss"] for m in resumed] == [m["val_loss"] for m in full.history[1:]]
    kept = {p.name for p in (tmp_path / "epoch1").iterdir()}
    assert {METRICS_FILE, TRAINING_STATE_FILE, "model_state.pt"} <= kept  # the checkpoint itself is untouched


def test_a_trial_trains_in_the_group_it_is_given() -> None:
    data = make_training_data("classification", 2)
    reports: list[tuple[dict[str, Any], Path | None]] = []
    config = _trial_config(max_epochs=2, patience=2)
    train_trial(config, data, report=lambda m, d: reports.append((m, d)), checkpoint=None, group=_Follower())
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert all(directory is None for _, directory in reports)  # only rank 0 writes checkpoints
    assert not any(key.startswith("val_") for metrics, _ in reports for key in metrics)  # nor validates
