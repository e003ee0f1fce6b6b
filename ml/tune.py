"""Hyper-parameter search: Ray Tune (Optuna TPE + ASHA) over `ml.train.tune_trainable`, resumable, tracked, streamed.

`run_search(SearchConfig) -> SearchResult`:
  * reads `feature_spec.json` and the train/validation splits once, and hands them to the trials through
    `tune.with_parameters` (Ray's object store: trials on one node share the arrays);
  * searches the space with `OptunaSearch` (TPE, seeded) behind a `ConcurrencyLimiter`, and stops weak trials early
    with `ASHAScheduler` on the trial's own `epoch` (what max_t and the grace period count);
  * stores trials and checkpoints in S3 under `ml.storage.tune_uri(dataset, snapshot, run_name)`. The run name is the
    resume key: when that folder holds a restorable experiment, the search continues with `Tuner.restore(...,
    resume_unfinished=True)`: finished trials are kept, unfinished ones continue from their last checkpoint, errored
    ones stay errored (a search whose trials all failed fails again), and no finished trial runs again. A search that
    completed before returns its stored result at once. A trial whose worker dies is retried once, from its latest
    checkpoint (`FailureConfig(max_failures=1)`);
  * MLflow: one parent run per search (experiment = the dataset name) with the snapshot, the feature spec and the
    search space as inputs, params and artifacts; one nested child run per trial with its params and per-epoch
    metrics (step = epoch);
  * Kafka: `KafkaMetricsCallback` publishes every trial-epoch result to `ml.topics.TRAINING_METRICS`.

The objective defaults to `val_loss` / `min` for both tasks (cross-entropy for classification, the MSE of the
standardised target for regression): smooth and defined from the first epoch, which suits ASHA's early comparisons.
Any reported validation metric may be chosen instead (e.g. `val_accuracy`, mode inferred as `max`).

An interrupted search (SIGINT/SIGUSR1: Tune saves its state and returns) raises `SearchIncomplete`, so that the
calling task fails and its retry resumes. Ray is imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ml.models import ACTIVATIONS, NORMS, metric_mode, metric_names
from ml.settings import Settings
from ml.storage import S3Uri, arrow_filesystem, exists, features_uri, read_json, tune_uri, write_json
from ml.train import DEFAULT_METRIC, HPARAMS, json_safe, trial_params

log = logging.getLogger(__name__)

SEARCH_SPACES_DIR = Path(__file__).resolve().parent / "search_spaces"
DEFAULT_SEARCH_SPACE = SEARCH_SPACES_DIR / "default.json"
SEARCH_RESULT_FILE = "search_result.json"
SEARCH_MANIFEST_FILE = "search_config.json"
PARENT_RUN_KIND = "tune_search"

# Fields that must not change when a run is resumed (Tune would mix two different searches otherwise).
_RESUME_INVARIANTS = (
    "search_space_hash",
    "num_samples",
    "max_epochs",
    "patience",
    "metric",
    "mode",
    "seed",
    "grace_period",
    "reduction_factor",
)


class SearchIncomplete(RuntimeError):
    """The search stopped before every trial finished (interrupted); run it again with the same run name."""


# --------------------------------------------------------------------------------------------------------------------
# Search spaces given as data
# --------------------------------------------------------------------------------------------------------------------

_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "loguniform": ("low", "high"),
    "randint": ("low", "high"),  # high is exclusive, as in ray.tune.randint
    "qrandint": ("low", "high", "q"),  # high is inclusive, as in ray.tune.qrandint
    "lograndint": ("low", "high"),  # high is exclusive
    "choice": ("values",),
    "constant": ("value",),
}
_INT_DISTRIBUTIONS = ("randint", "qrandint", "lograndint")
_FLOAT_DISTRIBUTIONS = ("uniform", "quniform", "loguniform")

# What each hyper-parameter accepts: its kind and a check of one value (None when fine, else the reason).
_PARAM_RULES: dict[str, tuple[str, Callable[[Any], str | None]]] = {
    "lr": ("float", lambda v: None if v > 0 else "must be > 0"),
    "weight_decay": ("float", lambda v: None if v >= 0 else "must be >= 0"),
    "dropout": ("float", lambda v: None if 0 <= v <= 1 else "must be in [0, 1)"),
    "batch_size": ("int", lambda v: None if v >= 1 else "must be >= 1"),
    "num_layers": ("int", lambda v: None if v >= 0 else "must be >= 0"),
    "hidden_size": ("int", lambda v: None if v >= 1 else "must be >= 1"),
    "norm": ("category", lambda v: None if v in NORMS else f"must be one of {list(NORMS)}"),
    "activation": ("category", lambda v: None if v in ACTIVATIONS else f"must be one of {list(ACTIVATIONS)}"),
}
assert set(_PARAM_RULES) == set(HPARAMS)


def validate_search_space(space: Any) -> dict[str, dict[str, Any]]:
    """Check a search space given as data and return it normalised (every entry a dict with a `type`).

    Format: `{"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}, "hidden_size": {"type": "choice",
    "values": [32, 64]}, "num_layers": {"type": "randint", "low": 1, "high": 4}, "activation": "relu", ...}`;
    a bare value is a constant. Raises ValueError naming the offending key.
    """
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"search space must be a non-empty mapping of hyper-parameter -> distribution, got {space!r}")
    normalised: dict[str, dict[str, Any]] = {}
    for key, entry in space.items():
        if key not in _PARAM_RULES:
            raise ValueError(f"search space key {key!r} is not a hyper-parameter; expected one of {sorted(HPARAMS)}")
        if not isinstance(entry, Mapping):
            entry = {"type": "constant", "value": entry}
        normalised[key] = _validate_entry(key, dict(entry))
    return normalised


def _validate_entry(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    kind, check = _PARAM_RULES[key]
    dist = entry.get("type")
    if dist not in _DISTRIBUTIONS:
        raise ValueError(f"search space {key!r}: type {dist!r} is not one of {sorted(_DISTRIBUTIONS)}")
    required = _DISTRIBUTIONS[dist]
    missing = [f for f in required if f not in entry]
    extra = sorted(set(entry) - {"type", *required})
    if missing or extra:
        raise ValueError(
            f"search space {key!r}: {dist} needs exactly {list(required)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )

    def value_ok(value: Any, what: str) -> None:
        if kind == "category":
            ok_type = isinstance(value, str)
        elif kind == "int":
            ok_type = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok_type = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok_type:
            raise ValueError(f"search space {key!r}: {what} {value!r} is not a valid {kind} value")
        reason = check(value)
        if reason:
            raise ValueError(f"search space {key!r}: {what} {value!r} {reason}")

    if dist == "constant":
        value_ok(entry["value"], "value")
    elif dist == "choice":
        values = entry["values"]
        if not isinstance(values, list) or not values:
            raise ValueError(f"search space {key!r}: choice needs a non-empty list of 'values', got {values!r}")
        for value in values:
            value_ok(value, "choice")
    else:
        if kind == "category":
            raise ValueError(
                f"search space {key!r}: a categorical hyper-parameter takes 'choice' or 'constant', not {dist}"
            )
        if kind == "int" and dist in _FLOAT_DISTRIBUTIONS:
            raise ValueError(
                f"search space {key!r}: an integer hyper-parameter needs one of {list(_INT_DISTRIBUTIONS)}"
                f", 'choice' or 'constant', not {dist}"
            )
        if kind == "float" and dist in _INT_DISTRIBUTIONS:
            raise ValueError(
                f"search space {key!r}: a real-valued hyper-parameter needs one of "
                f"{list(_FLOAT_DISTRIBUTIONS)}, 'choice' or 'constant', not {dist}"
            )
        low, high = entry["low"], entry["high"]
        value_ok(low, "low")
        value_ok(high, "high")
        if not low < high:
            raise ValueError(f"search space {key!r}: low ({low}) must be below high ({high})")
        if dist.startswith("log") and low <= 0:
            raise ValueError(f"search space {key!r}: {dist} needs low > 0, got {low}")
        if key == "dropout" and high > 1:
            raise ValueError(f"search space {key!r}: high {high} must be <= 1")
        if "q" in entry and not (isinstance(entry["q"], int | float) and entry["q"] > 0):
            raise ValueError(f"search space {key!r}: q must be a positive number, got {entry['q']!r}")
    return entry


def to_tune_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """A validated search space as Ray Tune sampling domains (constants stay plain values)."""
    from ray import tune

    domains: dict[str, Any] = {}
    for key, entry in validate_search_space(space).items():
        dist = entry["type"]
        if dist == "constant":
            domains[key] = entry["value"]
        elif dist == "choice":
            domains[key] = tune.choice(list(entry["values"]))
        else:
            factory = getattr(tune, dist)
            args = [entry["low"], entry["high"]] + ([entry["q"]] if "q" in entry else [])
            domains[key] = factory(*args)
    return domains


def load_search_space(source: str | Path) -> dict[str, Any]:
    """Read a search space from a JSON or YAML file (local path or s3:// URI) and validate it."""
    text_source = str(source)
    if text_source.startswith(("s3://", "s3a://")):
        from ml.storage import s3_client

        uri = S3Uri.parse(text_source)
        text = s3_client().get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read().decode()
    else:
        text = Path(source).read_text()
    if text_source.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    try:
        validate_search_space(data)
    except ValueError as error:
        raise ValueError(f"{text_source}: {error}") from None
    return dict(data)


def resolve_search_space(value: Any) -> dict[str, Any]:
    """A search space from what a DAG param or CLI gives: None (the default), a mapping, a JSON string, the name of a
    shipped space (`default`, `small`: ml/search_spaces/NAME.json), or a JSON/YAML file path or s3:// URI."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return default_search_space()
    if isinstance(value, Mapping):
        validate_search_space(value)
        return dict(value)
    if not isinstance(value, str | Path):
        raise ValueError(f"search space must be a mapping, a JSON string, a name or a file, got {type(value).__name__}")
    text = str(value).strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"search space is not valid JSON: {error}") from None
        validate_search_space(data)
        return dict(data)
    shipped = SEARCH_SPACES_DIR / f"{text}.json"
    if re.fullmatch(r"[A-Za-z0-9_-]+", text) and shipped.is_file():
        return load_search_space(shipped)
    if not text.startswith(("s3://", "s3a://")) and not Path(text).is_file():
        names = sorted(p.stem for p in SEARCH_SPACES_DIR.glob("*.json"))
        raise ValueError(f"search space {text!r} is neither JSON, a shipped space {names}, nor an existing file")
    return load_search_space(text)


def default_search_space() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DEFAULT_SEARCH_SPACE.read_text())
    return loaded


def search_space_hash(space: Mapping[str, Any]) -> str:
    """A stable fingerprint of a search space (sha256 of its normalised, key-sorted JSON; 16 hex digits)."""
    canonical = json.dumps(validate_search_space(space), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def sanitize_run_name(name: str) -> str:
    """A run name usable as an S3 folder and a Tune experiment name: [A-Za-z0-9._-], e.g. from a DAG run id.

    'manual__2024-05-01T10:00:00+00:00' -> 'manual__2024-05-01T10-00-00-00-00'.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    if not cleaned:
        raise ValueError(f"run name {name!r} has no usable characters")
    return cleaned[:200]


# --------------------------------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SearchConfig:
    """One search. `run_name` is the resume key (sanitised with `sanitize_run_name`); `metric`/`mode` default to
    `val_loss`/`min`; `grace_period` defaults to max(1, max_epochs // 4)."""

    dataset: str
    snapshot_id: str
    run_name: str
    search_space: dict[str, Any] = field(default_factory=default_search_space)
    features_uri: str | None = None  # default: ml.storage.features_uri(dataset, snapshot_id)
    num_samples: int = 8
    max_concurrent_trials: int = 2
    cpus_per_trial: float = 1.0
    max_epochs: int = 20
    patience: int = 5
    grace_period: int | None = None
    reduction_factor: int = 3
    metric: str | None = None
    mode: str | None = None
    seed: int = 0
    dag_run_id: str | None = None
    track_mlflow: bool = True
    publish_metrics: bool = True
    checkpoints_to_keep: int | None = 2  # per trial, best by the metric (plus the latest); None keeps every epoch's

    def __post_init__(self) -> None:
        self.run_name = sanitize_run_name(self.run_name)
        self.search_space = dict(self.search_space)
        validate_search_space(self.search_space)
        for name in ("num_samples", "max_concurrent_trials", "max_epochs", "patience", "reduction_factor"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {self.reduction_factor}")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.mode is not None and self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if not self.dataset or not self.snapshot_id:
            raise ValueError("dataset and snapshot_id are required")

    @classmethod
    def create(cls, *, search_space: Any = None, **values: Any) -> SearchConfig:
        """Like the constructor, with `search_space` in any form `resolve_search_space` takes (None: the default)."""
        return cls(search_space=resolve_search_space(search_space), **values)

    @property
    def resolved_features_uri(self) -> S3Uri:
        return S3Uri.parse(self.features_uri) if self.features_uri else features_uri(self.dataset, self.snapshot_id)

    @property
    def experiment_uri(self) -> S3Uri:
        return tune_uri(self.dataset, self.snapshot_id, self.run_name)

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


# --------------------------------------------------------------------------------------------------------------------
# Tune callbacks: the logic lives in plain classes; the public names add ray.tune.Callback as a base on first use
# (module __getattr__), so that importing ml.tune does not import Ray. Callbacks are pickled into the experiment's
# tuner.pkl and come back on restore, so they hold configuration only: clients are made in setup().
# --------------------------------------------------------------------------------------------------------------------

# Result keys that are our metrics (Tune adds bookkeeping such as time_total_s, pid, hostname).
_METRIC_PREFIXES = ("train_", "val_")
_EXTRA_METRICS = ("epoch_time_s",)


def result_metrics(result: Mapping[str, Any]) -> dict[str, float | None]:
    """The trial's own metrics from a Tune result: floats, non-finite values as None (JSON has no NaN)."""
    metrics: dict[str, float | None] = {}
    for key, value in result.items():
        if not (key.startswith(_METRIC_PREFIXES) or key in _EXTRA_METRICS):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        metrics[key] = float(value) if math.isfinite(value) else None
    return metrics


def result_epoch(result: Mapping[str, Any]) -> int:
    return int(result.get("epoch") or result.get("training_iteration") or 0)


def default_publisher_factory(bootstrap_servers: str | None, dag_run_id: str | None) -> Any:
    """The project's Kafka publisher (ml.events.EventPublisher)."""
    from ml.events import EventPublisher  # type: ignore[import-not-found,unused-ignore]

    return EventPublisher(bootstrap_servers, dag_run_id=dag_run_id)


class _KafkaMetricsLogic:
    """Publishes each trial-epoch result to ml.topics.TRAINING_METRICS (key `run_name:trial_id:epoch`)."""

    close_timeout_s = 30.0  # how long the end of the search waits for buffered messages (a broker that is down)

    def __init__(
        self,
        run_name: str,
        *,
        dag_run_id: str | None = None,
        bootstrap_servers: str | None = None,
        publisher_factory: Callable[[str | None, str | None], Any] | None = None,
    ) -> None:
        self.run_name = run_name
        self.dag_run_id = dag_run_id
        self.bootstrap_servers = bootstrap_servers
        self.publisher_factory = publisher_factory
        self._publisher: Any = None
        self.published = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_publisher"] = None
        state["published"] = 0
        return state

    def setup(self, **info: Any) -> None:
        self._ensure_publisher()

    def _ensure_publisher(self) -> Any:
        if self._publisher is None:
            factory = self.publisher_factory or default_publisher_factory
            try:
                self._publisher = factory(
                    self.bootstrap_servers or Settings.from_env().kafka_bootstrap_servers, self.dag_run_id
                )
            except ImportError as error:
                log.warning("training metrics are not published to Kafka: %s", error)
                self._publisher = _NullPublisher()
        return self._publisher

    def message(self, trial: Any, result: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        epoch = result_epoch(result)
        payload = {
            "run_name": self.run_name,
            "trial_id": str(trial.trial_id),
            "epoch": epoch,
            "metrics": result_metrics(result),
            "params": trial_params(trial.config),
        }
        return payload, f"{self.run_name}:{trial.trial_id}:{epoch}"

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        from ml.topics import TRAINING_METRICS

        payload, key = self.message(trial, result)
        try:
            self._ensure_publisher().publish(TRAINING_METRICS, payload, key)  # never blocks: buffered
            self.published += 1
        except Exception:  # a metrics stream must never fail the search
            log.warning("could not publish %s", key, exc_info=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self._publisher is not None:
            try:
                stats = self._publisher.close(timeout_s=self.close_timeout_s)
                log.info("training metrics to Kafka: %s", stats)
            except Exception:
                log.warning("closing the Kafka publisher failed", exc_info=True)
            self._publisher = None


class _NullPublisher:
    def publish(self, topic: Any, payload: dict[str, Any], key: str) -> None:
        return None

    def close(self, timeout_s: float = 30.0) -> None:
        return None


class _MlflowTrialLogic:
    """One nested MLflow run per trial (tag mlflow.parentRunId), params at start, metrics each epoch (step = epoch).

    Every MLflow call runs, in order, on one background thread: Tune's driver loop waits for its callbacks, and a
    trial's next epoch waits for the driver, so synchronous HTTP calls here would slow every trial (B2 measured
    ~50 ms per epoch). `on_experiment_end` drains the queue. On resume, a trial's existing child run is found by its
    tags and continued, so a resumed trial keeps one run.
    """

    def __init__(self, experiment_id: str, parent_run_id: str, run_name: str, tracking_uri: str | None = None) -> None:
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.run_name = run_name
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self._runs: dict[str, str] = {}  # trial id -> run id; used on the worker thread only
        self._queue: Any = None
        self._worker: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _queue=None, _worker=None)
        return state

    def setup(self, **info: Any) -> None:
        self._start_worker()

    def _start_worker(self) -> None:
        import queue
        import threading

        if self._worker is None or not self._worker.is_alive():
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._work, name="mlflow-trial-runs", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                what, trial_id, action = item
                try:
                    action()
                except Exception:  # tracking problems are logged: a flaky server must not kill a long search
                    log.warning("MLflow logging (%s) failed for trial %s", what, trial_id, exc_info=True)
            finally:
                self._queue.task_done()

    def _submit(self, what: str, trial_id: str, action: Callable[[], Any]) -> None:
        self._start_worker()
        self._queue.put((what, trial_id, action))

    def _get_client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri or Settings.from_env().mlflow_tracking_uri)
        return self._client

    def child_run_id(self, trial_id: str, params: Mapping[str, Any]) -> str:
        """The trial's child run: found (a resumed trial) or created with its params. Worker thread only."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        client = self._get_client()
        found = client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' AND tags.`mlops.trial_id` = '{trial_id}'"
            ),
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        else:
            from mlflow.entities import Param

            run = client.create_run(
                self.experiment_id,
                run_name=f"{self.run_name}-{trial_id}",
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "mlops.trial_id": trial_id,
                    "mlops.run_name": self.run_name,
                    "mlops.kind": "tune_trial",
                },
            )
            run_id = run.info.run_id
            values = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()]
            if values:
                client.log_batch(run_id, params=values)
        self._runs[trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        trial_id, params = str(trial.trial_id), trial_params(trial.config)
        self._submit("start", trial_id, lambda: self.child_run_id(trial_id, params))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        from mlflow.entities import Metric

        trial_id, params = str(trial.trial_id), trial_params(trial.config)
        step, timestamp = result_epoch(result), int(time.time() * 1000)
        metrics = [
            Metric(key, value if value is not None else math.nan, timestamp, step)
            for key, value in result_metrics(result).items()
        ]

        def log_metrics() -> None:
            self._get_client().log_batch(self.child_run_id(trial_id, params), metrics=metrics)

        self._submit("result", trial_id, log_metrics)

    def _terminate(self, trial: Any, status: str) -> None:
        trial_id, params = str(trial.trial_id), trial_params(trial.config)

        def terminate() -> None:
            self._get_client().set_terminated(self.child_run_id(trial_id, params), status)

        self._submit(status.lower(), trial_id, terminate)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._terminate(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._terminate(trial, "FAILED")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Wait (bounded) until every queued call has been made."""
        if self._worker is None:
            return
        self._queue.put(None)
        self._worker.join(timeout=120)
        if self._worker.is_alive():
            log.warning("MLflow logging did not finish within 120 s; %d calls left", self._queue.qsize())
        self._worker = None


class _ProgressLogic:
    """Logs each finished trial and the best score so far, so that task logs show the search's progress."""

    def __init__(self, run_name: str, metric: str, mode: str, num_samples: int) -> None:
        self.run_name = run_name
        self.metric = metric
        self.mode = mode
        self.num_samples = num_samples

    def _best(self, trials: list[Any]) -> tuple[float | None, str | None]:
        best: tuple[float | None, str | None] = (None, None)
        for trial in trials:
            stats = getattr(trial, "metric_analysis", {}).get(self.metric, {})
            value = stats.get(self.mode)
            if value is None or not math.isfinite(value):
                continue
            if best[0] is None or (value > best[0] if self.mode == "max" else value < best[0]):
                best = (float(value), str(trial.trial_id))
        return best

    def _log(self, trials: list[Any], trial: Any, outcome: str) -> None:
        # Tune calls this before it marks `trial` finished: count it explicitly.
        done = 1 + sum(1 for t in trials if t is not trial and t.status in ("TERMINATED", "ERROR"))
        best, best_trial = self._best(trials)
        last = (trial.last_result or {}).get(self.metric)
        log.info(
            "[%s] trial %s %s after %s epochs (%s=%s); %d/%d trials done; best %s so far: %s (trial %s)",
            self.run_name,
            trial.trial_id,
            outcome,
            (trial.last_result or {}).get("epoch"),
            self.metric,
            _fmt(last),
            done,
            self.num_samples,
            self.metric,
            _fmt(best),
            best_trial,
        )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._log(trials, trial, "finished")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._log(trials, trial, "FAILED")


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, int | float) else str(value)


_LOGIC_CLASSES: dict[str, type] = {
    "KafkaMetricsCallback": _KafkaMetricsLogic,
    "MlflowTrialCallback": _MlflowTrialLogic,
    "ProgressLogCallback": _ProgressLogic,
}


@cache
def _callback_class(name: str) -> type:
    from ray.tune import Callback

    # Module and qualname point back here, so pickle finds the class through __getattr__ on restore.
    return type(name, (_LOGIC_CLASSES[name], Callback), {"__module__": __name__, "__qualname__": name})


def __getattr__(name: str) -> Any:
    if name in _LOGIC_CLASSES:
        return _callback_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def trial_name(trial: Any) -> str:
    """Short, stable trial names and folders (Tune's default puts every parameter into the folder name)."""
    return f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------------------------


def ensure_ray(settings: Settings | None = None) -> bool:
    """Connect to RAY_ADDRESS when set, else start a local Ray; True when this call started it (caller shuts down)."""
    import ray

    if ray.is_initialized():
        return False
    settings = settings or Settings.from_env()
    # (No ray.LoggingConfig: it also sets the driver's root logger, which silenced this module's INFO progress.)
    if settings.ray_address:
        log.info("connecting to the Ray cluster at %s", settings.ray_address)
        ray.init(address=settings.ray_address, log_to_driver=True)
    else:
        log.info("starting a local Ray")
        ray.init(include_dashboard=False, log_to_driver=True)
    return True


def route_library_logs() -> None:
    """Send Ray's and Optuna's driver-side logs through the logging tree instead of their own stderr handlers.

    Under Airflow every line written to stderr shows as an ERROR in the task log; through logging, the task log
    keeps their levels (and a CLI run still prints them through the root handler)."""
    import optuna

    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            ray_logger.removeHandler(handler)
    ray_logger.propagate = True
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def run_search(config: SearchConfig, *, callbacks: Sequence[Any] = ()) -> SearchResult:
    """Run (or resume, or return the stored result of) the search named by `config.run_name`.

    `callbacks` are extra ray.tune.Callback objects; like the built-in ones they are saved with the experiment, and a
    resumed search uses the ones saved when it started. Raises SearchIncomplete when interrupted, RuntimeError when
    every trial failed, ValueError when a resumed run's settings differ from the stored ones.
    """
    from ml.data import feature_spec_uri, load_feature_spec

    started = time.perf_counter()
    settings = Settings.from_env()
    features = config.resolved_features_uri
    spec = load_feature_spec(features)
    metric, mode = config.objective(spec.task)
    experiment = config.experiment_uri
    manifest = config.manifest(spec.task)

    stored = _stored_result(experiment, manifest)
    if stored is not None:
        log.info(
            "search %s already completed: best trial %s, %s=%s (%s)",
            config.run_name,
            stored.best_trial_id,
            metric,
            stored.best_validation_metrics.get(metric),
            stored.best_checkpoint_uri,
        )
        return stored

    # Per-epoch checkpoints of fast trials trigger Tune's forced state snapshots often; B2 measures their cost, and the
    # warning would flood task logs, so it is off unless the environment sets it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune pickles its filesystem into the experiment state in S3: no keys inside.
    filesystem = arrow_filesystem(settings, embed_keys=False)
    experiment_path = f"{experiment.bucket}/{experiment.key}"
    restoring = _restorable(experiment_path, filesystem)
    _check_manifest(experiment, manifest, restoring)

    parent_run_id = experiment_id = None
    if config.track_mlflow:
        experiment_id, parent_run_id = start_parent_run(config, spec, str(features), manifest, settings)
    route_library_logs()
    started_ray = ensure_ray(settings)
    try:
        results = _fit(
            config, metric, mode, experiment_path, filesystem, restoring, parent_run_id, experiment_id, spec, callbacks
        )
        result = _summarise(
            results,
            config,
            spec,
            metric,
            mode,
            str(features),
            str(feature_spec_uri(features)),
            manifest["search_space_hash"],
            parent_run_id,
            experiment_id,
        )
        result.wall_time_s = time.perf_counter() - started
        write_json(result.search_result_uri, result.to_dict())
        if config.track_mlflow and parent_run_id:
            finish_parent_run(parent_run_id, result, settings)
        log.info(
            "search %s done in %.1fs: %d trials (%d errored); best trial %s at epoch %d, %s=%s -> %s",
            config.run_name,
            result.wall_time_s,
            result.num_trials,
            result.num_errored,
            result.best_trial_id,
            result.best_epoch,
            metric,
            _fmt(result.best_validation_metrics.get(metric)),
            result.best_checkpoint_uri,
        )
        return result
    except BaseException as error:
        if config.track_mlflow and parent_run_id:
            _set_parent_status(
                parent_run_id,
                "KILLED" if isinstance(error, SearchIncomplete | KeyboardInterrupt) else "FAILED",
                settings,
            )
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _fit(
    config: SearchConfig,
    metric: str,
    mode: str,
    experiment_path: str,
    filesystem: Any,
    restoring: bool,
    parent_run_id: str | None,
    experiment_id: str | None,
    spec: Any,
    extra_callbacks: Sequence[Any],
) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from ml.data import load_training_data
    from ml.train import tune_trainable

    data = load_training_data(config.resolved_features_uri, spec)
    # with_parameters puts the arrays into the object store once; every trial (and a restored run) gets a reference.
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, data=data), {"cpu": config.cpus_per_trial})
    param_space = {
        **to_tune_space(config.search_space),
        "max_epochs": config.max_epochs,
        "patience": config.patience,
        "seed": config.seed,
        "metric": metric,
        "mode": mode,
        "threads": max(1, int(config.cpus_per_trial)),
    }

    if restoring:
        log.info("resuming search %s from %s", config.run_name, experiment_path)
        # Errored trials (their FailureConfig retries used up) stay errored. Ray 2.60 offers no sound alternative
        # here: resume_errored ran such a trial for one more epoch and ended it as if complete, and restart_errored
        # gave it a new id that OptunaSearch rejects (KeyError); see tests/integration/test_trial_failures.py.
        tuner = tune.Tuner.restore(
            experiment_path,
            trainable=trainable,
            resume_unfinished=True,
            param_space=param_space,
            storage_filesystem=filesystem,
        )
        return tuner.fit()

    callbacks: list[Any] = [_callback_class("ProgressLogCallback")(config.run_name, metric, mode, config.num_samples)]
    if config.track_mlflow and parent_run_id and experiment_id:
        callbacks.append(_callback_class("MlflowTrialCallback")(experiment_id, parent_run_id, config.run_name))
    if config.publish_metrics:
        callbacks.append(_callback_class("KafkaMetricsCallback")(config.run_name, dag_run_id=config.dag_run_id))
    callbacks.extend(extra_callbacks)

    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    # TPE starts from random points; with small budgets let it model sooner than Optuna's default of 10.
    sampler = TPESampler(seed=config.seed, n_startup_trials=max(2, min(10, config.num_samples // 3)))
    searcher = ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=config.max_concurrent_trials)
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=config.max_epochs,
        grace_period=config.resolved_grace_period,
        reduction_factor=config.reduction_factor,
    )
    experiment = config.experiment_uri
    parent = experiment.key.rsplit("/", 1)[0]
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=config.num_samples,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=config.run_name,
            storage_path=f"{experiment.bucket}/{parent}",
            storage_filesystem=filesystem,
            callbacks=callbacks,
            # Keep the best checkpoints of each trial (Tune always keeps the latest too, for resuming).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=config.checkpoints_to_keep, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    return tuner.fit()


def _restorable(experiment_path: str, filesystem: Any) -> bool:
    """A Tune experiment we can resume: `tuner.pkl` and at least one saved experiment state.

    A run killed in its first seconds leaves `tuner.pkl` without any state; restoring that fails, so such a run
    starts over (its trials had not reported anything yet).
    """
    from pyarrow import fs
    from ray import tune

    if not tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem):
        return False
    entries = filesystem.get_file_info(fs.FileSelector(experiment_path, recursive=False))
    if any(Path(entry.path).name.startswith("experiment_state-") for entry in entries):
        return True
    log.warning(
        "%s has tuner.pkl but no experiment state (killed before its first snapshot): starting over", experiment_path
    )
    return False


def _summarise(
    results: Any,
    config: SearchConfig,
    spec: Any,
    metric: str,
    mode: str,
    features: str,
    spec_uri: str,
    space_hash: str,
    parent_run_id: str | None,
    experiment_id: str | None,
) -> SearchResult:
    total = len(results)
    errored = results.num_errors
    unfinished = total - results.num_terminated - errored
    if unfinished or total < config.num_samples:
        raise SearchIncomplete(
            f"search {config.run_name} stopped with {results.num_terminated} of "
            f"{config.num_samples} trials finished ({unfinished} unfinished, {errored} errored); "
            "run it again with the same run name to resume"
        )
    if errored == total:
        raise RuntimeError(f"search {config.run_name}: all {total} trials failed; first error: {results.errors[0]}")
    if errored:
        log.warning("search %s: %d of %d trials failed", config.run_name, errored, total)

    # The best kept checkpoint of the trials that finished: an errored trial's scores (Ray's get_best_result ranks
    # them too) and a killed attempt's scores without a kept checkpoint are no basis for a model.
    candidates = [
        (trial, ckpt, m)
        for trial in results
        if trial.error is None
        for ckpt, m in (trial.best_checkpoints or [])
        if _finite(m.get(metric))
    ]
    if not candidates:
        raise RuntimeError(f"search {config.run_name}: no finished trial has a checkpoint with a finite {metric}")
    best, checkpoint, metrics = (max if mode == "max" else min)(candidates, key=lambda item: item[2][metric])
    return SearchResult(
        dataset=config.dataset,
        snapshot_id=config.snapshot_id,
        run_name=config.run_name,
        task=spec.task,
        metric=metric,
        mode=mode,
        best_trial_id=str(best.metrics.get("trial_id") or metrics.get("trial_id")),
        best_params=trial_params(best.config),
        best_epoch=result_epoch(metrics),
        best_validation_metrics={k: v for k, v in result_metrics(metrics).items() if k.startswith("val_")},
        best_checkpoint_uri=f"s3://{checkpoint.path.lstrip('/')}",
        num_trials=total,
        num_errored=errored,
        experiment_uri=str(config.experiment_uri),
        features_uri=features,
        feature_spec_uri=spec_uri,
        search_space=validate_search_space(config.search_space),
        search_space_hash=space_hash,
        mlflow_parent_run_id=parent_run_id,
        mlflow_experiment_id=experiment_id,
        dag_run_id=config.dag_run_id,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _stored_result(experiment: S3Uri, manifest: Mapping[str, Any]) -> SearchResult | None:
    """The result of a completed search with the same settings, if one is stored (different settings: an error)."""
    uri = experiment.join(SEARCH_RESULT_FILE)
    if not exists(uri):
        return None
    _compare_manifest(experiment, manifest)
    stored = SearchResult.from_dict(read_json(uri))
    if stored.search_space_hash != manifest["search_space_hash"]:
        raise ValueError(
            f"{experiment}: run {stored.run_name!r} completed with search space {stored.search_space_hash}, "
            f"not {manifest['search_space_hash']}; use a new run name"
        )
    return stored


def _compare_manifest(experiment: S3Uri, manifest: Mapping[str, Any]) -> None:
    uri = experiment.join(SEARCH_MANIFEST_FILE)
    if not exists(uri):
        return
    stored = read_json(uri)
    changed = {k: (stored.get(k), manifest[k]) for k in _RESUME_INVARIANTS if stored.get(k) != manifest[k]}
    if changed:
        raise ValueError(
            f"{experiment}: run {manifest['run_name']!r} was started with other settings "
            f"(stored, now): {changed}; use a new run name"
        )


def _check_manifest(experiment: S3Uri, manifest: Mapping[str, Any], restoring: bool) -> None:
    """Refuse to resume a run whose search settings changed; record them when a run starts."""
    if restoring:
        _compare_manifest(experiment, manifest)
    else:
        write_json(experiment.join(SEARCH_MANIFEST_FILE), dict(manifest))


# --------------------------------------------------------------------------------------------------------------------
# MLflow parent run
# --------------------------------------------------------------------------------------------------------------------


def _mlflow_client(settings: Settings) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def get_or_create_experiment(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created concurrently by another task
        return str(client.get_experiment_by_name(name).experiment_id)


def find_parent_run(client: Any, experiment_id: str, dataset: str, snapshot_id: str, run_name: str) -> Any | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`mlops.kind` = '{PARENT_RUN_KIND}' AND tags.`mlops.run_name` = '{run_name}' "
            f"AND tags.`mlops.snapshot_id` = '{snapshot_id}' AND tags.`mlops.dataset` = '{dataset}'"
        ),
        max_results=1,
    )
    return runs[0] if runs else None


def start_parent_run(
    config: SearchConfig, spec: Any, features: str, manifest: Mapping[str, Any], settings: Settings
) -> tuple[str, str]:
    """Find (resume) or create the search's parent run; returns (experiment id, run id)."""
    from mlflow.entities import Param

    client = _mlflow_client(settings)
    experiment_id = get_or_create_experiment(client, config.dataset)
    existing = find_parent_run(client, experiment_id, config.dataset, config.snapshot_id, config.run_name)
    if existing is not None:
        run_id = existing.info.run_id
        client.update_run(run_id, status="RUNNING")
        log.info("MLflow: continuing parent run %s in experiment %s", run_id, config.dataset)
        return experiment_id, run_id

    spec_uri = f"{features.rstrip('/')}/feature_spec.json"
    tags = {
        "mlops.kind": PARENT_RUN_KIND,
        "mlops.dataset": config.dataset,
        "mlops.snapshot_id": config.snapshot_id,
        "mlops.run_name": config.run_name,
        "mlops.dag_run_id": config.dag_run_id or "",
        "mlops.features_uri": features,
        "mlops.feature_spec_uri": spec_uri,
        "mlops.tune_uri": str(config.experiment_uri),
        "mlops.search_space_hash": manifest["search_space_hash"],
        "mlops.task": spec.task,
    }
    run = client.create_run(experiment_id, run_name=config.run_name, tags=tags)
    run_id = run.info.run_id
    params = {
        **{k: v for k, v in manifest.items() if k not in ("dataset", "run_name")},
        "task": spec.task,
        "num_features": len(spec.feature_columns),
        "classes": json.dumps(spec.classes),
        "rows": json.dumps(spec.rows, sort_keys=True),
        "features_uri": features,
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_dict(run_id, json.loads(spec.to_json()), "feature_spec.json")
    client.log_dict(run_id, validate_search_space(config.search_space), "search_space.json")
    _log_dataset_input(client, run_id, config, spec, features)
    log.info("MLflow: parent run %s in experiment %s (%s)", run_id, config.dataset, settings.mlflow_tracking_uri)
    return experiment_id, run_id


def _log_dataset_input(client: Any, run_id: str, config: SearchConfig, spec: Any, features: str) -> None:
    """The features snapshot as a run input (metadata only: source URI, digest, schema)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, DataType, Schema

    label_type = DataType.integer if spec.task == "classification" else DataType.double
    columns: list[Any] = [ColSpec(DataType.float, name) for name in spec.feature_columns]
    schema = Schema([*columns, ColSpec(label_type, "label")])
    # MetaDataset declares `profile` abstract but is meant to be instantiated (MLflow's own docs do).
    dataset = MetaDataset(
        resolve_dataset_source(features),
        name=f"{config.dataset}@{config.snapshot_id}",  # type: ignore[abstract]
        digest=config.snapshot_id[:36],
        schema=schema,
    )
    # One input for the features folder (MLflow keeps one input per dataset; the splits are folders of it).
    client.log_inputs(
        run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])]
    )


def finish_parent_run(run_id: str, result: SearchResult, settings: Settings) -> None:
    from mlflow.entities import Metric, RunTag

    client = _mlflow_client(settings)
    now = int(time.time() * 1000)
    metrics = [Metric(f"best_{k}", float(v), now, 0) for k, v in result.best_validation_metrics.items() if _finite(v)]
    metrics += [
        Metric("num_trials", float(result.num_trials), now, 0),
        Metric("num_errored_trials", float(result.num_errored), now, 0),
    ]
    tags = [
        RunTag("mlops.best_trial_id", result.best_trial_id),
        RunTag("mlops.best_checkpoint_uri", result.best_checkpoint_uri),
        RunTag("mlops.best_params", json.dumps(result.best_params, sort_keys=True)),
    ]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_dict(run_id, result.to_dict(), SEARCH_RESULT_FILE)
    client.set_terminated(run_id, "FINISHED")


def _set_parent_status(run_id: str, status: str, settings: Settings) -> None:
    try:
        _mlflow_client(settings).set_terminated(run_id, status)
    except Exception:
        log.warning("could not mark MLflow run %s %s", run_id, status, exc_info=True)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def load_search_result(source: str | Path | Mapping[str, Any]) -> SearchResult:
    """A SearchResult from a dict, a JSON file, an s3:// URI of one, or a JSON string."""
    if isinstance(source, SearchResult):
        return source
    if isinstance(source, Mapping):
        return SearchResult.from_dict(source)
    text = str(source)
    if text.startswith(("s3://", "s3a://")):
        return SearchResult.from_dict(read_json(S3Uri.parse(text)))
    if text.lstrip().startswith("{"):
        return SearchResult.from_dict(json.loads(text))
    return SearchResult.from_dict(json.loads(Path(text).read_text()))


def stored_search_result(dataset: str, snapshot_id: str, run_name: str) -> SearchResult:
    uri = tune_uri(dataset, snapshot_id, sanitize_run_name(run_name)).join(SEARCH_RESULT_FILE)
    if not exists(uri):
        raise LookupError(f"{uri}: no completed search (run `python -m ml tune` first)")
    return SearchResult.from_dict(read_json(uri))


def search_config_from_args(args: argparse.Namespace) -> SearchConfig:
    return SearchConfig.create(
        dataset=args.dataset,
        snapshot_id=args.snapshot,
        run_name=args.run_name,
        search_space=args.search_space,
        features_uri=args.features_uri,
        num_samples=args.num_samples,
        max_concurrent_trials=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        max_epochs=args.max_epochs,
        patience=args.patience,
        metric=args.metric,
        mode=args.mode,
        seed=args.seed,
        dag_run_id=args.dag_run_id,
        track_mlflow=not args.no_mlflow,
        publish_metrics=not args.no_kafka,
    )


def _tune_command(args: argparse.Namespace) -> dict[str, Any]:
    return run_search(search_config_from_args(args)).to_dict()


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="hyper-parameter search with Ray Tune (resumes a run of the same name)",
        description="Search the model space on a snapshot's features; prints the SearchResult JSON. Re-running with "
        "the same --run-name resumes an interrupted search or returns the completed one.",
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--snapshot", required=True, help="snapshot id (the features' folder)")
    parser.add_argument("--run-name", required=True, help="resume key, e.g. the DAG run id (sanitised)")
    parser.add_argument(
        "--search-space",
        help="a JSON/YAML file, an s3:// URI, inline JSON, or a shipped space's name "
        "(default, small); default: default",
    )
    parser.add_argument("--features-uri", help="default s3://LAKE/datasets/DATASET/features/SNAPSHOT")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--metric", help=f"validation metric to optimise (default {DEFAULT_METRIC})")
    parser.add_argument("--mode", choices=("min", "max"), help="default: inferred from the metric")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dag-run-id")
    parser.add_argument("--no-mlflow", action="store_true", help="do not track in MLflow")
    parser.add_argument("--no-kafka", action="store_true", help="do not publish epoch metrics to Kafka")
    parser.set_defaults(handler=_tune_command)
