"""Operator glue, with the `ml` stages and connections replaced by doubles: what each operator passes to `ml`, what
it returns to XCom, and that connection values reach `ml` only for the duration of the call. (The real stages under
a real Airflow are covered by tests/e2e.)"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

pytestmark = pytest.mark.unit

CONNECTION_ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:2",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:3",
}


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlops_airflow import operators

    monkeypatch.setattr(operators._PipelineOperator, "pipeline_environment", lambda self: dict(CONNECTION_ENV))
    monkeypatch.setattr(operators, "s3_environment", lambda conn_id: {"AWS_ENDPOINT_URL": "http://127.0.0.1:1"})


def test_ingest_operator_calls_ingest_inside_the_connection_environment(
    connections: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.ingest
    from mlops_airflow.operators import IngestOperator

    seen: dict[str, Any] = {}

    def fake_ingest(config: Any) -> Any:
        seen["config"] = config
        seen["env"] = {key: os.environ.get(key) for key in CONNECTION_ENV}
        return ml.ingest.IngestResult(
            "d", "abc", "s3://lake/x", "s3://lake/x/manifest.json", 10, "regression", "y", created=True
        )

    monkeypatch.setattr(ml.ingest, "ingest", fake_ingest)
    before = {key: os.environ.get(key) for key in CONNECTION_ENV}
    operator = IngestOperator(task_id="ingest", raw_uri="s3://raw/d/", dataset="d", target="y", ml_task="regression")
    result = operator.execute({})
    assert seen["config"] == ml.ingest.IngestConfig("s3://raw/d/", "d", "y", task="regression")
    assert seen["env"] == CONNECTION_ENV
    assert {key: os.environ.get(key) for key in CONNECTION_ENV} == before, "the environment is restored"
    assert result["snapshot_id"] == "abc" and result["rows"] == 10


def test_ray_tune_operator_names_the_search_after_the_dag_run(
    connections: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.tune
    from mlops_airflow.operators import RayTuneOperator

    captured: dict[str, Any] = {}

    def fake_run_search(config: Any) -> Any:
        captured["config"] = config
        return SimpleNamespace(to_dict=lambda: {"best_params": {"lr": 0.1}, "num_trials": config.num_samples})

    monkeypatch.setattr(ml.tune, "run_search", fake_run_search)
    operator = RayTuneOperator(
        task_id="tune",
        dataset="d",
        snapshot_id="abc",
        search_space=None,
        num_samples="3",
        max_concurrent_trials="2",
        max_epochs="4",
    )
    result = operator.execute({"run_id": "manual__2026-01-01T00:00:00+00:00"})
    config = captured["config"]
    assert config.run_name == "manual__2026-01-01T00-00-00-00-00"  # sanitised, identical on every retry
    assert config.dag_run_id == "manual__2026-01-01T00:00:00+00:00"
    assert (config.num_samples, config.max_concurrent_trials, config.max_epochs) == (3, 2, 4)
    assert config.search_space == ml.tune.default_search_space()
    assert result == {"best_params": {"lr": 0.1}, "num_trials": 3}


def test_ray_tune_operator_on_kill_stops_ray_only_when_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from mlops_airflow.operators import RayTuneOperator

    calls: list[str] = []
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    operator = RayTuneOperator(task_id="tune", dataset="d", snapshot_id="abc")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    operator.on_kill()
    assert calls == []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    operator.on_kill()
    assert calls == ["shutdown"]


@pytest.mark.parametrize(
    ("found", "force", "expected"),
    [
        (None, False, "preprocess_with_spark"),
        (SimpleNamespace(version="7"), False, "reuse_existing_model"),
        (SimpleNamespace(version="7"), True, "preprocess_with_spark"),
    ],
)
def test_skip_branch_follows_an_existing_model(
    monkeypatch: pytest.MonkeyPatch, found: Any, force: bool, expected: str
) -> None:
    from ml.lineage import code_version
    from mlops_airflow import operators

    queries: list[tuple[str, dict[str, str]]] = []

    def fake_find(self: Any, name: str, tags: dict[str, str]) -> Any:
        queries.append((name, tags))
        return found

    monkeypatch.setattr(operators.MlflowHook, "find_model_version", fake_find)
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.update({key: value}))
    operator = operators.SkipIfModelExistsOperator(
        task_id="check",
        dataset="d",
        snapshot_id="abc",
        ml_task="classification",
        force=force,
        train_task_id="preprocess_with_spark",
        reuse_task_id="reuse_existing_model",
    )
    assert operator.choose_branch({"ti": ti}) == expected
    if not force:
        assert queries == [
            (
                "d-classification",
                {"snapshot_id": "abc", "code_version": code_version(), "mlops.registration": "complete"},
            )
        ]
    assert ("existing_model" in pushed) == (expected == "reuse_existing_model")


def test_preprocess_operator_resolves_spark_configuration_at_run_time(
    connections: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from ml.features import FeatureSpec, NumericFeature
    from mlops_airflow import operators

    submitted: dict[str, Any] = {}

    def fake_submit(self: Any, context: Any) -> None:
        submitted.update(
            conf=dict(self.conf),
            env=dict(self.env_vars),
            args=list(self.application_args),
            application=self.application,
        )

    spec = FeatureSpec("d", "abc", "regression", "y", [NumericFeature("x", 0.0, 0.0, 1.0)], [], rows={"train": 8})
    body = SimpleNamespace(read=lambda: spec.to_json().encode())
    monkeypatch.setattr(SparkSubmitOperator, "execute", fake_submit)
    monkeypatch.setattr(
        "ml.storage.s3_client", lambda settings=None: SimpleNamespace(get_object=lambda Bucket, Key: {"Body": body})
    )
    operator = operators.FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc")
    assert operator.conf is None, "nothing is read when the DAG is parsed"
    result = operator.execute({})
    assert submitted["application"].endswith("ml/spark_preprocess.py")
    assert submitted["args"][:4] == ["--dataset", "d", "--snapshot", "abc"]
    assert submitted["conf"]["spark.sql.catalogImplementation"] == "hive"
    assert "PYTHONPATH" in submitted["env"]
    assert result["rows"] == {"train": 8} and result["feature_spec_uri"].endswith("abc/feature_spec.json")
