"""ml.tune.search without Ray or services: choosing the best trial from fake Tune results (never an errored one),
the restored search's callbacks replaced by fresh ones, which callbacks a search makes, and run_search's control
flow with Tune, Ray and MLflow replaced by fakes (moto's S3 for the features, a local folder for the search's signed
storage): a completed search returns its stored result without building a Tuner, a new one starts, an interrupted one
resumes, a failing one marks its parent run, and none runs without a state signing key."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyarrow import fs

import ml.data
import ml.tune.search as search
import ml.tune.tracking as tracking
from ml.settings import KafkaSettings, RaySettings
from ml.storage import DataError
from ml.tune.callbacks import (
    KafkaMetricsCallback,
    MetricsSubject,
    MlflowTrialCallback,
    PipelineCallback,
    ProgressLogCallback,
)
from ml.tune.config import SEARCH_MANIFEST_FILE, SEARCH_RESULT_FILE, SearchConfig, SearchIncomplete, SearchResult
from ml.tune.parallel import ClusterResources
from ml.tune.signing import signed_filesystem
from tests.support.synthetic_features import IN_MEMORY_S3, in_memory_s3, make_spec
from tests.unit.ml.tune.support import (
    EXPERIMENT,
    FEATURES,
    KAFKA,
    LAKE,
    MLFLOW,
    RAY,
    FakeResultGrid,
    fake_trial,
    make_config,
)


def test_trial_names_are_short_and_stable() -> None:
    assert search.trial_name(SimpleNamespace(trial_id="ab12cd34")) == "trial_ab12cd34"


# -- callbacks: made for the current settings, replaced on restore


def test_a_search_makes_the_callbacks_its_settings_ask_for() -> None:
    config = make_config()
    (progress,) = search._pipeline_callbacks(config, "classification", None, None, None, None)
    assert isinstance(progress, ProgressLogCallback)
    assert (progress.run_name, progress.metric, progress.mode, progress.num_samples) == ("run-1", "val_loss", "min", 3)
    # MLflow needs the parent run it nests under.
    assert len(search._pipeline_callbacks(config, "classification", MLFLOW, None, None, None)) == 1
    made = search._pipeline_callbacks(config, "classification", MLFLOW, KAFKA, "parent-1", "7")
    assert [type(c) for c in made] == [ProgressLogCallback, MlflowTrialCallback, KafkaMetricsCallback]
    assert (made[1].experiment_id, made[1].parent_run_id, made[1].mlflow) == ("7", "parent-1", MLFLOW)
    assert (made[2].run_name, made[2].kafka, made[2].dag_run_id) == ("run-1", KAFKA, "manual__1")
    assert made[2].subject == MetricsSubject("d", "snap", "classification", "d-classification")
    regression = search._pipeline_callbacks(config, "regression", None, KAFKA, None, None)
    assert regression[-1].subject.model_name == "d-regression"


class CallersCallback:
    """A callback a caller added (not one of the search's own)."""


class FakeTuner:
    def __init__(self, callbacks: list[Any] | None) -> None:
        self.run_config = SimpleNamespace(callbacks=callbacks)
        self._local_tuner = SimpleNamespace(get_run_config=lambda: self.run_config)


def test_a_restored_search_gets_fresh_callbacks_and_keeps_the_callers() -> None:
    old_kafka = KafkaMetricsCallback("run-1", KafkaSettings("old:9092"))
    old_mlflow = MlflowTrialCallback("1", "old-parent", "run-1", None)
    callers = CallersCallback()
    tuner = FakeTuner([ProgressLogCallback("run-1", "val_loss", "min", 3), old_mlflow, old_kafka, callers])
    fresh = search._pipeline_callbacks(make_config(), "classification", MLFLOW, KAFKA, "parent-2", "7")
    search._replace_pipeline_callbacks(tuner, fresh)
    assert tuner.run_config.callbacks == [*fresh, callers]
    assert not any(c in tuner.run_config.callbacks for c in (old_kafka, old_mlflow))

    empty = FakeTuner(None)  # a search started without callbacks
    search._replace_pipeline_callbacks(empty, fresh)
    assert empty.run_config.callbacks == fresh


def test_a_restored_search_gives_the_kafka_password_again() -> None:
    """Tune's state holds the metrics callback without its password (ml.tune.callbacks); the fresh one has it."""
    import pickle

    password = uuid.uuid4().hex
    login = KafkaSettings("kafka.invalid:9092", username="pipeline", password=password)
    restored = pickle.loads(pickle.dumps(KafkaMetricsCallback("run-1", login)))
    assert restored.kafka.password is None
    tuner = FakeTuner([restored])
    search._replace_pipeline_callbacks(
        tuner, search._pipeline_callbacks(make_config(), "classification", None, login, None, None)
    )
    [kafka_callback] = [c for c in tuner.run_config.callbacks if isinstance(c, KafkaMetricsCallback)]
    assert kafka_callback.kafka == login and kafka_callback.kafka.password == password


def test_in_ray_client_mode_the_recorded_callbacks_stay(caplog: pytest.LogCaptureFixture) -> None:
    tuner = SimpleNamespace(_local_tuner=None)
    with caplog.at_level(logging.WARNING, "ml.tune.search"):
        search._replace_pipeline_callbacks(tuner, [ProgressLogCallback("r", "val_loss", "min", 1)])
    assert "Ray Client mode" in caplog.text


def test_the_pipeline_callback_marker_is_what_is_replaced() -> None:
    class Custom(PipelineCallback):
        pass

    tuner = FakeTuner([Custom(), CallersCallback()])
    search._replace_pipeline_callbacks(tuner, [])
    assert [type(c) for c in tuner.run_config.callbacks] == [CallersCallback]


# -- run_search's control flow, with Tune, Ray and MLflow faked


class Recorder:
    """Stands in for everything run_search reaches outside the lake; records what it was asked."""

    def __init__(self, storage: Path) -> None:
        self.storage = fs.SubTreeFileSystem(str(storage), fs.LocalFileSystem())  # stands in for S3 (bucket/key)
        self.calls: list[tuple[Any, ...]] = []
        self.restorable = False
        self.grid: Any = FakeResultGrid([fake_trial("a", [0.5]), fake_trial("b", [0.4]), fake_trial("c", [0.6])])
        self.fit_error: BaseException | None = None
        self.cluster = ClusterResources({"CPU": 8.0}, ({"CPU": 8.0},))  # what a fake Ray cluster has
        self.cluster_reads = 0
        self.at_once: int | None = None
        self.default_loggers_off: str | None = None

    def cluster_resources(self) -> ClusterResources:
        self.cluster_reads += 1
        return self.cluster

    def fit(self, kind: str, callbacks: list[Any], at_once: int | None = None) -> Any:
        self.calls.append((kind, [type(c).__name__ for c in callbacks]))
        self.at_once = at_once
        self.default_loggers_off = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
        if self.fit_error is not None:
            raise self.fit_error
        return self.grid

    def write(self, name: str, value: Any) -> None:
        """Write a JSON file of the search's folder as the search does: signed."""
        self.storage.create_dir(_path(""), recursive=True)
        with signed_filesystem(self.storage, RAY.state_signing_key).open_output_stream(_path(name)) as stream:
            stream.write(json.dumps(value).encode())

    def read(self, name: str) -> Any:
        """A JSON file of the search's folder, read as the search reads it: checked against its signature."""
        with signed_filesystem(self.storage, RAY.state_signing_key).open_input_stream(_path(name)) as stream:
            return json.loads(stream.readall())

    def exists(self, name: str) -> bool:
        return bool(self.storage.get_file_info(_path(name)).type != fs.FileType.NotFound)


def _path(name: str) -> str:
    return f"{EXPERIMENT.bucket}/{EXPERIMENT.key}/{name}"


@pytest.fixture
def lake() -> Iterator[Any]:
    with in_memory_s3("lake") as client:
        spec = make_spec("d", "snap", "regression", 1)
        key = FEATURES.join("feature_spec.json")
        client.put_object(Bucket=key.bucket, Key=key.key, Body=spec.to_json().encode())
        yield client


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Recorder:
    from ray import tune

    recorder = Recorder(tmp_path)

    def no_tuner(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a Tuner was built")

    monkeypatch.setattr(tune, "Tuner", no_tuner)
    monkeypatch.setattr(search, "keyless_arrow_filesystem", lambda s3: recorder.storage)
    monkeypatch.setattr(search, "arrow_filesystem", lambda s3: "filesystem")
    monkeypatch.setattr(search, "restorable", lambda path, filesystem: recorder.restorable)
    monkeypatch.setattr(search, "route_library_logs", lambda: None)

    def ensure_ray(ray: RaySettings, s3: Any, *, state_api: bool) -> bool:
        recorder.calls.append(("ensure_ray", ray, s3))
        return False

    monkeypatch.setattr(search, "ensure_ray", ensure_ray)
    monkeypatch.setattr(search, "cluster_resources", recorder.cluster_resources)
    monkeypatch.setattr(ml.data, "training_data", lambda features, spec, filesystem, **options: ("data", str(features)))
    monkeypatch.setattr(search, "_start", lambda trials, cbs, at_once: recorder.fit("start", cbs, at_once))
    monkeypatch.setattr(search, "_resume", lambda trials, cbs: recorder.fit("resume", cbs))
    monkeypatch.setattr(search, "mlflow_client", lambda mlflow: "mlflow-client")
    monkeypatch.setattr(
        tracking,
        "start_parent_run",
        lambda client, *args: recorder.calls.append(("parent", client)) or ("7", "parent-1"),
    )
    monkeypatch.setattr(
        tracking, "finish_parent_run", lambda client, run_id, result: recorder.calls.append(("finish", run_id))
    )
    monkeypatch.setattr(
        tracking, "set_parent_status", lambda client, run_id, status: recorder.calls.append(("status", run_id, status))
    )
    return recorder


LOGGERS = ["ResultCsvLogger", "ResultJsonLogger"]  # Tune's result files, without TensorBoard's


def _run(config: SearchConfig | None = None, **kwargs: Any) -> SearchResult:
    return search.run_search(config or make_config(), s3=IN_MEMORY_S3, lake=LAKE, ray=RAY, **kwargs)


def test_a_new_search_starts_records_its_manifest_and_stores_its_result(lake: Any, fakes: Recorder) -> None:
    extra = CallersCallback()
    result = _run(mlflow=MLFLOW, kafka=KAFKA, callbacks=[extra])

    assert fakes.calls[0] == ("ensure_ray", RAY, IN_MEMORY_S3)  # a trial Ray cannot place fails before a parent run
    assert fakes.calls[1] == ("parent", "mlflow-client")
    assert fakes.calls[2] == (
        "start",
        [
            "FitPhasesCallback",
            "ProgressLogCallback",
            "MlflowTrialCallback",
            "KafkaMetricsCallback",
            "ResultCsvLogger",
            "ResultJsonLogger",
            "CallersCallback",
        ],
    )
    assert fakes.calls[3] == ("finish", "parent-1")
    assert (result.best_trial_id, result.mlflow_parent_run_id, result.mlflow_experiment_id) == ("b", "parent-1", "7")
    assert result.wall_time_s is not None and result.wall_time_s >= 0
    assert result.phases_s is not None
    assert {"read_spec", "start_ray", "mlflow_parent_run", "read_splits", "summarise", "other"} <= set(result.phases_s)
    assert fakes.read(SEARCH_RESULT_FILE) == result.to_dict()
    assert fakes.read(SEARCH_MANIFEST_FILE) == make_config().manifest("regression")
    # Tune's TensorBoard logger is off for the fit (ml.tune.callbacks.DEFAULT_LOGGERS_OFF), and only for the fit.
    assert fakes.default_loggers_off == "1"
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ


@pytest.mark.parametrize("workers,at_once", [(1, 3), (2, 2), (4, 1)])
def test_the_cluster_is_read_once_for_the_trials_resources_and_how_many_run_at_once(
    lake: Any, fakes: Recorder, workers: int, at_once: int
) -> None:
    fakes.cluster = ClusterResources({"CPU": 4.0}, ({"CPU": 2.0}, {"CPU": 2.0}))
    fakes.fit_error = RuntimeError("stopped after the start")  # the trials' results are not the point here
    with pytest.raises(RuntimeError, match="stopped after the start"):
        _run(make_config(workers_per_trial=workers, max_concurrent_trials=3))
    assert fakes.cluster_reads == 1
    assert fakes.at_once == at_once  # 4 CPUs: 2 groups of 2 workers, 1 of 4; single-process trials as asked


def test_a_trial_the_cluster_cannot_place_fails_before_anything_is_recorded(lake: Any, fakes: Recorder) -> None:
    fakes.cluster = ClusterResources({"CPU": 4.0}, ({"CPU": 2.0}, {"CPU": 2.0}))
    with pytest.raises(ValueError, match="no node has 3 CPU for one worker"):
        _run(make_config(cpus_per_trial=3.0), mlflow=MLFLOW)
    assert [call[0] for call in fakes.calls] == ["ensure_ray"] and not fakes.exists(SEARCH_MANIFEST_FILE)


def test_a_completed_search_returns_its_stored_result_without_running(lake: Any, fakes: Recorder) -> None:
    first = _run()
    fakes.calls.clear()
    fakes.restorable = True  # Tune's state is there too; the stored result comes first
    assert _run(mlflow=MLFLOW, kafka=KAFKA).to_dict() == first.to_dict()
    assert fakes.calls == []  # no parent run, no Ray, no Tuner


@pytest.mark.parametrize(
    "change,field",
    [({"num_samples": 5}, "num_samples"), ({"search_space": {"lr": 0.01}}, "search_space_hash"), ({"seed": 9}, "seed")],
)
def test_a_completed_search_refuses_other_settings(lake: Any, fakes: Recorder, change: dict, field: str) -> None:
    _run()
    with pytest.raises(ValueError, match=rf"run 'run-1' was started with other settings.*{field}"):
        _run(make_config(**change))


def test_an_interrupted_search_resumes_with_fresh_callbacks_only(lake: Any, fakes: Recorder) -> None:
    fakes.write(SEARCH_MANIFEST_FILE, make_config().manifest("regression"))
    fakes.restorable = True
    result = _run(kafka=KAFKA, callbacks=[CallersCallback()])  # new extra callbacks are not added on resume
    assert ("resume", ["FitPhasesCallback", "ProgressLogCallback", "KafkaMetricsCallback", *LOGGERS]) in fakes.calls
    assert result.mlflow_parent_run_id is None and fakes.exists(SEARCH_RESULT_FILE)


def test_an_interrupted_search_refuses_other_settings(lake: Any, fakes: Recorder) -> None:
    fakes.write(SEARCH_MANIFEST_FILE, make_config().manifest("regression"))
    fakes.restorable = True
    with pytest.raises(ValueError, match="max_epochs"):
        _run(make_config(max_epochs=4))
    assert [call[0] for call in fakes.calls] == ["ensure_ray"]  # no parent run, no Tuner
    with pytest.raises(ValueError, match="workers_per_trial"):
        _run(make_config(workers_per_trial=2))


def test_a_search_recorded_before_data_parallel_trials_resumes_with_one_worker(lake: Any, fakes: Recorder) -> None:
    manifest = make_config().manifest("regression")
    del manifest["workers_per_trial"], manifest["gpus_per_worker"]
    fakes.write(SEARCH_MANIFEST_FILE, manifest)
    fakes.restorable = True
    _run()
    assert ("resume", ["FitPhasesCallback", "ProgressLogCallback", *LOGGERS]) in fakes.calls


def test_an_interruption_marks_the_parent_run_killed(lake: Any, fakes: Recorder) -> None:
    fakes.grid = FakeResultGrid([fake_trial("a", [0.5])], unfinished=0)  # 1 of 3 trials: interrupted
    with pytest.raises(SearchIncomplete):
        _run(mlflow=MLFLOW)
    assert fakes.calls[-1] == ("status", "parent-1", "KILLED")
    assert not fakes.exists(SEARCH_RESULT_FILE)


def test_a_failure_marks_the_parent_run_failed(lake: Any, fakes: Recorder) -> None:
    fakes.fit_error = RuntimeError("Tune broke")
    with pytest.raises(RuntimeError, match="Tune broke"):
        _run(mlflow=MLFLOW)
    assert fakes.calls[-1] == ("status", "parent-1", "FAILED")


def test_ray_started_by_the_search_is_shut_down(lake: Any, fakes: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    shutdowns: list[bool] = []
    monkeypatch.setattr(search, "ensure_ray", lambda ray_settings, s3, state_api: True)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(True))
    fakes.fit_error = RuntimeError("Tune broke")
    with pytest.raises(RuntimeError):
        _run()
    fakes.fit_error = None
    _run()
    assert shutdowns == [True, True]


def test_features_without_a_spec_fail_clearly(fakes: Recorder) -> None:
    with in_memory_s3("lake"), pytest.raises(DataError, match="no feature spec"):
        _run(make_config(dataset="missing"))
    assert fakes.calls == []


def test_no_search_runs_without_a_state_signing_key(lake: Any, fakes: Recorder) -> None:
    with pytest.raises(ValueError, match="no Tune state signing key configured"):
        search.run_search(make_config(), s3=IN_MEMORY_S3, lake=LAKE, ray=RaySettings(), mlflow=MLFLOW)
    assert fakes.calls == [] and not fakes.exists(SEARCH_MANIFEST_FILE)  # no parent run, no Ray, nothing written


def test_the_search_folder_is_signed_and_an_unsigned_result_is_refused(lake: Any, fakes: Recorder) -> None:
    from ml.tune.signing import SIGNATURE_SUFFIX, TamperedTuneState

    _run()
    for name in (SEARCH_MANIFEST_FILE, SEARCH_RESULT_FILE):
        assert fakes.exists(name + SIGNATURE_SUFFIX), name
    # A result planted by something without the key: refused, never returned as the search's.
    planted = {**fakes.read(SEARCH_RESULT_FILE), "best_checkpoint_uri": "s3://elsewhere/x"}
    with fakes.storage.open_output_stream(_path(SEARCH_RESULT_FILE)) as stream:
        stream.write(json.dumps(planted).encode())
    fakes.calls.clear()
    with pytest.raises(TamperedTuneState, match=f"{SEARCH_RESULT_FILE}: its content does not match its signature"):
        _run()
    assert fakes.calls == []
