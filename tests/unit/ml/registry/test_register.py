"""ml.registry.register without servers: what an evaluation must hold, the tags of a new version, where its files come
from, and registration's steps on an in-memory registry (idempotent per DAG run, under the alias lock with each write
fenced, pending leftovers deleted under the lock, cleaned up on failure). The model upload itself (MLflow's pyfunc
logging) is covered by tests/integration/ml/registry."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ml.registry import register
from ml.registry.context import RegistryError
from ml.registry.lock import AliasLock, LockLost
from ml.registry.register import check_evaluation, load_evaluation, metric_value, register_model, version_tags
from ml.storage import S3Uri
from ml.topics import PIPELINE_EVENTS
from tests.support.fake_clock import FakeClock
from tests.support.stand_in_model import make_checkpoint, make_spec
from tests.unit.ml.registry.fakes import FakeMlflow, FakeS3, client_error, fake_context

NAME = "iris-classification"


def evaluation(**override: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "dataset": "iris",
        "snapshot_id": "snap-a",
        "task": "classification",
        "metric": "val_accuracy",
        "test_metrics": {"test_accuracy": 0.9, "test_loss": 0.25, "roc_auc": float("nan")},
        "baseline_test_metrics": {"accuracy": 0.33},
        "checkpoint_uri": "s3://lake/tune/iris/snap-a/run/trial/checkpoint_000003",
        "feature_spec_uri": "s3://lake/datasets/iris/features/snap-a/feature_spec.json",
        "features_uri": "s3://lake/datasets/iris/features/snap-a",
        "search_space_hash": "h",
        "mlflow_parent_run_id": None,
        "num_trials": 8,
        "dag_id": "ignored: the caller's dag_id wins",
    }
    values.update(override)
    return values


# --- the evaluation result -------------------------------------------------------------------------------------------


def test_check_evaluation_names_what_is_missing() -> None:
    check_evaluation(evaluation())
    with pytest.raises(ValueError, match=r"lacks \['snapshot_id', 'checkpoint_uri'\]"):
        check_evaluation(evaluation(snapshot_id="", checkpoint_uri=None))
    with pytest.raises(ValueError, match="no test_metrics"):
        check_evaluation(evaluation(test_metrics={}))
    with pytest.raises(ValueError, match="no test_metrics"):
        check_evaluation(evaluation(test_metrics=[0.9]))


@pytest.mark.parametrize(
    ("metrics", "metric", "expected"),
    [
        ({"test_accuracy": 0.9}, "accuracy", 0.9),
        ({"accuracy": 0.8}, "val_accuracy", 0.8),
        ({"test_accuracy": 0.7}, "test_accuracy", 0.7),
        ({"test_accuracy": None, "accuracy": 0.6}, "accuracy", 0.6),
        ({"rmse": 1}, "accuracy", None),
    ],
)
def test_metric_value_finds_the_metric_with_or_without_a_split_prefix(
    metrics: dict[str, Any], metric: str, expected: float | None
) -> None:
    assert metric_value(metrics, metric) == expected


def test_load_evaluation_from_a_file_or_s3(tmp_path: Path) -> None:
    result = evaluation(test_metrics={"accuracy": 0.9})
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(result))
    assert load_evaluation(str(path), FakeS3()) == result
    s3 = FakeS3()
    s3.put_object(Bucket="lake", Key="eval/evaluation.json", Body=json.dumps(result).encode())
    assert load_evaluation("s3://lake/eval/evaluation.json", s3) == result
    assert load_evaluation("s3a://lake/eval/evaluation.json", s3)["dataset"] == "iris"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_evaluation(str(path), s3)


# --- the tags of a new version ---------------------------------------------------------------------------------------


def test_version_tags_carry_lineage_metrics_and_a_pending_state() -> None:
    tags = version_tags(
        evaluation(), dag_id="mlops_training", dag_run_id="run-1", code_version="abc", git_sha="f00", is_backfill=False
    )
    assert tags["dag_id"] == "mlops_training" and tags["dag_run_id"] == "run-1"
    assert (tags["code_version"], tags["git_sha"], tags["is_backfill"]) == ("abc", "f00", "false")
    assert tags["metric"] == "accuracy"  # the base name: the gate compares test.accuracy
    assert (tags["snapshot_id"], tags["num_trials"], tags["search_space_hash"]) == ("snap-a", "8", "h")
    assert tags["test.accuracy"] == "0.9" and tags["test.loss"] == "0.25"
    assert "test.roc_auc" not in tags  # not finite: no tag
    assert tags["baseline_test.accuracy"] == "0.33"
    assert "mlflow_parent_run_id" not in tags  # None: no tag
    assert tags["mlops.registration"] == "pending"
    assert all(isinstance(value, str) for value in tags.values())
    backfill = version_tags(evaluation(), dag_id="d", dag_run_id="r", code_version="c", git_sha="g", is_backfill=True)
    assert backfill["is_backfill"] == "true"
    assert "trigger" not in tags and "trigger_event" not in tags  # a scheduled or manual run


def test_the_event_that_started_the_run_is_recorded() -> None:
    drift = {"source": "drift", "model_name": "m", "model_version": "3", "drifted_features": ["x1"]}
    tags = version_tags(
        evaluation(), dag_id="d", dag_run_id="r", code_version="c", git_sha="g", is_backfill=False, trigger_event=drift
    )
    assert tags["trigger"] == "drift" and json.loads(tags["trigger_event"]) == drift
    huge = {"source": "s3_notification", "objects": ["s3://raw/x/" + "k" * 50] * 100}
    tags = version_tags(
        evaluation(), dag_id="d", dag_run_id="r", code_version="c", git_sha="g", is_backfill=False, trigger_event=huge
    )
    assert json.loads(tags["trigger_event"]) == {"source": "s3_notification", "truncated": True, "length": 6440}


def test_structured_lineage_values_become_json() -> None:
    tags = version_tags(
        evaluation(num_trials={"ok": 7, "failed": 1}, baseline_test_metrics=None),
        dag_id="d",
        dag_run_id="r",
        code_version="c",
        git_sha="g",
        is_backfill=False,
    )
    assert json.loads(tags["num_trials"]) == {"failed": 1, "ok": 7}
    assert not any(key.startswith("baseline_test.") for key in tags)


# --- the files of a version ------------------------------------------------------------------------------------------


def test_artifacts_come_from_s3_without_the_optimizer_state(tmp_path: Path) -> None:
    spec = make_spec()
    checkpoint = make_checkpoint(tmp_path / "trained", spec)
    (checkpoint / "optimizer.pt").write_bytes(b"large and useless for serving")
    s3 = FakeS3()
    for path in checkpoint.iterdir():
        s3.put_file("lake", f"ckpt/{path.name}", path)
    s3.put_object(Bucket="lake", Key="features/feature_spec.json", Body=spec.to_json().encode())
    source = evaluation(checkpoint_uri="s3://lake/ckpt", feature_spec_uri="s3://lake/features/feature_spec.json")
    copied, spec_path = register._fetch_artifacts(source, tmp_path / "work", s3)
    assert sorted(p.name for p in copied.iterdir()) == ["model_config.json", "model_state.pt"]
    assert json.loads(spec_path.read_text())["feature_columns"] == spec.feature_columns
    assert spec_path.name == "feature_spec.json" and copied.name == "checkpoint"


def test_artifacts_can_come_from_local_paths(tmp_path: Path) -> None:
    spec = make_spec()
    checkpoint = make_checkpoint(tmp_path / "trained", spec)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    source = evaluation(checkpoint_uri=str(checkpoint), feature_spec_uri=str(spec_file))
    copied, spec_path = register._fetch_artifacts(source, tmp_path / "work", FakeS3())
    assert sorted(p.name for p in copied.iterdir()) == ["model_config.json", "model_state.pt"]
    assert spec_path.read_text() == spec_file.read_text()


# --- registration on an in-memory registry ---------------------------------------------------------------------------


@pytest.fixture
def uploaded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replaces the model upload (MLflow's pyfunc logging) with a record of its calls."""
    calls: list[dict[str, Any]] = []

    def log_pyfunc_model(context: Any, evaluation: Any, work: Path, *, run_id: str | None, experiment_id: str) -> Any:
        calls.append({"run_id": run_id, "experiment_id": experiment_id})
        return SimpleNamespace(model_uri="models:/m-123", run_id=run_id or "run-new", model_id="m-123")

    monkeypatch.setattr(register, "_log_pyfunc_model", log_pyfunc_model)
    monkeypatch.setattr(register, "get_or_create_experiment", lambda client, name: f"exp-{name}")
    monkeypatch.setattr("ml.lineage.git_sha", lambda: "f00")
    return calls


def test_register_creates_a_complete_challenger_under_the_lock(uploaded: list[dict[str, Any]]) -> None:
    mlflow, s3, clock, published = FakeMlflow(), FakeS3(), FakeClock(wall=1_900_000_000.0), []
    context = fake_context(mlflow, s3, clock, published)
    lock_key = ("lake", f"locks/registry/{NAME}.lock")
    held_at_create: list[bool] = []
    mlflow.on["create_model_version"] = [lambda: held_at_create.append(lock_key in s3.objects)]

    result = register_model(
        evaluation(), context, dag_id="mlops_training", dag_run_id="run-1", code_version="abc", task_id="register"
    )
    assert (result["model_name"], result["version"], result["created"]) == (NAME, "1", True)
    assert result["model_uri"] == f"models:/{NAME}/1" and result["source"] == "models:/m-123"
    assert uploaded == [{"run_id": None, "experiment_id": "exp-iris"}]
    assert mlflow.models == {NAME: {"dataset": "iris", "task": "classification"}}
    assert held_at_create == [True] and lock_key not in s3.objects  # created under the lock, released afterwards
    assert mlflow.aliases == {(NAME, "challenger"): "1"}
    tags = mlflow.versions[(NAME, "1")].tags
    assert tags["mlops.registration"] == "complete" and tags["registered_at"] == "2030-03-17T17:46:40.000Z"
    assert (tags["dag_run_id"], tags["code_version"], tags["git_sha"]) == ("run-1", "abc", "f00")
    [(topic, payload, key, run)] = published
    assert (topic, key, run) == (PIPELINE_EVENTS, "mlops_training:run-1:register:model_registered", "run-1")
    assert payload["details"] == {
        "model_name": NAME,
        "version": "1",
        "metric": "accuracy",
        "value": 0.9,
        "snapshot_id": "snap-a",
    }


def test_the_model_is_logged_into_the_searchs_parent_run(uploaded: list[dict[str, Any]]) -> None:
    context = fake_context()
    register_model(evaluation(mlflow_parent_run_id="parent-1"), context, dag_id="d", dag_run_id="r")
    assert uploaded == [{"run_id": "parent-1", "experiment_id": "exp-iris"}]


def test_a_retried_run_gets_its_version_back_and_a_pending_leftover_is_deleted(
    uploaded: list[dict[str, Any]],
) -> None:
    mlflow = FakeMlflow()
    mlflow.add(NAME, 1, dag_run_id="run-1", **{"mlops.registration": "complete"})
    mlflow.add(NAME, 2, dag_run_id="run-1", **{"mlops.registration": "pending"})  # a crashed second attempt
    mlflow.add(NAME, 3, dag_run_id="run-2", **{"mlops.registration": "pending"})  # another run's: left alone
    published: list[tuple[Any, ...]] = []
    again = register_model(evaluation(), fake_context(mlflow, published=published), dag_id="d", dag_run_id="run-1")
    assert (again["version"], again["created"]) == ("1", False)
    assert sorted(v for _, v in mlflow.versions) == ["1", "3"]
    assert uploaded == [] and published == []  # nothing uploaded, nothing announced twice


def test_a_pending_leftover_of_the_run_is_redone(uploaded: list[dict[str, Any]]) -> None:
    mlflow = FakeMlflow()
    mlflow.add(NAME, 1, dag_run_id="run-1", **{"mlops.registration": "pending"})
    mlflow.aliases[(NAME, "challenger")] = "1"
    redone = register_model(evaluation(), fake_context(mlflow), dag_id="d", dag_run_id="run-1")
    assert (redone["version"], redone["created"]) == ("2", True)
    assert sorted(v for _, v in mlflow.versions) == ["2"] and mlflow.aliases[(NAME, "challenger")] == "2"


@pytest.mark.parametrize("completed_before", [False, True])
def test_pending_leftovers_are_deleted_under_the_lock_and_fenced(
    uploaded: list[dict[str, Any]], completed_before: bool
) -> None:
    mlflow, s3 = FakeMlflow(), FakeS3()
    if completed_before:  # a retried task whose version is complete: it returns that, after the clean-up
        mlflow.add(NAME, 1, dag_run_id="run-1", **{"mlops.registration": "complete"})
    mlflow.add(NAME, 2, dag_run_id="run-1", **{"mlops.registration": "pending"})
    lock_key = ("lake", f"locks/registry/{NAME}.lock")
    at_delete: list[tuple[bool, str]] = []  # (the lock object exists, the S3 call just before: the fence)
    mlflow.on["delete_model_version"] = [lambda: at_delete.append((lock_key in s3.objects, s3.calls[-1][0]))]
    result = register_model(evaluation(), fake_context(mlflow, s3), dag_id="d", dag_run_id="run-1")
    assert at_delete == [(True, "head_object")] and (NAME, "2") not in mlflow.versions
    assert (result["version"], result["created"]) == (("1", False) if completed_before else ("3", True))
    assert lock_key not in s3.objects


def test_a_registration_that_lost_its_lock_sets_no_alias_and_leaves_its_version_pending(
    uploaded: list[dict[str, Any]],
) -> None:
    mlflow, s3, clock = FakeMlflow(), FakeS3(), FakeClock()
    taker = AliasLock(S3Uri("lake", f"locks/registry/{NAME}.lock"), s3, wait_s=0, keep_renewed=False, clock=clock)

    def stall_past_the_ttl_and_lose_the_lock() -> None:
        clock.advance(121)
        taker.acquire()

    mlflow.on["create_model_version"] = [stall_past_the_ttl_and_lose_the_lock]
    with pytest.raises(LockLost, match=f"held by {taker.owner} now"):
        register_model(evaluation(), fake_context(mlflow, s3, clock), dag_id="d", dag_run_id="run-1")
    called = [method for method, _ in mlflow.calls]
    assert "set_registered_model_alias" not in called and "delete_model_version" not in called
    assert mlflow.aliases == {} and mlflow.versions[(NAME, "1")].tags["mlops.registration"] == "pending"

    taker.release()  # the retry deletes the leftover under the lock and registers again
    again = register_model(evaluation(), fake_context(mlflow, s3, clock), dag_id="d", dag_run_id="run-1")
    assert (again["version"], again["created"]) == ("2", True) and sorted(v for _, v in mlflow.versions) == ["2"]


def test_a_concurrent_attempt_that_finished_first_wins(uploaded: list[dict[str, Any]]) -> None:
    mlflow = FakeMlflow()
    # While this attempt uploaded, another attempt of the same DAG run completed a version.
    winner = lambda: mlflow.add(NAME, 1, dag_run_id="run-1", **{"mlops.registration": "complete"})  # noqa: E731
    mlflow.on["search_model_versions"] = [lambda: None, winner]
    result = register_model(evaluation(), fake_context(mlflow), dag_id="d", dag_run_id="run-1")
    assert (result["version"], result["created"]) == ("1", False)
    assert len(mlflow.versions) == 1


def test_a_failure_after_the_version_exists_deletes_it(uploaded: list[dict[str, Any]]) -> None:
    mlflow, s3 = FakeMlflow(), FakeS3()
    mlflow.fail_with["set_registered_model_alias"] = RuntimeError("registry hiccup")
    published: list[tuple[Any, ...]] = []
    with pytest.raises(RuntimeError, match="registry hiccup"):
        register_model(evaluation(), fake_context(mlflow, s3, published=published), dag_id="d", dag_run_id="r")
    assert mlflow.versions == {} and published == [] and s3.objects == {}  # no version, no event, lock released


def test_an_unpublishable_registered_event_does_not_fail_the_registration(
    uploaded: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    context = fake_context()

    def broken(*args: Any) -> None:
        raise ConnectionError("Kafka away")

    context.publish = broken
    with caplog.at_level(logging.WARNING):
        result = register_model(evaluation(), context, dag_id="d", dag_run_id="r")
    assert result["created"] and "could not publish the model_registered pipeline event" in caplog.text


def test_publish_events_false_sends_nothing(uploaded: list[dict[str, Any]]) -> None:
    published: list[tuple[Any, ...]] = []
    register_model(evaluation(), fake_context(published=published), dag_id="d", dag_run_id="r", publish_events=False)
    assert published == []


def test_an_invalid_evaluation_touches_no_registry() -> None:
    mlflow = FakeMlflow()
    with pytest.raises(ValueError, match="lacks"):
        register_model(evaluation(task=None), fake_context(mlflow), dag_id="d", dag_run_id="r")
    assert mlflow.calls == []


def test_the_registered_model_is_created_once() -> None:
    mlflow = FakeMlflow()
    register._ensure_registered_model(mlflow, NAME, evaluation())
    register._ensure_registered_model(mlflow, NAME, evaluation())  # ALREADY_EXISTS is fine
    assert list(mlflow.models) == [NAME]
    from mlflow.exceptions import MlflowException

    mlflow.fail_with["create_registered_model"] = MlflowException("denied", error_code="PERMISSION_DENIED")
    with pytest.raises(MlflowException, match="denied"):
        register._ensure_registered_model(mlflow, "other", evaluation())


# --- waiting for MLflow and cleaning up ------------------------------------------------------------------------------


def test_wait_ready_polls_on_the_contexts_clock() -> None:
    mlflow, clock = FakeMlflow(), FakeClock()
    mlflow.add(NAME, 1)
    mlflow.status_sequence = ["PENDING_REGISTRATION", "PENDING_REGISTRATION", "READY"]
    register._wait_ready(fake_context(mlflow, clock=clock), NAME, "1")
    assert clock.sleeps == [0.5, 0.5]


def test_wait_ready_fails_on_a_failed_registration_or_after_its_timeout() -> None:
    mlflow, clock = FakeMlflow(), FakeClock()
    mlflow.add(NAME, 1)
    mlflow.status_sequence = ["FAILED_REGISTRATION"]
    with pytest.raises(RegistryError, match="version 1: registration status FAILED_REGISTRATION"):
        register._wait_ready(fake_context(mlflow, clock=clock), NAME, "1")
    mlflow.status_sequence = ["PENDING_REGISTRATION"] * 1000
    with pytest.raises(RegistryError, match="PENDING_REGISTRATION"):
        register._wait_ready(fake_context(mlflow, clock=clock), NAME, "1", timeout_s=10)
    assert 10 <= sum(clock.sleeps) <= 11  # gave up after its timeout on the fake clock


def test_a_version_that_cannot_be_deleted_is_tagged_failed_and_loses_its_aliases(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mlflow = FakeMlflow()
    mlflow.add(NAME, 1)
    mlflow.add(NAME, 2)
    mlflow.aliases.update({(NAME, "champion"): "1", (NAME, "challenger"): "2"})
    mlflow.fail_with["delete_model_version"] = RuntimeError("denied")
    register._delete_version(mlflow, NAME, "2", "a test")
    assert mlflow.versions[(NAME, "2")].tags["mlops.registration"] == "failed"
    assert mlflow.aliases == {(NAME, "champion"): "1"}
    mlflow.fail_with["set_model_version_tag"] = RuntimeError("still denied")
    with caplog.at_level(logging.ERROR):
        register._delete_version(mlflow, NAME, "1", "another test")  # never raises over the original error
    assert "could not tag version 1 as failed either" in caplog.text


def test_s3_errors_reading_the_checkpoint_propagate(tmp_path: Path) -> None:
    from botocore.exceptions import ClientError

    s3 = FakeS3()
    s3.fail_with["download_file"] = client_error("AccessDenied", status=403)
    with pytest.raises(ClientError):
        register._fetch_artifacts(evaluation(), tmp_path / "work", s3)
