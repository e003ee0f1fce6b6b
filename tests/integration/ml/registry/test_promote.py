"""The promotion gate against the real MLflow server, S3 server and Kafka broker: first, worse and better versions,
a champion from another snapshot re-scored, backfills, concurrent registrations under the alias lock, and a rollback
from the command line."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ml.registry.context import RegistryContext
from ml.registry.conventions import REGISTRATION_TAG, registered_model_name
from ml.registry.promote import register_and_promote
from ml.settings import PROJECT_ROOT
from ml.storage import S3Uri, list_keys
from ml.topics import MODEL_PROMOTED, PIPELINE_EVENTS
from tests.integration.ml.registry.support import EventTap


def champion(mlflow_client: Any, name: str) -> str:
    return str(mlflow_client.get_model_version_by_alias(name, "champion").version)


def test_gate_promotes_the_first_keeps_a_worse_one_out_and_promotes_a_better_one(
    context: RegistryContext,
    dataset: str,
    stand_in: Callable[..., dict[str, Any]],
    tap: EventTap,
    mlflow_client: Any,
) -> None:
    name = registered_model_name(dataset, "classification")

    def register(quality: str, run: str) -> dict[str, Any]:
        evaluation = stand_in(dataset=dataset, quality=quality)
        return register_and_promote(evaluation, context, dag_id="mlops_training", dag_run_id=run, code_version="abc123")

    first = register("medium", "run-1")
    assert (first["version"], first["decision"], first["champion"]) == ("1", "first_model", "1")
    worse = register("bad", "run-2")
    assert (worse["version"], worse["decision"], worse["champion"]) == ("2", "rejected", "1")
    assert champion(mlflow_client, name) == "1"
    assert str(mlflow_client.get_model_version_by_alias(name, "challenger").version) == "2"
    better = register("good", "run-3")
    assert (better["decision"], better["champion"], better["previous_champion"]) == ("promoted", "3", "1")
    assert better["value"] == 1.0 and better["champion_value"] == pytest.approx(0.82, abs=0.05)
    assert champion(mlflow_client, name) == "3"

    # Lineage and the recorded decisions are on the versions.
    tags = mlflow_client.get_model_version(name, "3").tags
    assert tags["snapshot_id"] == "snap-a" and tags["dag_id"] == "mlops_training" and tags["dag_run_id"] == "run-3"
    assert tags["code_version"] == "abc123" and tags["search_space_hash"] == "standin-space" and tags["git_sha"]
    assert tags["feature_spec_uri"].endswith("/feature_spec.json") and tags["test.accuracy"] == "1.0"
    assert tags["gate.decision"] == "promoted" and tags["gate.champion_version"] == "1"
    assert tags[REGISTRATION_TAG] == "complete"
    assert mlflow_client.get_model_version(name, "2").tags["gate.decision"] == "rejected"
    assert mlflow_client.get_model_version(name, "1").tags["replaced_by"] == "3"

    # Events: champion moves (v1, v3) on the promoted topic; the rejection of v2 as a pipeline event; every
    # registration as a pipeline event.
    promoted = tap.wait_for(lambda t, e: t == MODEL_PROMOTED.name and e["payload"]["model_name"] == name, count=2)
    assert [(e["payload"]["version"], e["payload"]["previous_version"]) for e in promoted] == [("1", None), ("3", "1")]
    assert promoted[1]["dag_run_id"] == "run-3" and promoted[1]["payload"]["value"] == 1.0

    def pipeline_event(kind: str) -> Callable[[str, dict[str, Any]], bool]:
        return lambda t, e: (
            t == PIPELINE_EVENTS.name
            and e["payload"]["event"] == kind
            and e["payload"]["details"]["model_name"] == name
        )

    [rejected] = tap.wait_for(pipeline_event("model_rejected"))
    assert rejected["payload"]["details"]["version"] == "2"
    registered = tap.wait_for(pipeline_event("model_registered"), count=3)
    assert sorted(e["payload"]["details"]["version"] for e in registered) == ["1", "2", "3"]


def test_a_champion_from_another_snapshot_is_rescored_on_the_challengers_test_split(
    context: RegistryContext, dataset: str, stand_in: Callable[..., dict[str, Any]], mlflow_client: Any
) -> None:
    name = registered_model_name(dataset, "classification")
    register_and_promote(
        stand_in(dataset=dataset, quality="medium", snapshot_id="snap-a"),
        context,
        dag_id="d",
        dag_run_id="a",
        code_version="x",
    )
    # A new snapshot standardises x1 differently: the champion sees the raw values recovered from the new split.
    better = register_and_promote(
        stand_in(dataset=dataset, quality="good", snapshot_id="snap-b", x1_mean=0.7, seed=1),
        context,
        dag_id="d",
        dag_run_id="b",
        code_version="x",
    )
    assert better["decision"] == "promoted" and "re-scored" in better["reason"]
    assert better["value"] == 1.0 and 0.7 < better["champion_value"] < 0.95
    worse = register_and_promote(
        stand_in(dataset=dataset, quality="medium", snapshot_id="snap-c", seed=2),
        context,
        dag_id="d",
        dag_run_id="c",
        code_version="x",
    )
    assert worse["decision"] == "rejected" and "re-scored" in worse["reason"] and worse["champion_value"] == 1.0
    assert champion(mlflow_client, name) == better["version"]


def test_backfills_never_move_the_champion_unless_allowed(
    context: RegistryContext, dataset: str, stand_in: Callable[..., dict[str, Any]], mlflow_client: Any
) -> None:
    name = registered_model_name(dataset, "regression")
    register_and_promote(
        stand_in(dataset=dataset, task="regression", quality="medium"),
        context,
        dag_id="d",
        dag_run_id="live",
        code_version="x",
    )
    good = stand_in(dataset=dataset, task="regression", quality="good")
    held = register_and_promote(good, context, dag_id="d", dag_run_id="backfill-1", code_version="x", is_backfill=True)
    assert held["decision"] == "rejected" and "backfill" in held["reason"] and champion(mlflow_client, name) == "1"
    allowed = register_and_promote(
        good,
        context,
        dag_id="d",
        dag_run_id="backfill-2",
        code_version="x",
        is_backfill=True,
        allow_backfill_promotion=True,
    )
    assert allowed["decision"] == "promoted" and allowed["metric"] == "rmse"
    assert champion(mlflow_client, name) == allowed["version"]
    assert mlflow_client.get_model_version(name, allowed["version"]).tags["is_backfill"] == "true"


def test_concurrent_registrations_keep_the_aliases_consistent(
    settings: Any,
    dataset: str,
    stand_in: Callable[..., dict[str, Any]],
    mlflow_client: Any,
    s3_client: Any,
) -> None:
    name = registered_model_name(dataset, "classification")
    evaluations = {quality: stand_in(dataset=dataset, quality=quality) for quality in ("bad", "medium", "good")}
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(evaluations))

    def run(quality: str) -> None:
        # Each thread is its own task: its own context, so its own lock owner.
        context = RegistryContext(mlflow=settings.mlflow, s3=settings.s3, lake=settings.lake, kafka=settings.kafka)
        try:
            barrier.wait()
            results[quality] = register_and_promote(
                evaluations[quality], context, dag_id="d", dag_run_id=f"concurrent-{quality}", code_version="x"
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
    assert champion(mlflow_client, name) == results["good"]["version"]
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
    assert versions[challenger][REGISTRATION_TAG] == "complete"
    locks = list_keys(S3Uri(settings.lake.lake_bucket, "locks/registry/"), s3_client)
    assert not any(obj["Key"].endswith(f"/{name}.lock") for obj in locks)  # every lock was released


def test_rollback_from_the_command_line(
    context: RegistryContext,
    dataset: str,
    stand_in: Callable[..., dict[str, Any]],
    tap: EventTap,
    mlflow_client: Any,
    stack_env: dict[str, str],
) -> None:
    name = registered_model_name(dataset, "classification")
    for index, quality in enumerate(("medium", "good")):
        register_and_promote(
            stand_in(dataset=dataset, quality=quality), context, dag_id="d", dag_run_id=f"r{index}", code_version="x"
        )
    assert champion(mlflow_client, name) == "2"

    def promote_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ml", "promote", "--model", name, *args],
            cwd=PROJECT_ROOT,
            env=stack_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    result = promote_command("--version", "1", "--reason", "v2 misbehaves in production")
    assert result.returncode == 0, result.stderr[-3000:]
    assert champion(mlflow_client, name) == "1"
    tags = mlflow_client.get_model_version(name, "1").tags
    assert tags["rollback.from_version"] == "2" and tags["rollback.reason"] == "v2 misbehaves in production"
    [event] = tap.wait_for(
        lambda t, e: (
            t == MODEL_PROMOTED.name
            and e["payload"]["model_name"] == name
            and e["payload"]["reason"] == "v2 misbehaves in production"
        )
    )
    assert (event["payload"]["version"], event["payload"]["previous_version"]) == ("1", "2")
    missing = promote_command("--version", "99")  # no such version: a clear error, no change
    assert missing.returncode != 0 and "has no version or alias '99'" in missing.stderr
    assert champion(mlflow_client, name) == "1"
