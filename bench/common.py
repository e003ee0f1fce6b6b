"""What every benchmark shares: the settings it runs with, its command line, a timer, a local Ray, the machine's
description, and the JSON report (stdout + bench/results/).

Settings are explicit: `python -m bench` (the entry point) builds them once from its environment and hands them to
each benchmark's subprocess as JSON in `MLOPS_BENCH_SETTINGS`; a benchmark module run on its own (`python -m
bench.b5_kafka_publisher`) is its own entry point and reads them from the environment (`benchmark_settings`). Inside
the modules, settings are arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bench.memory import memory_total_bytes

if TYPE_CHECKING:
    from ml.settings import S3Settings, Settings
    from ml.tune.config import SearchConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGES = ("pyspark", "pandas", "pyarrow", "numpy", "boto3", "torch", "ray", "mlflow", "kafka-python")

T = TypeVar("T")

SETTINGS_VARIABLE = "MLOPS_BENCH_SETTINGS"  # the runner's settings, as JSON, in each benchmark's environment


def settings_json(settings: Settings) -> str:
    """The settings as JSON (every slice, credentials included: it travels in a child's environment only)."""
    return json.dumps(dataclasses.asdict(settings))


def settings_from_json(text: str) -> Settings:
    """The inverse of `settings_json`."""
    from ml.settings import Settings

    values = json.loads(text)
    slices = typing.get_type_hints(Settings)
    return Settings(**{name: slices[name](**fields) for name, fields in values.items()})


def benchmark_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """The settings a benchmark's `__main__` runs with: the runner's (MLOPS_BENCH_SETTINGS), or, for a module run on
    its own, the environment's."""
    from ml.settings import Settings

    passed = env.get(SETTINGS_VARIABLE)
    return settings_from_json(passed) if passed else Settings.from_env(env)


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line, its module docstring as `--help`."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """`with timer() as t: ...` then `t["seconds"]` (wall clock, perf_counter)."""
    elapsed: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed["seconds"] = time.perf_counter() - start


def timed(function: Callable[[], T]) -> tuple[T, float]:
    """Call `function()`; return its result and the wall-clock seconds it took."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def same_work_search(
    features: Any,
    run_name: str,
    *,
    hidden: int,
    batch_size: int,
    trials: int,
    concurrency: int,
    epochs: int,
    checkpoints_to_keep: int | None,
) -> SearchConfig:
    """A search (ml.tune.config.SearchConfig) over a synthetic features folder in which every trial does the same work:
    a fixed architecture (only the learning rate varies) and no early stopping (patience and ASHA's grace period are
    the whole run), so what a search adds to its trials is what shows (B2's overhead, B5's publishing cost)."""
    from ml.tune.config import SearchConfig

    space = {
        "lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
        "hidden_size": hidden,
        "num_layers": 2,
        "batch_size": batch_size,
        "norm": "none",
        "activation": "relu",
        "dropout": 0.0,
    }
    return SearchConfig(
        dataset=features.dataset,
        snapshot_id=features.snapshot_id,
        run_name=run_name,
        search_space=space,
        num_samples=trials,
        max_concurrent_trials=concurrency,
        max_epochs=epochs,
        patience=epochs,
        grace_period=epochs,
        checkpoints_to_keep=checkpoints_to_keep,
    )


@contextmanager
def local_ray(num_cpus: int, s3: S3Settings | None = None, *, state_api: bool = False) -> Iterator[None]:
    """A local Ray for the block, started before any clock (as a cluster would already be up): `num_cpus` CPUs, no
    dashboard (`state_api`: with it, as Ray Train needs), workers' logs kept off the driver, its files in a folder of
    its own under /tmp (short socket paths).

    With `s3`, its workers get the keys through the job's runtime environment, as ml.tune.runtime.ensure_ray gives
    them: the same path the pipeline takes."""
    import ray

    from ml.settings import RaySettings
    from ml.tune.runtime import ray_auth_scope

    runtime_env = {"env_vars": s3.subprocess_env()} if s3 is not None else None
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as temp_dir:
        with ray_auth_scope(RaySettings()):  # token auth, a token of its own, as a task's local Ray
            ray.init(
                address="local",  # never the machine's latest `ray start` cluster (the cluster profile's)
                num_cpus=num_cpus,
                include_dashboard=state_api,
                _temp_dir=temp_dir,
                log_to_driver=False,
                runtime_env=runtime_env,
            )
        try:
            yield
        finally:
            ray.shutdown()


def delete_run_outputs(settings: Settings, dataset: str, task: str, *, model: bool = True) -> list[str]:
    """Delete what a pipeline run left for `dataset` (its lake folders, MLflow experiment and, with `model`, its
    registered model); returns what failed, as text (best effort: a benchmark reports it rather than failing)."""
    from ml.clients import mlflow_client, s3_client
    from ml.registry.conventions import registered_model_name
    from ml.storage import S3Uri, delete_prefix, lake_root

    problems = []
    root = lake_root(settings.lake)
    for folder in (root.join("datasets", dataset), root.join("tune", dataset)):
        try:
            delete_prefix(S3Uri(folder.bucket, folder.key.rstrip("/") + "/"), s3_client(settings.s3))
        except Exception as error:
            problems.append(f"{folder}: {error}")
    client = mlflow_client(settings.mlflow)
    if model:
        try:
            client.delete_registered_model(registered_model_name(dataset, task))
        except Exception as error:
            problems.append(f"model {registered_model_name(dataset, task)}: {error}")
    try:
        experiment = client.get_experiment_by_name(dataset)
        if experiment is not None:
            client.delete_experiment(experiment.experiment_id)
    except Exception as error:
        problems.append(f"experiment {dataset}: {error}")
    return problems


def _java_version() -> str | None:
    try:
        completed = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (completed.stderr or completed.stdout).splitlines()
    return lines[0].strip() if lines else None


def _git_commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


def machine_info(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """Cores, memory, CPU model, Python, Java and package versions: what a ratio needs next to it to be read."""
    cpu_model = None
    try:
        cpu_model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        )
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = memory_total_bytes()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": cpu_model,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "memory_gib": round(memory / 1024**3, 1) if memory else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "java": _java_version(),
        "packages": versions,
        "git_commit": _git_commit(),
    }


def report(name: str, result: dict[str, Any], packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """Print the benchmark's JSON on stdout and write it to bench/results/NAME.json; returns the full document."""
    document = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **result,
        "machine": machine_info(packages),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    temporary = RESULTS_DIR / f"{name}.json.tmp"
    temporary.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    temporary.replace(RESULTS_DIR / f"{name}.json")
    print(json.dumps(document, indent=2, default=str), flush=True)
    return document


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def ensure_repo_on_path() -> None:
    """Let `python bench/bX.py` import `ml` as `python -m bench.bX` does."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
