"""What a search is asked to do (`SearchConfig`) and what it produced (`SearchResult`, stored as JSON in S3)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml.json_values import json_safe
from ml.models import metric_mode, metric_names
from ml.settings import LakeSettings, S3Settings
from ml.storage import S3Uri, exists, features_uri, read_json, tune_uri
from ml.train import DEFAULT_METRIC
from ml.tune.space import default_search_space, resolve_search_space, search_space_hash, validate_search_space

SEARCH_RESULT_FILE = "search_result.json"
SEARCH_MANIFEST_FILE = "search_config.json"

# Fields that must not change when a run is resumed (Tune would mix two different searches otherwise).
RESUME_INVARIANTS = (
    "search_space_hash",
    "num_samples",
    "max_epochs",
    "patience",
    "metric",
    "mode",
    "seed",
    "grace_period",
    "reduction_factor",
    "workers_per_trial",
)
# What a manifest recorded before a field existed meant (a search stored before data-parallel trials ran 1 worker).
INVARIANT_DEFAULTS = {"workers_per_trial": 1}


class SearchIncomplete(RuntimeError):
    """The search stopped before every trial finished (interrupted); run it again with the same run name."""


def sanitize_run_name(name: str) -> str:
    """A run name usable as an S3 folder and a Tune experiment name: [A-Za-z0-9._-], e.g. from a DAG run id.

    'manual__2024-05-01T10:00:00+00:00' -> 'manual__2024-05-01T10-00-00-00-00'.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    if not cleaned:
        raise ValueError(f"run name {name!r} has no usable characters")
    return cleaned[:200]


@dataclass
class SearchConfig:
    """One search. `run_name` is the resume key (sanitised with `sanitize_run_name`); `metric`/`mode` default to
    `val_loss`/`min`; `grace_period` defaults to max(1, max_epochs // 4)."""

    dataset: str
    snapshot_id: str
    run_name: str
    search_space: dict[str, Any] = field(default_factory=default_search_space)
    features_uri: str | None = None  # default: ml.storage.features_uri(lake, dataset, snapshot_id)
    num_samples: int = 8
    max_concurrent_trials: int = 2
    cpus_per_trial: float = 1.0  # per worker of a data-parallel trial
    workers_per_trial: int = 1  # > 1: data-parallel trials (Ray Train DDP workers; batch_size is per worker)
    gpus_per_worker: float | None = None  # None: one per worker when Ray reports enough GPUs, else none
    # Splits whose float32 arrays take at most this many MiB are read once and shared through Ray's object store;
    # larger ones are streamed from S3 by every trial (worker), in memory bounded by the batch and block sizes.
    cache_mb: float = 1024.0
    max_epochs: int = 20
    patience: int = 5
    grace_period: int | None = None
    reduction_factor: int = 3
    metric: str | None = None
    mode: str | None = None
    seed: int = 0
    dag_run_id: str | None = None
    checkpoints_to_keep: int | None = 2  # per trial, best by the metric (plus the latest); None keeps every epoch's

    def __post_init__(self) -> None:
        self.run_name = sanitize_run_name(self.run_name)
        self.search_space = dict(self.search_space)
        validate_search_space(self.search_space)
        for name in (
            "num_samples",
            "max_concurrent_trials",
            "max_epochs",
            "patience",
            "reduction_factor",
            "workers_per_trial",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {self.reduction_factor}")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {self.cache_mb}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.mode is not None and self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if not self.dataset or not self.snapshot_id:
            raise ValueError("dataset and snapshot_id are required")

    @classmethod
    def create(
        cls, *, search_space: Any = None, s3: S3Settings | None = None, allow_local_files: bool = True, **values: Any
    ) -> SearchConfig:
        """Like the constructor, with `search_space` in any form `resolve_search_space` takes (None: the default;
        an s3:// URI is read with `s3`; a local file only with `allow_local_files`)."""
        space = resolve_search_space(search_space, s3, allow_local_files=allow_local_files)
        return cls(search_space=space, **values)

    def resolved_features_uri(self, lake: LakeSettings) -> S3Uri:
        if self.features_uri:
            return S3Uri.parse(self.features_uri)
        return features_uri(lake, self.dataset, self.snapshot_id)

    def experiment_uri(self, lake: LakeSettings) -> S3Uri:
        """The search's Tune storage: trials, checkpoints, the manifest and the stored result."""
        return tune_uri(lake, self.dataset, self.snapshot_id, self.run_name)

    @property
    def resolved_grace_period(self) -> int:
        return min(self.max_epochs, self.grace_period or max(1, self.max_epochs // 4))

    def objective(self, task: str) -> tuple[str, str]:
        """(metric, mode) for the task; the metric must be one the trials report on the validation split."""
        metric = self.metric or DEFAULT_METRIC
        allowed = [f"val_{name}" for name in metric_names(task)]
        if metric not in allowed:
            raise ValueError(f"metric {metric!r} is not reported for {task}; choose one of {allowed}")
        return metric, self.mode or metric_mode(metric)

    def manifest(self, task: str) -> dict[str, Any]:
        metric, mode = self.objective(task)
        return {
            "dataset": self.dataset,
            "snapshot_id": self.snapshot_id,
            "run_name": self.run_name,
            "search_space_hash": search_space_hash(self.search_space),
            "num_samples": self.num_samples,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "metric": metric,
            "mode": mode,
            "seed": self.seed,
            "grace_period": self.resolved_grace_period,
            "reduction_factor": self.reduction_factor,
            "max_concurrent_trials": self.max_concurrent_trials,
            "cpus_per_trial": self.cpus_per_trial,
            "workers_per_trial": self.workers_per_trial,
            "gpus_per_worker": self.gpus_per_worker,
        }


@dataclass
class SearchResult:
    """What a search produced: the best trial and where its checkpoint lives, plus lineage. JSON-able via to_dict."""

    dataset: str
    snapshot_id: str
    run_name: str
    task: str
    metric: str
    mode: str
    best_trial_id: str
    best_params: dict[str, Any]
    best_epoch: int
    best_validation_metrics: dict[str, Any]
    best_checkpoint_uri: str
    num_trials: int
    num_errored: int
    experiment_uri: str
    features_uri: str
    feature_spec_uri: str
    search_space: dict[str, Any]
    search_space_hash: str
    mlflow_parent_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    dag_run_id: str | None = None
    wall_time_s: float | None = None
    phases_s: dict[str, float] | None = None  # where wall_time_s went (ml.tune.phases)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def search_result_uri(self) -> S3Uri:
        return S3Uri.parse(self.experiment_uri).join(SEARCH_RESULT_FILE)


def load_search_result(source: str | Path | Mapping[str, Any], s3_client: Any) -> SearchResult:
    """A SearchResult from a dict, a JSON file, an s3:// URI of one (read with `s3_client`), or a JSON string."""
    if isinstance(source, SearchResult):
        return source
    if isinstance(source, Mapping):
        return SearchResult.from_dict(source)
    text = str(source)
    if text.startswith(("s3://", "s3a://")):
        return SearchResult.from_dict(read_json(S3Uri.parse(text), s3_client))
    if text.lstrip().startswith("{"):
        return SearchResult.from_dict(json.loads(text))
    return SearchResult.from_dict(json.loads(Path(text).read_text()))


def stored_search_result(
    lake: LakeSettings, dataset: str, snapshot_id: str, run_name: str, s3_client: Any
) -> SearchResult:
    uri = tune_uri(lake, dataset, snapshot_id, sanitize_run_name(run_name)).join(SEARCH_RESULT_FILE)
    if not exists(uri, s3_client):
        raise LookupError(f"{uri}: no completed search (run `python -m ml tune` first)")
    return SearchResult.from_dict(read_json(uri, s3_client))
