"""ml.pipeline: `python -m ml run-all` wiring, and run_pipeline calling each stage in order with the settings slices
it needs (every stage replaced by a recording stand-in: no service, no Spark, no Ray)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

import ml.evaluate
import ml.ingest.snapshot
import ml.preprocess.submit
import ml.registry.promote
import ml.tune.search
from ml import pipeline
from ml.ingest.config import IngestConfig, IngestResult
from ml.lineage import code_version
from ml.settings import (
    KafkaSettings,
    LakeSettings,
    MlflowSettings,
    RaySettings,
    S3Settings,
    Settings,
    SparkSettings,
)
from ml.tune.space import resolve_search_space

SETTINGS = Settings(
    s3=S3Settings(endpoint_url="http://s3.example:9000"),
    lake=LakeSettings("in", "out"),
    kafka=KafkaSettings("kafka.example:9092"),
    mlflow=MlflowSettings("http://mlflow.example:5000"),
    spark=SparkSettings(master="local[3]"),
    ray=RaySettings("ray://head:10001"),
)


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []

    def ingest(config: IngestConfig, **slices: Any) -> IngestResult:
        calls.append(("ingest", {"config": config, **slices}))
        return IngestResult("d", "snap", "s3://out/x", "s3://out/x/manifest.json", 10, "classification", "y", True)

    def run_preprocess(dataset: str, snapshot_id: str, **slices: Any) -> dict[str, Any]:
        calls.append(("preprocess", {"dataset": dataset, "snapshot_id": snapshot_id, **slices}))
        return {"rows": {"train": 8, "validation": 1, "test": 1}}

    def run_search(config: Any, **slices: Any) -> Any:
        calls.append(("tune", {"config": config, **slices}))
        return SimpleNamespace(best_params={"lr": 0.01}, num_trials=3, to_dict=lambda: {"search": "result"})

    def evaluate_best(search: Any, **slices: Any) -> dict[str, Any]:
        calls.append(("evaluate", {"search": search, **slices}))
        return {"test_metrics": {"accuracy": 0.9}, "baseline_test_metrics": {"accuracy": 0.5}}

    def register_and_promote(evaluation: Any, context: Any, **options: Any) -> dict[str, Any]:
        calls.append(("register", {"evaluation": evaluation, "context": context, **options}))
        return {"version": "4", "promoted": True}

    monkeypatch.setattr(ml.ingest.snapshot, "ingest", ingest)
    monkeypatch.setattr(ml.preprocess.submit, "run_preprocess", run_preprocess)
    monkeypatch.setattr(ml.tune.search, "run_search", run_search)
    monkeypatch.setattr(ml.evaluate, "evaluate_best", evaluate_best)
    monkeypatch.setattr(ml.registry.promote, "register_and_promote", register_and_promote)
    return calls


def test_the_stages_run_in_order_with_their_settings(stages: list[tuple[str, Any]]) -> None:
    summary = pipeline.run_pipeline(
        SETTINGS,
        "s3://in/d/",
        "d",
        "y",
        task="classification",
        run_name="run-1",
        search_space="small",
        num_samples=3,
        max_concurrent_trials=1,
        max_epochs=5,
        margin=0.02,
    )
    assert [name for name, _ in stages] == ["ingest", "preprocess", "tune", "evaluate", "register"]
    calls = dict(stages)
    assert calls["ingest"] == {
        "config": IngestConfig("s3://in/d/", "d", "y", task="classification"),
        "s3": SETTINGS.s3,
        "lake": SETTINGS.lake,
    }
    assert calls["preprocess"] == {
        "dataset": "d",
        "snapshot_id": "snap",
        "s3": SETTINGS.s3,
        "lake": SETTINGS.lake,
        "spark": SETTINGS.spark,
    }
    tune = calls["tune"]
    config = tune.pop("config")
    assert tune == {
        "s3": SETTINGS.s3,
        "lake": SETTINGS.lake,
        "ray": SETTINGS.ray,
        "mlflow": SETTINGS.mlflow,
        "kafka": SETTINGS.kafka,
    }
    assert (config.dataset, config.snapshot_id, config.run_name, config.dag_run_id) == ("d", "snap", "run-1", "run-1")
    assert (config.num_samples, config.max_concurrent_trials, config.max_epochs) == (3, 1, 5)
    assert config.search_space == resolve_search_space("small")
    assert calls["evaluate"] == {"search": {"search": "result"}, "s3": SETTINGS.s3, "mlflow": SETTINGS.mlflow}
    register = calls["register"]
    context = register.pop("context")
    assert (context.mlflow, context.s3, context.lake, context.kafka) == (
        SETTINGS.mlflow,
        SETTINGS.s3,
        SETTINGS.lake,
        SETTINGS.kafka,
    )
    assert register == {
        "evaluation": {"test_metrics": {"accuracy": 0.9}, "baseline_test_metrics": {"accuracy": 0.5}},
        "dag_id": "ml.pipeline",
        "dag_run_id": "run-1",
        "code_version": code_version(),
        "margin": 0.02,
    }
    timings = summary.pop("timings_s")
    assert set(timings) == {"ingest", "preprocess", "tune", "evaluate", "register"}
    assert summary.pop("total_s") == pytest.approx(sum(timings.values()), abs=0.05)
    assert summary == {
        "dataset": "d",
        "snapshot_id": "snap",
        "rows": {"train": 8, "validation": 1, "test": 1},
        "best_params": {"lr": 0.01},
        "num_trials": 3,
        "test_metrics": {"accuracy": 0.9},
        "baseline_test_metrics": {"accuracy": 0.5},
        "model": {"version": "4", "promoted": True},
    }


def test_without_registration(stages: list[tuple[str, Any]]) -> None:
    summary = pipeline.run_pipeline(SETTINGS, "s3://in/d/", "d", "y", run_name="run-2", register=False)
    assert [name for name, _ in stages] == ["ingest", "preprocess", "tune", "evaluate"]
    assert summary["model"] is None and "register" not in summary["timings_s"]
    assert dict(stages)["tune"]["config"].search_space == resolve_search_space(None)  # the default space


def test_a_failing_stage_stops_the_pipeline(stages: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Spark preprocessing of d snapshot snap failed")

    monkeypatch.setattr(ml.preprocess.submit, "run_preprocess", failing)
    with pytest.raises(RuntimeError, match="Spark preprocessing"):
        pipeline.run_pipeline(SETTINGS, "s3://in/d/", "d", "y", run_name="run-3")
    assert [name for name, _ in stages] == ["ingest"]


# the command line


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pipeline.register_cli(parser.add_subparsers(dest="stage", required=True))
    return parser.parse_args(["run-all", *argv])


def test_the_command_passes_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *args, **kwargs: seen.append((args, kwargs)) or {"ok": 1})
    args = parse(
        "--raw-uri",
        "s3://in/d/",
        "--dataset",
        "d",
        "--target",
        "y",
        "--task",
        "regression",
        "--run-name",
        "r",
        "--search-space",
        "small",
        "--num-samples",
        "4",
        "--max-concurrent",
        "1",
        "--max-epochs",
        "6",
        "--workers-per-trial",
        "2",
        "--gpus-per-worker",
        "0",
        "--cache-mb",
        "64",
        "--margin",
        "0.1",
        "--no-register",
    )
    assert args.handler(args, SETTINGS) == {"ok": 1}
    assert seen == [
        (
            (SETTINGS, "s3://in/d/", "d", "y"),
            {
                "task": "regression",
                "run_name": "r",
                "search_space": "small",
                "num_samples": 4,
                "max_concurrent_trials": 1,
                "max_epochs": 6,
                "workers_per_trial": 2,
                "gpus_per_worker": 0.0,
                "cache_mb": 64.0,
                "margin": 0.1,
                "register": False,
            },
        )
    ]
    defaults = parse("--raw-uri", "s3://in/d/", "--dataset", "d", "--target", "y", "--run-name", "r")
    assert (defaults.task, defaults.search_space, defaults.num_samples, defaults.max_concurrent) == (None, None, 8, 2)
    assert (defaults.max_epochs, defaults.margin, defaults.no_register) == (30, 0.0, False)
    assert (defaults.workers_per_trial, defaults.gpus_per_worker, defaults.cache_mb) == (1, None, 1024.0)


@pytest.mark.parametrize("missing", ["--raw-uri", "--dataset", "--target", "--run-name"])
def test_the_command_requires(missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = {"--raw-uri": "s3://in/d/", "--dataset": "d", "--target": "y", "--run-name": "r"}
    del argv[missing]
    with pytest.raises(SystemExit):
        parse(*[part for pair in argv.items() for part in pair])
    assert missing in capsys.readouterr().err


def test_the_peak_logged_is_this_process_s_own_not_its_parent_s() -> None:
    """A run-all started by a large process (B9's benchmark) reports its own peak: Linux carries rusage's ru_maxrss
    across fork and exec, so that figure would be at least the parent's size."""
    held = b"x" * (512 * 2**20)  # resident in this process while the child is started
    printed = subprocess.run(
        [sys.executable, "-c", "from ml.pipeline import peak_rss_mib; print(peak_rss_mib())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert len(held) == 512 * 2**20
    assert 5 < float(printed) < 256
