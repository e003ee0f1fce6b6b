"""ml.tune.tracking with a fake MlflowClient: the search's parent run created with its inputs (or found again when a
search resumes), finished with its results (timestamps from an injected clock), and marked on the way out."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from ml.experiments import PARENT_RUN_KIND, quoted
from ml.tune.config import SEARCH_RESULT_FILE, SearchConfig, SearchResult
from ml.tune.space import validate_search_space
from ml.tune.tracking import find_parent_run, finish_parent_run, set_parent_status, start_parent_run
from tests.support.synthetic_features import make_spec

CONFIG = SearchConfig(
    dataset="penguins", snapshot_id="snap1", run_name="manual__1", search_space={"lr": 0.01}, dag_run_id="manual__1"
)
SPEC = make_spec("penguins", "snap1", "classification", 3)
FEATURES = "s3://lake/datasets/penguins/features/snap1"
EXPERIMENT = "s3://lake/tune/penguins/snap1/manual__1"
MANIFEST = CONFIG.manifest("classification")


class FakeClient:
    def __init__(self, experiment: Any = None, runs: list[Any] | None = None, fail: bool = False) -> None:
        self.experiment = experiment
        self.runs = runs or []
        self.fail = fail
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if self.fail:
                raise RuntimeError(f"{name} failed")
            if name == "get_experiment_by_name":
                return self.experiment
            if name == "create_experiment":
                return "12"
            if name == "search_runs":
                return self.runs
            if name == "create_run":
                return SimpleNamespace(info=SimpleNamespace(run_id="new-run"))
            return None

        return call

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] == name]


def test_a_new_search_creates_its_parent_run_with_its_inputs() -> None:
    client = FakeClient()
    assert start_parent_run(client, CONFIG, SPEC, FEATURES, EXPERIMENT, MANIFEST) == ("12", "new-run")

    assert client.named("create_experiment") == [("create_experiment", ("penguins",), {})]
    ((_, args, kwargs),) = client.named("create_run")
    assert args == ("12",) and kwargs["run_name"] == "manual__1"
    assert kwargs["tags"] == {
        "mlops.kind": PARENT_RUN_KIND,
        "mlops.dataset": "penguins",
        "mlops.snapshot_id": "snap1",
        "mlops.run_name": "manual__1",
        "mlops.dag_run_id": "manual__1",
        "mlops.features_uri": FEATURES,
        "mlops.feature_spec_uri": f"{FEATURES}/feature_spec.json",
        "mlops.tune_uri": EXPERIMENT,
        "mlops.search_space_hash": MANIFEST["search_space_hash"],
        "mlops.task": "classification",
    }
    ((_, (run_id,), kwargs),) = client.named("log_batch")
    params = {p.key: p.value for p in kwargs["params"]}
    assert run_id == "new-run"
    assert params["num_samples"] == str(CONFIG.num_samples) and params["task"] == "classification"
    assert params["num_features"] == str(len(SPEC.feature_columns)) and params["features_uri"] == FEATURES
    assert json.loads(params["classes"]) == SPEC.classes and json.loads(params["rows"]) == SPEC.rows
    assert "dataset" not in params and "run_name" not in params  # tags already
    dicts = {path: value for _, (_, value, path), _ in client.named("log_dict")}
    assert dicts["feature_spec.json"] == json.loads(SPEC.to_json())
    assert dicts["search_space.json"] == validate_search_space(CONFIG.search_space)
    ((_, (input_run,), kwargs),) = client.named("log_inputs")
    (dataset_input,) = kwargs["datasets"]
    assert input_run == "new-run"
    assert dataset_input.dataset.name == "penguins@snap1" and dataset_input.dataset.digest == "snap1"
    assert FEATURES in dataset_input.dataset.source
    assert [(t.key, t.value) for t in dataset_input.tags] == [("mlflow.data.context", "training")]
    schema = json.loads(dataset_input.dataset.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == [*SPEC.feature_columns, "label"]
    assert schema[-1]["type"] == "integer"


def test_a_resumed_search_continues_its_parent_run() -> None:
    existing = SimpleNamespace(info=SimpleNamespace(run_id="old-run"))
    deleted = SimpleNamespace(experiment_id="5", lifecycle_stage="deleted")
    client = FakeClient(experiment=deleted, runs=[existing])
    assert start_parent_run(client, CONFIG, SPEC, FEATURES, EXPERIMENT, MANIFEST) == ("5", "old-run")
    assert client.named("restore_experiment") == [("restore_experiment", ("5",), {})]
    assert client.named("update_run") == [("update_run", ("old-run",), {"status": "RUNNING"})]
    assert not client.named("create_run") and not client.named("log_batch")


def test_the_parent_run_is_found_by_its_tags() -> None:
    run_name = "it's"  # quoted as ml.experiments quotes it
    client = FakeClient(runs=[])
    assert find_parent_run(client, "5", "penguins", "snap1", run_name) is None
    ((_, (ids,), kwargs),) = client.named("search_runs")
    assert ids == ["5"] and kwargs["max_results"] == 1
    assert kwargs["filter_string"] == (
        f"tags.`mlops.kind` = '{PARENT_RUN_KIND}' AND tags.`mlops.run_name` = {quoted(run_name)} "
        "AND tags.`mlops.snapshot_id` = 'snap1' AND tags.`mlops.dataset` = 'penguins'"
    )


class FixedClock:
    def time(self) -> float:
        return 1_700_000_000.5

    def monotonic(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        raise AssertionError("no waiting")


def test_a_finished_search_logs_its_results_and_ends_its_run() -> None:
    values: dict[str, Any] = {name: None for name in SearchResult.__dataclass_fields__}
    values.update(
        best_trial_id="t1",
        best_checkpoint_uri=f"{EXPERIMENT}/trial_t1/checkpoint_000002",
        best_params={"lr": 0.01, "hidden_size": 32},
        best_validation_metrics={"val_loss": 0.25, "val_roc_auc": None},
        num_trials=4,
        num_errored=1,
    )
    result = SearchResult(**values)
    client = FakeClient()
    finish_parent_run(client, "run-1", result, clock=FixedClock())

    ((_, (run_id,), kwargs),) = client.named("log_batch")
    assert run_id == "run-1"
    metrics = {m.key: (m.value, m.timestamp, m.step) for m in kwargs["metrics"]}
    stamp = 1_700_000_000_500
    assert metrics == {
        "best_val_loss": (0.25, stamp, 0),  # the undefined val_roc_auc is left out
        "num_trials": (4.0, stamp, 0),
        "num_errored_trials": (1.0, stamp, 0),
    }
    tags = {t.key: t.value for t in kwargs["tags"]}
    assert tags == {
        "mlops.best_trial_id": "t1",
        "mlops.best_checkpoint_uri": f"{EXPERIMENT}/trial_t1/checkpoint_000002",
        "mlops.best_params": '{"hidden_size": 32, "lr": 0.01}',
    }
    assert client.named("log_dict") == [("log_dict", ("run-1", result.to_dict(), SEARCH_RESULT_FILE), {})]
    assert client.calls[-1] == ("set_terminated", ("run-1", "FINISHED"), {})


def test_marking_the_parent_run_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient()
    set_parent_status(client, "run-1", "KILLED")
    assert client.calls == [("set_terminated", ("run-1", "KILLED"), {})]
    with caplog.at_level(logging.WARNING, "ml.tune.tracking"):
        set_parent_status(FakeClient(fail=True), "run-1", "FAILED")
    assert "could not mark MLflow run run-1 FAILED" in caplog.text
