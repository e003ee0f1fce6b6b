"""Registration and the promotion gate against the real MLflow server, S3 server and Kafka broker."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml import registry
from ml.storage import S3Uri, delete_prefix
from ml.topics import MODEL_PROMOTED, PIPELINE_EVENTS
from tests.support.stand_in_model import make_spec, raw_rows, upload_stand_in

pytestmark = pytest.mark.integration


class EventTap:
    """Collects what is published to the given topics from now on (no consumer group, nothing committed)."""

    def __init__(self, *topics: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9092", group_id=None, enable_auto_commit=False)
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(self.consumer.partitions_for_topic(t))]
        self.consumer.assign(partitions)
        self.consumer.seek_to_end(*partitions)
        for partition in partitions:
            self.consumer.position(partition)
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], count: int = 1, timeout_s: float = 20.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=500).values():
                self.seen.extend((r.topic, json.loads(r.value)) for r in batch)
            matched = [envelope for topic, envelope in self.seen if predicate(topic, envelope)]
            if len(matched) >= count:
                return matched
        raise AssertionError(f"expected {count} matching events within {timeout_s} s; saw {self.seen}")

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def dataset(mlflow_service: None, s3_service: None, kafka_service: None) -> Iterator[str]:
    """A fresh dataset name (so a fresh registered model); its model and S3 objects are removed afterwards."""
    name = f"it{uuid.uuid4().hex[:10]}"
    yield name
    from mlflow import MlflowClient

    mlflow_client = MlflowClient()
    for task in ("classification", "regression"):
        try:
            mlflow_client.delete_registered_model(registry.registered_model_name(name, task))
        except Exception:
            pass
    experiment = mlflow_client.get_experiment_by_name(name)  # registration runs go to an experiment per dataset
    if experiment is not None:
        mlflow_client.delete_experiment(experiment.experiment_id)


@pytest.fixture
def stand_in(s3_client: Any, tmp_path: Path, unique_prefix: str) -> Iterator[Callable[..., dict[str, Any]]]:
    """Uploads stand-in trained models under a unique prefix and returns their evaluation results."""

    def make(**kwargs: Any) -> dict[str, Any]:
        prefix = f"{unique_prefix}/{uuid.uuid4().hex[:6]}"
        return upload_stand_in(s3_client, tmp_path, prefix=prefix, **kwargs)

    yield make
    delete_prefix(S3Uri("lake", unique_prefix), s3_client)


@pytest.fixture
def tap(kafka_service: None) -> Iterator[EventTap]:
    tap = EventTap(MODEL_PROMOTED.name, PIPELINE_EVENTS.name)
    yield tap
    tap.close()


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def champion(name: str) -> str:
    return str(client().get_model_version_by_alias(name, "champion").version)


def test_gate_promotes_the_first_keeps_a_worse_one_out_and_promotes_a_better_one(
    dataset: str, stand_in: Callable[..., dict[str, Any]], tap: EventTap
) -> None:
    name = registry.registered_model_name(dataset, "classification")
    first = registry.register_and_promote(
        stand_in(dataset=dataset, quality="medium"), dag_id="mlops_training", dag_run_id="run-1", code_version="abc123"
    )
    assert (first["version"], first["decision"], first["champion"]) == ("1", "first_model", "1")

    worse = registry.register_and_promote(
        stand_in(dataset=dataset, quality="bad"), dag_id="mlops_training", dag_run_id="run-2", code_version="abc123"
    )
    assert (worse["version"], worse["decision"], worse["champion"]) == ("2", "rejected", "1")
    assert champion(name) == "1"
    assert str(client().get_model_version_by_alias(name, "challenger").version) == "2"

    better = registry.register_and_promote(
        stand_in(dataset=dataset, quality="good"), dag_id="mlops_training", dag_run_id="run-3", code_version="abc123"
    )
    assert (better["decision"], better["champion"], better["previous_champion"]) == ("promoted", "3", "1")
    assert better["value"] == 1.0 and better["champion_value"] == pytest.approx(0.82, abs=0.05)
    assert champion(name) == "3"

    # Lineage and the recorded decisions are on the versions.
    tags = client().get_model_version(name, "3").tags
    assert tags["snapshot_id"] == "snap-a" and tags["dag_id"] == "mlops_training" and tags["dag_run_id"] == "run-3"
    assert tags["code_version"] == "abc123" and tags["search_space_hash"] == "standin-space" and tags["git_sha"]
    assert tags["feature_spec_uri"].endswith("/feature_spec.json") and tags["test.accuracy"] == "1.0"
    assert tags["gate.decision"] == "promoted" and tags["gate.champion_version"] == "1"
    assert tags[registry.REGISTRATION_TAG] == "complete"
    assert client().get_model_version(name, "2").tags["gate.decision"] == "rejected"
    assert client().get_model_version(name, "1").tags["replaced_by"] == "3"

    # Events: champion moves (v1, v3) on the promoted topic; the rejection of v2 as a pipeline event.
    promoted = tap.wait_for(lambda t, e: t == MODEL_PROMOTED.name and e["payload"]["model_name"] == name, count=2)
    assert [(e["payload"]["version"], e["payload"]["previous_version"]) for e in promoted] == [("1", None), ("3", "1")]
    assert promoted[1]["dag_run_id"] == "run-3" and promoted[1]["payload"]["value"] == 1.0
    [rejected] = tap.wait_for(
        lambda t, e: (
            t == PIPELINE_EVENTS.name
            and e["payload"]["event"] == "model_rejected"
            and e["payload"]["details"]["model_name"] == name
        )
    )
    assert rejected["payload"]["details"]["version"] == "2"

    # The registered artifact is an MLflow pyfunc (model from code) that predicts like the offline path.
    import mlflow
    import pandas as pd

    from ml.models import load_model, predict

    rows = raw_rows(20, seed=5)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/3")
    served = pyfunc.predict(pd.DataFrame(rows, columns=["x1", "x2", "color"]))
    loaded = registry.load_version(name, "champion")
    spec = make_spec()
    outputs, probabilities = predict(load_model(_checkpoint_dir(loaded)), spec.transform(rows))
    assert list(served["prediction"]) == spec.decode_labels(outputs)
    assert np.allclose(served[["probability_no", "probability_yes"]].to_numpy(), probabilities, atol=1e-6)


def _checkpoint_dir(loaded: registry.LoadedModel) -> Path:
    """Download the version's checkpoint directory (to load it the offline way)."""
    import tempfile

    import mlflow

    local = mlflow.artifacts.download_artifacts(f"models:/{loaded.name}/{loaded.version}", dst_path=tempfile.mkdtemp())
    return Path(local) / "artifacts" / "checkpoint"


def test_registration_is_idempotent_per_dag_run(dataset: str, stand_in: Callable[..., dict[str, Any]]) -> None:
    name = registry.registered_model_name(dataset, "classification")
    mlflow_client = client()
    # The tuning run (finished) is the parent: the model is logged into it.
    parent = mlflow_client.create_run(registry._experiment_id(mlflow_client, dataset), run_name="tune")
    mlflow_client.set_terminated(parent.info.run_id)
    evaluation = {**stand_in(dataset=dataset, quality="medium"), "mlflow_parent_run_id": parent.info.run_id}
    first = registry.register_model(evaluation, dag_id="d", dag_run_id="retried-run", code_version="x")
    again = registry.register_model(evaluation, dag_id="d", dag_run_id="retried-run", code_version="x")
    assert (first["created"], again["created"], again["version"]) == (True, False, first["version"])
    assert len(registry.find_version_for_run(name, "retried-run")) == 1
    assert first["run_id"] == parent.info.run_id and first["tags"]["mlflow_parent_run_id"] == parent.info.run_id
    assert mlflow_client.get_run(parent.info.run_id).info.status == "FINISHED"

    # A version that a crashed attempt left pending is removed and redone, not reused.
    leftover = mlflow_client.create_model_version(
        name,
        source=first["source"],
        model_id=first["source"].removeprefix("models:/"),
        tags={"dag_run_id": "crashed-run", registry.REGISTRATION_TAG: "pending"},
    )
    mlflow_client.set_registered_model_alias(name, "challenger", leftover.version)
    redone = registry.register_model(evaluation, dag_id="d", dag_run_id="crashed-run", code_version="x")
    versions = registry.find_version_for_run(name, "crashed-run")
    assert [v.version for v in versions] == [redone["version"]] and redone["version"] != leftover.version
    assert str(mlflow_client.get_model_version_by_alias(name, "challenger").version) == redone["version"]


def test_a_failure_after_the_version_exists_leaves_no_half_registered_model(
    dataset: str, stand_in: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    name = registry.registered_model_name(dataset, "classification")
    evaluation = stand_in(dataset=dataset)
    registry.register_and_promote(evaluation, dag_id="d", dag_run_id="ok-run", code_version="x")

    def broken_alias(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("registry hiccup")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_registered_model_alias", broken_alias)
        with pytest.raises(RuntimeError, match="registry hiccup"):
            registry.register_model(evaluation, dag_id="d", dag_run_id="failing-run", code_version="x")
    assert registry.find_version_for_run(name, "failing-run") == []
    assert champion(name) == "1"
    assert str(client().get_model_version_by_alias(name, "challenger").version) == "1"


def test_a_champion_from_another_snapshot_is_rescored_on_the_challengers_test_split(
    dataset: str, stand_in: Callable[..., dict[str, Any]]
) -> None:
    name = registry.registered_model_name(dataset, "classification")
    registry.register_and_promote(
        stand_in(dataset=dataset, quality="medium", snapshot_id="snap-a"), dag_id="d", dag_run_id="a", code_version="x"
    )
    # A new snapshot standardises x1 differently: the champion sees the raw values recovered from the new split.
    better = registry.register_and_promote(
        stand_in(dataset=dataset, quality="good", snapshot_id="snap-b", x1_mean=0.7, seed=1),
        dag_id="d",
        dag_run_id="b",
        code_version="x",
    )
    assert better["decision"] == "promoted" and "re-scored" in better["reason"]
    assert better["value"] == 1.0 and 0.7 < better["champion_value"] < 0.95
    worse = registry.register_and_promote(
        stand_in(dataset=dataset, quality="medium", snapshot_id="snap-c", seed=2),
        dag_id="d",
        dag_run_id="c",
        code_version="x",
    )
    assert worse["decision"] == "rejected" and "re-scored" in worse["reason"] and worse["champion_value"] == 1.0
    assert champion(name) == better["version"]


def test_backfills_never_move_the_champion_unless_allowed(
    dataset: str, stand_in: Callable[..., dict[str, Any]]
) -> None:
    name = registry.registered_model_name(dataset, "regression")
    registry.register_and_promote(
        stand_in(dataset=dataset, task="regression", quality="medium"), dag_id="d", dag_run_id="live", code_version="x"
    )
    good = stand_in(dataset=dataset, task="regression", quality="good")
    held = registry.register_and_promote(good, dag_id="d", dag_run_id="backfill-1", code_version="x", is_backfill=True)
    assert held["decision"] == "rejected" and "backfill" in held["reason"] and champion(name) == "1"
    allowed = registry.register_and_promote(
        good, dag_id="d", dag_run_id="backfill-2", code_version="x", is_backfill=True, allow_backfill_promotion=True
    )
    assert allowed["decision"] == "promoted" and allowed["metric"] == "rmse" and champion(name) == allowed["version"]
    assert client().get_model_version(name, allowed["version"]).tags["is_backfill"] == "true"


def test_concurrent_registrations_keep_the_aliases_consistent(
    dataset: str, stand_in: Callable[..., dict[str, Any]]
) -> None:
    name = registry.registered_model_name(dataset, "classification")
    evaluations = {quality: stand_in(dataset=dataset, quality=quality) for quality in ("bad", "medium", "good")}
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(evaluations))

    def run(quality: str) -> None:
        try:
            barrier.wait()
            results[quality] = registry.register_and_promote(
                evaluations[quality], dag_id="d", dag_run_id=f"concurrent-{quality}", code_version="x"
            )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(quality,)) for quality in evaluations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    assert sorted(r["version"] for r in results.values()) == ["1", "2", "3"]
    # Whatever the order, the best model ends up champion and every decision compared against the champion of its
    # moment: each promotion replaced the previous champion, so the promoted versions form one chain.
    assert champion(name) == results["good"]["version"]
    mlflow_client = client()
    versions = {v: mlflow_client.get_model_version(name, v).tags for v in ("1", "2", "3")}
    replaced = {
        t["gate.champion_version"]: v for v, t in versions.items() if t["gate.decision"] in ("promoted", "first_model")
    }
    chain, current = [], ""
    while current in replaced:
        current = replaced.pop(current)
        chain.append(current)
    assert not replaced and chain[-1] == results["good"]["version"], (chain, versions)
    challenger = str(mlflow_client.get_model_version_by_alias(name, "challenger").version)
    assert versions[challenger][registry.REGISTRATION_TAG] == "complete"
    assert not any(obj["Key"].endswith(f"{name}.lock") for obj in _lock_objects())


def _lock_objects() -> list[dict[str, Any]]:
    from ml.storage import list_keys

    return list_keys(S3Uri("lake", "locks/registry/"))


def test_rollback_from_the_command_line(dataset: str, stand_in: Callable[..., dict[str, Any]], tap: EventTap) -> None:
    from ml.__main__ import main

    name = registry.registered_model_name(dataset, "classification")
    for index, quality in enumerate(("medium", "good")):
        registry.register_and_promote(
            stand_in(dataset=dataset, quality=quality), dag_id="d", dag_run_id=f"r{index}", code_version="x"
        )
    assert champion(name) == "2"
    assert main(["promote", "--model", name, "--version", "1", "--reason", "v2 misbehaves in production"]) == 0
    assert champion(name) == "1"
    tags = client().get_model_version(name, "1").tags
    assert tags["rollback.from_version"] == "2" and tags["rollback.reason"] == "v2 misbehaves in production"
    [event] = tap.wait_for(
        lambda t, e: (
            t == MODEL_PROMOTED.name
            and e["payload"]["model_name"] == name
            and e["payload"]["reason"] == "v2 misbehaves in production"
        )
    )
    assert (event["payload"]["version"], event["payload"]["previous_version"]) == ("1", "2")
    assert main(["promote", "--model", name, "--version", "99"]) != 0  # no such version: a clear error, no change
    assert champion(name) == "1"


def test_register_command_reads_the_evaluation_from_s3(
    dataset: str,
    stand_in: Callable[..., dict[str, Any]],
    s3_client: Any,
    unique_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ml.__main__ import main

    evaluation = stand_in(dataset=dataset)
    key = f"{unique_prefix}/evaluation.json"
    s3_client.put_object(Bucket="lake", Key=key, Body=json.dumps(evaluation).encode())
    assert (
        main(
            [
                "register",
                "--evaluation",
                f"s3://lake/{key}",
                "--dag-id",
                "cli",
                "--dag-run-id",
                "cli-1",
                "--margin",
                "0.01",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert (printed["version"], printed["decision"], printed["created"]) == ("1", "first_model", True)
    from ml.lineage import code_version

    tags = client().get_model_version(printed["model_name"], "1").tags
    assert tags["code_version"] == code_version() and tags["dag_run_id"] == "cli-1"
    s3_client.delete_object(Bucket="lake", Key=key)


def test_alias_lock_is_exclusive_and_an_expired_one_is_taken_over(s3_service: None, unique_prefix: str) -> None:
    uri = S3Uri("lake", f"{unique_prefix}/model.lock")
    holder = registry.AliasLock("m", uri=uri, ttl_s=1.0)
    holder.acquire()
    waiter = registry.AliasLock("m", uri=uri, wait_s=0.3)
    with pytest.raises(registry.RegistryError, match="held by"):
        waiter.acquire()
    time.sleep(1.1)  # the holder "crashed": its lock expires and the next waiter takes it over
    taker = registry.AliasLock("m", uri=uri, wait_s=5)
    taker.acquire()
    holder.release()  # too late: this must not remove the taker's lock
    with pytest.raises(registry.RegistryError):
        registry.AliasLock("m", uri=uri, wait_s=0.3).acquire()
    taker.release()
    with registry.AliasLock("m", uri=uri, wait_s=1):
        pass
