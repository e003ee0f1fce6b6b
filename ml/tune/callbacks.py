"""Ray Tune callbacks of a search: per-epoch metrics to Kafka, nested MLflow runs per trial, progress in the log (the
fit's phases and Tune's result files: ml.tune.fit_callbacks).

They run in the Tune driver. Tune pickles them into the experiment state (`tuner.pkl`) and brings them back on
restore, so they hold configuration only (endpoints, ids: no secrets; the Kafka and MLflow passwords are left out of
the pickle) and make their clients in `setup()`; a restored search replaces them with fresh ones for the current
settings (ml.tune.search), which give the passwords again. `PipelineCallback` marks them for that.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ray import tune

from ml.events.envelope import training_metrics_key
from ml.experiments import TRIAL_RUN_KIND, quoted
from ml.settings import KafkaSettings, MlflowSettings
from ml.topics import TRAINING_METRICS, TRAINING_METRICS_V2
from ml.train import trial_params

log = logging.getLogger(__name__)

PublisherFactory = Callable[[KafkaSettings, "str | None"], Any]


class PipelineCallback(tune.Callback):
    """The search's own callbacks (replaced on restore), as opposed to callbacks a caller adds."""


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


def default_publisher_factory(kafka: KafkaSettings, dag_run_id: str | None) -> Any:
    """The project's non-blocking Kafka publisher, keeping each message until it is delivered: a search publishes a
    few a second, so a broker outage of any length fits the queue, and every trial-epoch gets through once the broker
    is back (or is counted as undelivered when the search ends first: `close_timeout_s`)."""
    from ml.events.publisher import EventPublisher

    return EventPublisher(kafka, dag_run_id=dag_run_id, client_id="mlops-training", delivery_timeout_ms=0)


@dataclass(frozen=True)
class MetricsSubject:
    """What a search's metrics are about: added to every training_metrics.v2 payload."""

    dataset: str
    snapshot_id: str
    task: str
    model_name: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class KafkaMetricsCallback(PipelineCallback):
    """Publishes each trial-epoch result (key `run_name:trial_id:epoch`) to ml.topics.TRAINING_METRICS_V2, with its
    `subject`, and to the older TRAINING_METRICS (v1, without it) for existing consumers. A callback restored from the
    state of a search started before v2 has no subject and publishes v1 only."""

    close_timeout_s = 30.0  # how long the end of the search waits for buffered messages (a broker that is down)

    def __init__(
        self,
        run_name: str,
        kafka: KafkaSettings | None,
        *,
        dag_run_id: str | None = None,
        subject: MetricsSubject | None = None,
        publisher_factory: PublisherFactory | None = None,
    ) -> None:
        self.run_name = run_name
        self.dag_run_id = dag_run_id
        self.subject = subject
        self.kafka = kafka
        self.publisher_factory = publisher_factory
        self._publisher: Any = None
        self.published = 0

    def __getstate__(self) -> dict[str, Any]:
        # The Kafka password never goes into Tune's state (tuner.pkl in S3): where and as whom, but not the secret.
        state = self.__dict__.copy()
        state["_publisher"] = None
        state["published"] = 0
        if state.get("kafka") is not None:
            state["kafka"] = state["kafka"].without_password()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # State pickled by the single-module ml/tune.py named the servers `bootstrap_servers` (None: the environment).
        if "kafka" not in state:
            servers = state.pop("bootstrap_servers", None)
            state["kafka"] = KafkaSettings(servers) if servers else None
        state.setdefault("subject", None)  # pickled before training_metrics.v2
        self.__dict__.update(state)

    def setup(self, *args: Any, **info: Any) -> None:
        self._ensure_publisher()

    def _ensure_publisher(self) -> Any:
        if self._publisher is None:
            if self.kafka is None:
                log.warning("search %s: no Kafka settings recorded; training metrics are not published", self.run_name)
                self._publisher = _NullPublisher()
            elif self.kafka.uses_sasl and not self.kafka.password:
                # An unpickled copy that no one gave the password again (ml.tune.search replaces restored callbacks
                # with fresh ones; Ray Client mode keeps the pickled ones, see _replace_pipeline_callbacks).
                log.warning(
                    "search %s: the Kafka password of user %r is not in this process (Tune's state never holds it); "
                    "training metrics are not published",
                    self.run_name,
                    self.kafka.username,
                )
                self._publisher = _NullPublisher()
            else:
                factory = self.publisher_factory or default_publisher_factory
                self._publisher = factory(self.kafka, self.dag_run_id)
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
        return payload, training_metrics_key(self.run_name, str(trial.trial_id), epoch)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        payload, key = self.message(trial, result)
        try:
            publisher = self._ensure_publisher()
            publisher.publish(TRAINING_METRICS, payload, key)  # never blocks: buffered
            if self.subject is not None:
                publisher.publish(TRAINING_METRICS_V2, {**payload, **self.subject.to_dict()}, key)
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


class MlflowTrialCallback(PipelineCallback):
    """One nested MLflow run per trial (tag mlflow.parentRunId), params at start, metrics each epoch (step = epoch).

    Every MLflow call runs, in order, on one background thread: Tune's driver loop waits for its callbacks, and a
    trial's next epoch waits for the driver, so synchronous HTTP calls here would slow every trial (B2 measured
    ~50 ms per epoch). `on_experiment_end` drains the queue. On resume, a trial's existing child run is found by its
    tags and continued, so a resumed trial keeps one run.
    """

    def __init__(self, experiment_id: str, parent_run_id: str, run_name: str, mlflow: MlflowSettings | None) -> None:
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.run_name = run_name
        self.mlflow = mlflow
        self._client: Any = None
        self._runs: dict[str, str] = {}  # trial id -> run id; used on the worker thread only
        self._queue: Any = None
        self._worker: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # As for Kafka: the MLflow password never goes into Tune's state.
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _queue=None, _worker=None)
        if state.get("mlflow") is not None:
            state["mlflow"] = state["mlflow"].without_password()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # State pickled by the single-module ml/tune.py named the server `tracking_uri` (None: the environment).
        if "mlflow" not in state:
            uri = state.pop("tracking_uri", None)
            state["mlflow"] = MlflowSettings(uri) if uri else None
        self.__dict__.update(state)

    def setup(self, *args: Any, **info: Any) -> None:
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
            from ml.clients import mlflow_client

            if self.mlflow is None:
                raise RuntimeError(f"search {self.run_name}: no MLflow settings recorded for the trial runs")
            self._client = mlflow_client(self.mlflow)
        return self._client

    def child_run_id(self, trial_id: str, params: Mapping[str, Any]) -> str:
        """The trial's child run: found (a resumed trial) or created with its params. Worker thread only."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        client = self._get_client()
        found = client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = {quoted(self.parent_run_id)} "
                f"AND tags.`mlops.trial_id` = {quoted(trial_id)}"
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
                    "mlops.kind": TRIAL_RUN_KIND,
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


class ProgressLogCallback(PipelineCallback):
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
