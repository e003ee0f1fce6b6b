"""ml.tune.callbacks with fakes for Kafka's publisher and MLflow's client: what each callback sends for a trial's
results, that a tracking or streaming failure never fails the search, and what survives Tune's pickling (settings,
never clients), including state pickled by the single-module ml/tune.py."""

from __future__ import annotations

import logging
import math
import pickle
import threading
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from ml.events.envelope import EventValidationError, make_envelope, validate_envelope
from ml.experiments import TRIAL_RUN_KIND
from ml.settings import KafkaSettings, MlflowSettings
from ml.topics import TRAINING_METRICS, TRAINING_METRICS_V2
from ml.tune.callbacks import (
    KafkaMetricsCallback,
    MetricsSubject,
    MlflowTrialCallback,
    PipelineCallback,
    ProgressLogCallback,
    result_epoch,
    result_metrics,
)

KAFKA = KafkaSettings("kafka.invalid:9092")
MLFLOW = MlflowSettings("http://mlflow.invalid:5000")


def _trial(trial_id: str = "abc123", status: str = "RUNNING", **config: Any) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=trial_id,
        status=status,
        config={"lr": 0.01, "hidden_size": 32, "metric": "val_loss", "max_epochs": 3, **config},
        last_result={},
        metric_analysis={},
    )


def _result(epoch: int, **metrics: Any) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": 0.5,
        "val_loss": 0.25,
        "pid": 123,
        "time_total_s": 1.0,
        "training_iteration": epoch,
        "done": False,
        **metrics,
    }


# -- result helpers


def test_result_metrics_keeps_our_metrics_only() -> None:
    assert result_metrics(
        {
            "train_loss": 1,
            "val_rmse": 2.5,
            "val_r2": float("-inf"),
            "epoch_time_s": 0.1,
            "time_total_s": 3.0,
            "pid": 1,
            "val_flag": True,
            "val_note": "text",
            "hostname": "h",
        }
    ) == {"train_loss": 1.0, "val_rmse": 2.5, "val_r2": None, "epoch_time_s": 0.1}


def test_result_epoch_prefers_our_epoch() -> None:
    assert result_epoch({"epoch": 3, "training_iteration": 7}) == 3
    assert result_epoch({"training_iteration": 7}) == 7
    assert result_epoch({}) == 0


def test_the_pipeline_callbacks_are_marked() -> None:
    for cls in (KafkaMetricsCallback, MlflowTrialCallback, ProgressLogCallback):
        assert issubclass(cls, PipelineCallback)


# -- Kafka


class FakePublisher:
    def __init__(self, fail_publish: bool = False, fail_close: bool = False) -> None:
        self.messages: list[tuple[str, dict, str]] = []
        self.closed = False
        self.fail_publish, self.fail_close = fail_publish, fail_close

    def publish(self, topic: Any, payload: dict, key: str) -> None:
        if self.fail_publish:
            raise RuntimeError("buffer full")
        self.messages.append((topic.name, payload, key))

    def close(self, timeout_s: float = 30.0) -> dict:
        if self.fail_close:
            raise RuntimeError("broker gone")
        self.closed = True
        return {"sent": len(self.messages)}


def test_kafka_metrics_callback_publishes_one_message_per_trial_epoch() -> None:
    publisher = FakePublisher()
    made: list[tuple[KafkaSettings, str | None]] = []

    def factory(kafka: KafkaSettings, dag_run_id: str | None) -> FakePublisher:
        made.append((kafka, dag_run_id))
        return publisher

    callback = KafkaMetricsCallback("run-1", KAFKA, dag_run_id="dag-1", publisher_factory=factory)
    callback.setup()
    trial = _trial()
    for epoch in (1, 2):
        result = _result(epoch, val_loss=float("nan"), val_accuracy=0.9)
        callback.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result=result)
    callback.on_experiment_end(trials=[trial])

    assert made == [(KAFKA, "dag-1")]  # one publisher, for the current settings
    assert publisher.closed and callback.published == 2
    assert [key for _, _, key in publisher.messages] == ["run-1:abc123:1", "run-1:abc123:2"]
    topic, payload, _ = publisher.messages[0]
    assert topic == TRAINING_METRICS.name
    assert payload == {
        "run_name": "run-1",
        "trial_id": "abc123",
        "epoch": 1,
        "metrics": {"train_loss": 0.5, "val_loss": None, "val_accuracy": 0.9},
        "params": {"lr": 0.01, "hidden_size": 32},
    }


def test_kafka_payload_matches_the_topic_schema() -> None:
    callback = KafkaMetricsCallback("run-1", KAFKA)
    trial = SimpleNamespace(trial_id="abc123", config={"lr": 0.01, "norm": "batch"})
    payload, key = callback.message(trial, {"epoch": 2, "val_loss": 0.3, "val_r2": float("inf")})
    validate_envelope(make_envelope(TRAINING_METRICS, payload, "dag-1"), TRAINING_METRICS)
    assert key == "run-1:abc123:2"


SUBJECT = MetricsSubject("cars", "snap-1", "regression", "cars-regression")


def test_with_a_subject_each_trial_epoch_also_goes_to_v2_saying_what_it_is_about() -> None:
    publisher = FakePublisher()
    callback = KafkaMetricsCallback("run-1", KAFKA, subject=SUBJECT, publisher_factory=lambda kafka, dag: publisher)
    trial = _trial()
    for epoch in (1, 2):
        callback.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result=_result(epoch, val_loss=0.4))
    assert callback.published == 2  # trial-epochs, not messages
    assert [(topic, key) for topic, _, key in publisher.messages] == [
        (TRAINING_METRICS.name, "run-1:abc123:1"),
        (TRAINING_METRICS_V2.name, "run-1:abc123:1"),
        (TRAINING_METRICS.name, "run-1:abc123:2"),
        (TRAINING_METRICS_V2.name, "run-1:abc123:2"),
    ]
    (_, v1, _), (_, v2, _) = publisher.messages[:2]
    assert v2 == {
        **v1,
        "dataset": "cars",
        "snapshot_id": "snap-1",
        "task": "regression",
        "model_name": "cars-regression",
    }
    validate_envelope(make_envelope(TRAINING_METRICS_V2, v2, "dag-1"), TRAINING_METRICS_V2)
    with pytest.raises(EventValidationError):  # v1 stays closed: the subject would break its strict consumers
        validate_envelope(make_envelope(TRAINING_METRICS, v2, "dag-1"), TRAINING_METRICS)
    with pytest.raises(EventValidationError):  # and v2 requires it
        validate_envelope(make_envelope(TRAINING_METRICS_V2, v1, "dag-1"), TRAINING_METRICS_V2)


def test_a_callback_pickled_before_v2_has_no_subject_and_publishes_v1_only() -> None:
    old = KafkaMetricsCallback("run-1", KAFKA)
    state = old.__getstate__()
    del state["subject"]  # as in a tuner.pkl written before training_metrics.v2
    restored = KafkaMetricsCallback.__new__(KafkaMetricsCallback)
    restored.__setstate__(state)
    publisher = FakePublisher()
    restored.publisher_factory = lambda kafka, dag: publisher
    trial = _trial()
    restored.on_trial_result(iteration=1, trials=[trial], trial=trial, result=_result(1, val_loss=0.4))
    assert [topic for topic, _, _ in publisher.messages] == [TRAINING_METRICS.name]
    kept = pickle.loads(pickle.dumps(KafkaMetricsCallback("run-1", KAFKA, subject=SUBJECT)))
    assert kept.subject == SUBJECT


def test_a_failing_publisher_never_fails_the_search(caplog: pytest.LogCaptureFixture) -> None:
    publisher = FakePublisher(fail_publish=True, fail_close=True)
    callback = KafkaMetricsCallback("run-1", KAFKA, publisher_factory=lambda kafka, dag: publisher)
    trial = _trial()
    with caplog.at_level(logging.WARNING, "ml.tune.callbacks"):
        callback.on_trial_result(iteration=1, trials=[trial], trial=trial, result=_result(1))
        callback.on_experiment_end(trials=[trial])
    assert callback.published == 0
    assert "could not publish run-1:abc123:1" in caplog.text
    assert "closing the Kafka publisher failed" in caplog.text


def _no_publisher(kafka: KafkaSettings, dag_run_id: str | None) -> Any:
    raise AssertionError("no publisher may be made here")


def _one_epoch(callback: KafkaMetricsCallback, caplog: pytest.LogCaptureFixture) -> str:
    """A search of one trial-epoch through the callback; what it logged."""
    trial = _trial()
    with caplog.at_level(logging.WARNING, "ml.tune.callbacks"):
        callback.setup()
        callback.on_trial_result(iteration=1, trials=[trial], trial=trial, result=_result(1))
        callback.on_experiment_end(trials=[trial])
    return caplog.text


def test_without_kafka_settings_nothing_is_published(caplog: pytest.LogCaptureFixture) -> None:
    callback = KafkaMetricsCallback("run-1", None, publisher_factory=_no_publisher)
    assert "no Kafka settings recorded" in _one_epoch(callback, caplog)


def test_kafka_callback_pickles_its_settings_not_its_publisher() -> None:
    saved = KafkaMetricsCallback("run-1", KAFKA, dag_run_id="dag-1")
    saved._publisher = FakePublisher()  # as after setup()
    saved.published = 7
    restored = pickle.loads(pickle.dumps(saved))
    assert type(restored) is KafkaMetricsCallback
    assert restored._publisher is None and restored.published == 0
    assert (restored.run_name, restored.kafka, restored.dag_run_id) == ("run-1", KAFKA, "dag-1")
    assert saved._publisher is not None  # pickling leaves the live callback alone


def test_the_kafka_password_never_goes_into_tunes_state(caplog: pytest.LogCaptureFixture) -> None:
    """Tune pickles its callbacks into tuner.pkl in S3: where and as whom, never the password. A copy brought back
    publishes nothing (the search gives restored searches fresh callbacks with the password: test_search.py)."""
    password = uuid.uuid4().hex
    login = KafkaSettings("kafka.invalid:9092", username="pipeline", password=password)
    saved = KafkaMetricsCallback("run-1", login, dag_run_id="dag-1")
    pickled = pickle.dumps(saved)
    assert password.encode() not in pickled
    restored = pickle.loads(pickled)
    assert restored.kafka == login.without_password() and saved.kafka == login, "the live callback keeps it"

    restored.publisher_factory = _no_publisher
    assert "the Kafka password of user 'pipeline' is not in this process" in _one_epoch(restored, caplog)


def test_the_mlflow_password_never_goes_into_tunes_state() -> None:
    password = uuid.uuid4().hex
    login = MlflowSettings("http://mlflow.invalid:5000", "pipeline", password)
    saved = MlflowTrialCallback("experiment-1", "parent-1", "run-1", login)
    pickled = pickle.dumps(saved)
    assert password.encode() not in pickled
    restored = pickle.loads(pickled)
    assert restored.mlflow == login.without_password() and saved.mlflow == login, "the live callback keeps it"


def _legacy(cls: type, state: dict[str, Any]) -> Any:
    """An object as the single-module ml/tune.py pickled it: its attributes without today's settings field."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return pickle.loads(pickle.dumps(obj))


def test_legacy_kafka_state_migrates_its_servers() -> None:
    legacy = {"run_name": "r", "dag_run_id": "d", "publisher_factory": None, "_publisher": None, "published": 0}
    migrated = _legacy(KafkaMetricsCallback, {**legacy, "bootstrap_servers": "old-host:9092"})
    assert migrated.kafka == KafkaSettings("old-host:9092") and not hasattr(migrated, "bootstrap_servers")
    # None meant "the environment": today there is no setting to fall back on, so nothing is recorded.
    assert _legacy(KafkaMetricsCallback, {**legacy, "bootstrap_servers": None}).kafka is None


def test_legacy_mlflow_state_migrates_its_tracking_uri() -> None:
    legacy = {"experiment_id": "1", "parent_run_id": "p", "run_name": "r", "_client": None, "_runs": {}}
    legacy.update(_queue=None, _worker=None)
    migrated = _legacy(MlflowTrialCallback, {**legacy, "tracking_uri": "http://old:5000"})
    assert migrated.mlflow == MlflowSettings("http://old:5000") and not hasattr(migrated, "tracking_uri")
    assert _legacy(MlflowTrialCallback, {**legacy, "tracking_uri": None}).mlflow is None


# -- MLflow


class FakeRun:
    def __init__(self, run_id: str, tags: dict[str, str], status: str = "RUNNING") -> None:
        self.info = SimpleNamespace(run_id=run_id, status=status)
        self.data = SimpleNamespace(tags=dict(tags))


class FakeMlflowClient:
    """The MlflowClient calls the callback makes, recorded; runs found by their mlops.trial_id tag."""

    def __init__(self, existing: list[FakeRun] | None = None, fail: set[str] | None = None) -> None:
        self.runs: dict[str, FakeRun] = {run.info.run_id: run for run in existing or []}
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail or set()
        self.threads: set[str] = set()

    def _call(self, *call: Any) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls.append(call)
        if call[0] in self.fail:
            raise RuntimeError(f"{call[0]} failed")

    def search_runs(self, experiment_ids: list[str], filter_string: str, max_results: int) -> list[FakeRun]:
        self._call("search_runs", tuple(experiment_ids), filter_string)
        return [run for run in self.runs.values() if f"'{run.data.tags['mlops.trial_id']}'" in filter_string]

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> FakeRun:
        self._call("create_run", experiment_id, run_name)
        run = FakeRun(f"run-{len(self.runs) + 1}", tags)
        self.runs[run.info.run_id] = run
        return run

    def update_run(self, run_id: str, status: str) -> None:
        self._call("update_run", run_id, status)
        self.runs[run_id].info.status = status

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        self._call("log_batch", run_id, list(metrics), list(params))

    def set_terminated(self, run_id: str, status: str) -> None:
        self._call("set_terminated", run_id, status)
        self.runs[run_id].info.status = status


@pytest.fixture
def fake_mlflow(monkeypatch: pytest.MonkeyPatch) -> list[FakeMlflowClient]:
    """ml.clients.mlflow_client returns the next fake of the list (first: a fresh one)."""
    import ml.clients

    clients = [FakeMlflowClient()]
    settings_seen: list[MlflowSettings] = []

    def mlflow_client(mlflow: MlflowSettings) -> FakeMlflowClient:
        settings_seen.append(mlflow)
        return clients[0]

    monkeypatch.setattr(ml.clients, "mlflow_client", mlflow_client)
    clients[0].settings_seen = settings_seen  # type: ignore[attr-defined]
    return clients


def test_one_nested_run_per_trial_with_params_metrics_and_status(fake_mlflow: list[FakeMlflowClient]) -> None:
    callback = MlflowTrialCallback("7", "parent-1", "run-1", MLFLOW)
    callback.setup()
    good, bad = _trial("t1", norm="batch"), _trial("t2")
    callback.on_trial_start(iteration=0, trials=[good, bad], trial=good)
    callback.on_trial_start(iteration=0, trials=[good, bad], trial=bad)
    for epoch in (1, 2):
        callback.on_trial_result(iteration=epoch, trials=[good], trial=good, result=_result(epoch, val_r2=math.inf))
    callback.on_trial_result(iteration=1, trials=[bad], trial=bad, result=_result(1))
    callback.on_trial_complete(iteration=3, trials=[good, bad], trial=good)
    callback.on_trial_error(iteration=3, trials=[good, bad], trial=bad)
    callback.on_experiment_end(trials=[good, bad])

    client = fake_mlflow[0]
    assert client.settings_seen == [MLFLOW]  # type: ignore[attr-defined]
    assert client.threads == {"mlflow-trial-runs"}  # never on Tune's driver loop
    runs = {run.data.tags["mlops.trial_id"]: run for run in client.runs.values()}
    assert set(runs) == {"t1", "t2"}
    assert runs["t1"].data.tags == {
        "mlflow.parentRunId": "parent-1",
        "mlops.trial_id": "t1",
        "mlops.run_name": "run-1",
        "mlops.kind": TRIAL_RUN_KIND,
    }
    assert ("create_run", "7", "run-1-t1") in client.calls
    assert (runs["t1"].info.status, runs["t2"].info.status) == ("FINISHED", "FAILED")

    t1 = runs["t1"].info.run_id
    batches = [call for call in client.calls if call[0] == "log_batch" and call[1] == t1]
    params = {p.key: p.value for p in batches[0][3]}
    assert params == {"lr": "0.01", "hidden_size": "32", "norm": "batch"}  # strings as they are, others as JSON
    metric_batches = [call[2] for call in batches if call[2]]
    assert [{m.step for m in batch} for batch in metric_batches] == [{1}, {2}]  # step = epoch
    first = {m.key: m.value for m in metric_batches[0]}
    assert first["train_loss"] == 0.5 and first["val_loss"] == 0.25 and math.isnan(first["val_r2"])
    assert "pid" not in first and "time_total_s" not in first
    assert callback._worker is None  # drained and stopped


def test_a_resumed_trial_continues_its_run(fake_mlflow: list[FakeMlflowClient]) -> None:
    existing = FakeRun("old-run", {"mlops.trial_id": "t1", "mlflow.parentRunId": "parent-1"}, status="KILLED")
    fake_mlflow[0] = FakeMlflowClient([existing])
    callback = MlflowTrialCallback("7", "parent-1", "run-1", MLFLOW)
    trial = _trial("t1")
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    callback.on_trial_result(iteration=1, trials=[trial], trial=trial, result=_result(3))
    callback.on_trial_complete(iteration=1, trials=[trial], trial=trial)
    callback.on_experiment_end(trials=[trial])

    client = fake_mlflow[0]
    assert not [call for call in client.calls if call[0] == "create_run"]
    search = next(call for call in client.calls if call[0] == "search_runs")
    assert search[1] == ("7",)
    assert "tags.`mlflow.parentRunId` = 'parent-1'" in search[2] and "tags.`mlops.trial_id` = 't1'" in search[2]
    assert ("update_run", "old-run", "RUNNING") in client.calls
    assert [call[0] for call in client.calls].count("search_runs") == 1  # found once, then remembered
    assert existing.info.status == "FINISHED"


def test_tracking_failures_are_logged_not_raised(
    fake_mlflow: list[FakeMlflowClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake_mlflow[0] = FakeMlflowClient(fail={"log_batch", "set_terminated"})
    callback = MlflowTrialCallback("7", "parent-1", "run-1", MLFLOW)
    trial = _trial("t1")
    with caplog.at_level(logging.WARNING, "ml.tune.callbacks"):
        callback.on_trial_result(iteration=1, trials=[trial], trial=trial, result=_result(1))
        callback.on_trial_complete(iteration=1, trials=[trial], trial=trial)
        callback.on_experiment_end(trials=[trial])
    assert "MLflow logging (result) failed for trial t1" in caplog.text
    assert "MLflow logging (finished) failed for trial t1" in caplog.text


def test_without_mlflow_settings_the_trial_runs_are_skipped_with_a_warning(
    fake_mlflow: list[FakeMlflowClient], caplog: pytest.LogCaptureFixture
) -> None:
    callback = MlflowTrialCallback("7", "parent-1", "run-1", None)
    trial = _trial("t1")
    with caplog.at_level(logging.WARNING, "ml.tune.callbacks"):
        callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
        callback.on_experiment_end(trials=[trial])
    assert "no MLflow settings recorded" in caplog.text
    assert fake_mlflow[0].calls == []


def test_the_end_of_a_search_without_trials_is_a_no_op() -> None:
    MlflowTrialCallback("7", "parent-1", "run-1", MLFLOW).on_experiment_end(trials=[])


def test_mlflow_callback_pickles_its_settings_not_its_client(fake_mlflow: list[FakeMlflowClient]) -> None:
    callback = MlflowTrialCallback("7", "parent-1", "run-1", MLFLOW)
    trial = _trial("t1")
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    callback._queue.join()  # the worker made the run: client and run ids are set
    assert callback._client is not None and callback._runs
    restored = pickle.loads(pickle.dumps(callback))
    callback.on_experiment_end(trials=[trial])
    assert (restored._client, restored._runs, restored._queue, restored._worker) == (None, {}, None, None)
    assert (restored.experiment_id, restored.parent_run_id, restored.run_name, restored.mlflow) == (
        "7",
        "parent-1",
        "run-1",
        MLFLOW,
    )


# -- progress in the log


def test_progress_log_counts_finished_trials_and_names_the_best(caplog: pytest.LogCaptureFixture) -> None:
    callback = ProgressLogCallback("run-1", "val_loss", "min", 4)
    done = _trial("t1", status="TERMINATED")
    done.metric_analysis = {"val_loss": {"min": 0.4, "max": 0.9}}
    failed = _trial("t2", status="ERROR")
    failed.metric_analysis = {"val_loss": {"min": math.nan}}
    running = _trial("t3")
    running.metric_analysis = {"val_loss": {"min": 0.2}}
    running.last_result = {"epoch": 3, "val_loss": 0.2}
    pending = _trial("t4", status="PENDING")
    with caplog.at_level(logging.INFO, "ml.tune.callbacks"):
        callback.on_trial_complete(iteration=1, trials=[done, failed, running, pending], trial=running)
        running.status = "TERMINATED"  # Tune marks it after its callbacks ran
        callback.on_trial_error(iteration=1, trials=[done, failed, running, pending], trial=pending)
    finished, errored = [r.getMessage() for r in caplog.records]
    assert finished.startswith("[run-1] trial t3 finished after 3 epochs (val_loss=0.2); 3/4 trials done")
    assert finished.endswith("best val_loss so far: 0.2 (trial t3)")
    assert "trial t4 FAILED after None epochs (val_loss=None); 4/4 trials done" in errored


def test_progress_log_best_in_max_mode() -> None:
    callback = ProgressLogCallback("run-1", "val_accuracy", "max", 2)
    low, high = _trial("a"), _trial("b")
    low.metric_analysis = {"val_accuracy": {"max": 0.6}}
    high.metric_analysis = {"val_accuracy": {"max": 0.8}}
    assert callback._best([low, high]) == (0.8, "b")
    assert callback._best([_trial("c")]) == (None, None)
