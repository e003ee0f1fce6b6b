"""ml.tune.cli: `python -m ml tune` arguments into a SearchConfig, and into run_search with the settings the entry
point read (MLflow and Kafka switched off by their flags); run_search itself is faked."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

import ml.tune.search
from ml.settings import KafkaSettings, MlflowSettings, RaySettings, S3Settings, Settings
from ml.tune.cli import register_cli, search_config_from_args
from ml.tune.config import SearchConfig
from ml.tune.space import SEARCH_SPACES_DIR, default_search_space, load_search_space

SETTINGS = Settings(
    s3=S3Settings(endpoint_url="http://s3.invalid:9000"),
    kafka=KafkaSettings("kafka.invalid:9092"),
    mlflow=MlflowSettings("http://mlflow.invalid:5000"),
    ray=RaySettings("ray://head:10001"),
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="stage", required=True))
    return parser.parse_args(
        ["tune", "--dataset", "penguins", "--snapshot", "snap1", "--run-name", "manual__1:2", *argv]
    )


def test_defaults() -> None:
    config = search_config_from_args(_parse(), SETTINGS)
    assert config == SearchConfig(
        dataset="penguins", snapshot_id="snap1", run_name="manual__1-2", search_space=default_search_space()
    )


def test_every_option_reaches_the_config(tmp_path: Any) -> None:
    args = _parse(
        "--search-space",
        "small",
        "--features-uri",
        "s3://other/features",
        "--num-samples",
        "6",
        "--max-concurrent",
        "3",
        "--max-epochs",
        "9",
        "--patience",
        "2",
        "--cpus-per-trial",
        "0.5",
        "--workers-per-trial",
        "2",
        "--gpus-per-worker",
        "1",
        "--cache-mb",
        "0",
        "--metric",
        "val_accuracy",
        "--mode",
        "max",
        "--seed",
        "4",
        "--dag-run-id",
        "manual__1",
    )
    config = search_config_from_args(args, SETTINGS)
    assert config.search_space == load_search_space(SEARCH_SPACES_DIR / "small.json")
    assert (config.features_uri, config.num_samples, config.max_concurrent_trials) == ("s3://other/features", 6, 3)
    assert (config.max_epochs, config.patience, config.cpus_per_trial, config.seed) == (9, 2, 0.5, 4)
    assert (config.metric, config.mode, config.dag_run_id) == ("val_accuracy", "max", "manual__1")
    assert (config.workers_per_trial, config.gpus_per_worker, config.cache_mb) == (2, 1.0, 0.0)


def test_bad_values_are_refused() -> None:
    with pytest.raises(SystemExit):
        _parse("--mode", "best")
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        search_config_from_args(_parse("--num-samples", "0"), SETTINGS)
    with pytest.raises(ValueError, match="workers_per_trial must be >= 1"):
        search_config_from_args(_parse("--workers-per-trial", "0"), SETTINGS)
    with pytest.raises(ValueError, match="gpus_per_worker must be >= 0"):
        search_config_from_args(_parse("--gpus-per-worker", "-1"), SETTINGS)
    with pytest.raises(ValueError, match="cache_mb must be >= 0"):
        search_config_from_args(_parse("--cache-mb", "-1"), SETTINGS)
    with pytest.raises(ValueError, match="not valid JSON"):
        search_config_from_args(_parse("--search-space", "{lr"), SETTINGS)


@pytest.mark.parametrize(
    "flags,tracked,streamed",
    [
        ((), True, True),
        (("--no-mlflow",), False, True),
        (("--no-kafka",), True, False),
        (("--no-mlflow", "--no-kafka"), False, False),
    ],
)
def test_the_command_runs_the_search_with_the_settings(
    monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...], tracked: bool, streamed: bool
) -> None:
    calls: list[tuple[SearchConfig, dict[str, Any]]] = []

    class Result:
        def to_dict(self) -> dict[str, Any]:
            return {"best_trial_id": "t1"}

    def run_search(config: SearchConfig, **kwargs: Any) -> Result:
        calls.append((config, kwargs))
        return Result()

    monkeypatch.setattr(ml.tune.search, "run_search", run_search)
    args = _parse(*flags)
    assert args.handler(args, SETTINGS) == {"best_trial_id": "t1"}
    ((config, kwargs),) = calls
    assert config.run_name == "manual__1-2"
    assert kwargs == {
        "s3": SETTINGS.s3,
        "lake": SETTINGS.lake,
        "ray": SETTINGS.ray,
        "mlflow": SETTINGS.mlflow if tracked else None,
        "kafka": SETTINGS.kafka if streamed else None,
    }
