"""dags/mlops_training.py end to end under a real Airflow (scheduler, triggerer, API server) against the real local
stack, Airflow's tasks reaching it only through connections (see tests/e2e/conftest.py).

One triggered run on a dataset the project never saw (a fresh name), then every effect is checked where it lives:
the snapshot and features in S3, the Hive table, nested trial runs in MLflow, the registered version with lineage and
the champion alias, schema-valid events in Kafka, and the tuning report page. A second run on unchanged data must
take the skip path. Concurrency: the first run shares its time with a run on another dataset (see conftest), and two
runs triggered together on one new dataset must leave one consistent model and alias history. Last, no secret in
logs, Airflow's database or Airflow's processes' environments.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import pytest

from ml.settings import Settings
from stack.demo import AIRFLOW, DAG_ID, AirflowApi, follow, trigger, trigger_and_follow
from tests.e2e.conftest import MAX_EPOCHS, NUM_SAMPLES


def _task_states(api: AirflowApi, run_id: str) -> dict[str, str]:
    tis = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id)}/taskInstances")["task_instances"]
    return {ti["task_id"]: ti["state"] for ti in tis}


def test_run_succeeds_through_the_training_branch(airflow_api: AirflowApi, first_run: dict[str, Any]) -> None:
    states = _task_states(airflow_api, first_run["run_id"])
    assert first_run["state"] == "success", states
    assert states["preprocess_with_spark"] == "success"
    assert states["tune_models"] == "success"
    assert states["register_best_model"] == "success"
    assert states["reuse_existing_model"] == "skipped"


def test_the_tune_task_log_shows_progress_and_no_error_lines(first_run: dict[str, Any]) -> None:
    """What a user reads in the UI: per-trial progress at INFO, and no ERROR line from a search that went well (Ray's
    and Optuna's logs keep their levels; Ray Train's per-epoch checkpoint notices are not forwarded)."""
    from stack.config import stack_paths

    folder = stack_paths().airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={first_run['run_id']}"
    lines = [
        json.loads(line)
        for line in (folder / "task_id=tune_models" / "attempt=1.log").read_text().splitlines()
        if line.startswith("{")
    ]
    events = [str(line.get("event", "")) for line in lines]
    assert sum("finished after" in event for event in events) == NUM_SAMPLES, events
    assert any(event.startswith("search ") and " done in " in event for event in events), events
    errors = [line for line in lines if line.get("level") in ("error", "critical")]
    assert not errors, errors[:5]


def test_snapshot_features_and_hive_table(
    airflow_api: AirflowApi,
    first_run: dict[str, Any],
    settings: Settings,
    s3_client: Any,
    stack_env: dict[str, str],
) -> None:
    from ml.features import FeatureSpec
    from ml.preprocess.hive import hive_table_name
    from ml.storage import exists, features_uri, list_keys, read_json, snapshot_uri

    ingest = airflow_api.xcom(first_run["run_id"], "ingest_raw_data")
    snapshot_id = ingest["snapshot_id"]
    manifest = read_json(
        snapshot_uri(settings.lake, first_run["dataset"], snapshot_id).join("manifest.json"), s3_client
    )
    assert manifest["rows"] == 344 and manifest["target"] == "species"
    out = features_uri(settings.lake, first_run["dataset"], snapshot_id)
    body = s3_client.get_object(Bucket=out.bucket, Key=out.join("feature_spec.json").key)["Body"].read()
    spec = FeatureSpec.from_json(body)
    for split in ("train", "validation", "test"):
        assert any(obj["Key"].endswith(".parquet") for obj in list_keys(out.join(split), s3_client))
    assert exists(out.join("feature_spec.json"), s3_client)
    preprocess = airflow_api.xcom(first_run["run_id"], "preprocess_with_spark")
    assert preprocess["features_uri"] == str(out) and preprocess["rows"] == spec.rows

    from tests.support.hive import hive_scalar

    table = hive_table_name(first_run["dataset"])
    count = int(hive_scalar(f"SELECT count(*) FROM {table} WHERE snapshot_id = '{snapshot_id}'", stack_env))
    assert count == sum(spec.rows.values()) > 300


def test_mlflow_has_nested_trials_and_a_champion_with_lineage(
    airflow_api: AirflowApi, first_run: dict[str, Any], mlflow_client: Any
) -> None:
    from ml.lineage import code_version
    from ml.registry.conventions import registered_model_name

    client = mlflow_client
    experiment = client.get_experiment_by_name(first_run["dataset"])
    parents = client.search_runs([experiment.experiment_id], f"tags.`mlops.dag_run_id` = '{first_run['run_id']}'")
    parent = next(run for run in parents if "mlflow.parentRunId" not in run.data.tags)
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == NUM_SAMPLES
    for child in children:
        assert child.data.params, "each trial logs its hyper-parameters"
        val_metric = next(k for k in child.data.metrics if k.startswith("val_"))
        history = client.get_metric_history(child.info.run_id, val_metric)
        assert 1 <= len(history) <= MAX_EPOCHS

    name = registered_model_name(first_run["dataset"], "classification")
    champion = client.get_model_version_by_alias(name, "champion")
    tags = champion.tags
    ingest = airflow_api.xcom(first_run["run_id"], "ingest_raw_data")
    assert tags["snapshot_id"] == ingest["snapshot_id"]
    assert tags["dag_run_id"] == first_run["run_id"]
    assert tags["dag_id"] == DAG_ID
    assert tags["code_version"] == code_version()
    assert tags["feature_spec_uri"].endswith("feature_spec.json")
    assert tags["search_space_hash"]
    registered = airflow_api.xcom(first_run["run_id"], "register_best_model")
    assert str(registered["version"]) == str(champion.version)
    # The tuned model beats the majority-class baseline on the untouched test split.
    evaluation = registered["evaluation"]
    assert evaluation["test_metrics"]["accuracy"] > evaluation["baseline_test_metrics"]["accuracy"] + 0.2


def test_the_asset_views_show_raw_data_snapshot_features_and_model_version(
    airflow_api: AirflowApi, first_run: dict[str, Any]
) -> None:
    """Lineage in Airflow (plugins/mlops_airflow/lineage.py): the run's tasks emitted one asset event each through
    their aliases, each naming the asset it was made from; the raw bucket's asset is read by the ingest task."""
    run_id, dataset = first_run["run_id"], first_run["dataset"]
    events = airflow_api.request(
        "GET", f"/api/v2/assets/events?source_dag_id={DAG_ID}&source_run_id={quote(run_id)}&limit=100"
    )["asset_events"]
    by_task = {event["source_task_id"]: event for event in events}
    snapshot_id = airflow_api.xcom(run_id, "ingest_raw_data")["snapshot_id"]
    registered = airflow_api.xcom(run_id, "register_best_model")
    snapshot, features, model = (
        by_task["ingest_raw_data"],
        by_task["preprocess_with_spark"],
        by_task["register_best_model"],
    )
    assert snapshot["name"] == f"snapshot/{dataset}/{snapshot_id}"
    assert snapshot["extra"]["raw_uri"] == first_run["conf"]["raw_uri"]
    assert features["name"] == f"features/{dataset}/{snapshot_id}"
    assert features["extra"]["made_from"] == snapshot["name"]
    assert model["name"] == f"model/{registered['model_name']}/{registered['version']}"
    assert model["uri"] == f"models:/{registered['model_name']}/{registered['version']}"
    assert model["extra"]["made_from"] == features["name"]

    [raw] = airflow_api.request("GET", "/api/v2/assets?name_pattern=raw_uploads")["assets"]
    assert {(task["dag_id"], task["task_id"]) for task in raw["consuming_tasks"]} >= {(DAG_ID, "ingest_raw_data")}
    assert [dag["dag_id"] for dag in raw["scheduled_dags"]] == ["raw_data_events"]
    assert [watcher["name"] for watcher in raw["watchers"]] == ["s3_notifications"]


def _consume_all(settings: Settings, topic: str) -> list[tuple[str, dict[str, Any]]]:
    from ml.clients import kafka_consumer

    consumer = kafka_consumer(
        settings.kafka,
        auto_offset_reset="earliest",
        group_id=f"mlops-e2e-{uuid.uuid4().hex[:8]}",  # the pipeline's user may use groups named mlops-*
        consumer_timeout_ms=5000,
    )
    consumer.subscribe([topic])
    try:
        return [(record.key.decode() if record.key else "", json.loads(record.value)) for record in consumer]
    finally:
        consumer.close()


def test_kafka_topics_carry_schema_valid_events(
    airflow_api: AirflowApi, first_run: dict[str, Any], settings: Settings
) -> None:
    from ml.events.envelope import validate_envelope
    from ml.topics import MODEL_PROMOTED, PIPELINE_EVENTS, TRAINING_METRICS, TRAINING_METRICS_V2

    run_id = first_run["run_id"]
    metrics = [(k, m) for k, m in _consume_all(settings, TRAINING_METRICS.name) if m.get("dag_run_id") == run_id]
    for _, message in metrics:
        validate_envelope(message, TRAINING_METRICS)
    trials = {m["payload"]["trial_id"] for _, m in metrics}
    assert len(trials) == NUM_SAMPLES
    # One key per trial-epoch (a re-delivery would repeat a key, never invent one), epochs counted from 1 per trial.
    epochs = {(m["payload"]["trial_id"], m["payload"]["epoch"]) for _, m in metrics}
    assert len({key for key, _ in metrics}) == len(epochs)
    for trial in trials:
        seen = sorted(epoch for t, epoch in epochs if t == trial)
        assert seen == list(range(1, len(seen) + 1)) and len(seen) <= MAX_EPOCHS, (trial, seen)
    # v2 carries the same trial-epochs, each saying which dataset, snapshot and model it is about.
    snapshot_id = airflow_api.xcom(run_id, "ingest_raw_data")["snapshot_id"]
    with_subject = [
        (k, m) for k, m in _consume_all(settings, TRAINING_METRICS_V2.name) if m.get("dag_run_id") == run_id
    ]
    assert sorted(k for k, _ in with_subject) == sorted(k for k, _ in metrics)
    for _, message in with_subject:
        validate_envelope(message, TRAINING_METRICS_V2)
        subject = {name: message["payload"][name] for name in ("dataset", "snapshot_id", "task", "model_name")}
        assert subject == {
            "dataset": first_run["conf"]["dataset"],
            "snapshot_id": snapshot_id,
            "task": "classification",
            "model_name": f"{first_run['conf']['dataset']}-classification",
        }

    events = [m for _, m in _consume_all(settings, PIPELINE_EVENTS.name) if m.get("dag_run_id") == run_id]
    for message in events:
        validate_envelope(message, PIPELINE_EVENTS)
    kinds = {(m["payload"]["event"], m["payload"]["task_id"]) for m in events}
    assert ("task_succeeded", "tune_models") in kinds
    assert ("run_summary", "publish_run_summary") in kinds
    assert any(event == "run_succeeded" for event, _ in kinds)
    [summary] = [m["payload"]["details"] for m in events if m["payload"]["event"] == "run_summary"]
    assert summary["outcome"] == "trained" and summary["num_trials"] == NUM_SAMPLES
    assert summary["snapshot_id"] == snapshot_id

    promoted = [m for _, m in _consume_all(settings, MODEL_PROMOTED.name) if m.get("dag_run_id") == run_id]
    assert promoted, "the first model of a dataset becomes champion, and that is published"
    validate_envelope(promoted[0], MODEL_PROMOTED)
    assert promoted[0]["payload"]["alias"] == "champion"


def test_tuning_report_page_lists_the_trials(airflow_api: AirflowApi, first_run: dict[str, Any]) -> None:
    import urllib.error
    import urllib.request

    url = f"{AIRFLOW}/mlops/tuning-report?run_id={quote(first_run['run_id'])}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code == 401, "the report is behind Airflow's login"
    request = urllib.request.Request(url, headers={"Authorization": airflow_api.headers["Authorization"]})
    with urllib.request.urlopen(request, timeout=30) as response:
        page = response.read().decode()
    assert page.count("<tr>") == NUM_SAMPLES + 1  # header + one row per trial
    assert "<svg" in page and "Learning curves" in page


def test_second_run_on_unchanged_data_takes_the_skip_path(airflow_api: AirflowApi, first_run: dict[str, Any]) -> None:
    run_id, state = trigger_and_follow(airflow_api, first_run["conf"], timeout_s=600)
    states = _task_states(airflow_api, run_id)
    assert state == "success", states
    assert states["reuse_existing_model"] == "success"
    for skipped in ("preprocess_with_spark", "tune_models", "register_best_model"):
        assert states[skipped] == "skipped", states
    summary = airflow_api.xcom(run_id, "publish_run_summary")
    assert summary["outcome"] == "reused_existing_model"
    first = airflow_api.xcom(first_run["run_id"], "register_best_model")
    assert summary["existing_model"] == {"model": first["model_name"], "version": str(first["version"])}
    assert summary["snapshot_id"] == airflow_api.xcom(first_run["run_id"], "ingest_raw_data")["snapshot_id"]


def _run_interval(api: AirflowApi, run_id: str) -> tuple[str, str]:
    run = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id)}")
    return run["start_date"], run["end_date"]


def test_a_run_on_another_dataset_at_the_same_time_has_its_own_model(
    airflow_api: AirflowApi, first_run: dict[str, Any], mlflow_client: Any
) -> None:
    from ml.registry.conventions import registered_model_name

    other = first_run["other"]
    states = _task_states(airflow_api, other["run_id"])
    assert other["state"] == "success", states
    assert states["register_best_model"] == "success"
    (start, end), (other_start, other_end) = (
        _run_interval(airflow_api, r) for r in (first_run["run_id"], other["run_id"])
    )
    assert start < other_end and other_start < end, "the two runs did not overlap"

    client = mlflow_client
    for dataset, task, run_id in (
        (first_run["dataset"], "classification", first_run["run_id"]),
        (other["dataset"], "regression", other["run_id"]),
    ):
        champion = client.get_model_version_by_alias(registered_model_name(dataset, task), "champion")
        assert champion.tags["dag_run_id"] == run_id and champion.tags["dataset"] == dataset
        assert champion.tags["mlops.registration"] == "complete"
        assert airflow_api.xcom(run_id, "ingest_raw_data")["snapshot_id"] == champion.tags["snapshot_id"]
    evaluation = airflow_api.xcom(other["run_id"], "register_best_model")["evaluation"]
    assert evaluation["task"] == "regression" and evaluation["test_metrics"]["rmse"] > 0
    assert "/train/checkpoint_epoch_" in evaluation["checkpoint_uri"]  # trained data-parallel by Ray Train


def test_two_runs_at_once_on_the_same_dataset_keep_the_aliases_consistent(
    airflow_api: AirflowApi, first_run: dict[str, Any], settings: Settings, s3_client: Any, mlflow_client: Any
) -> None:
    """Both runs ingest the same snapshot; the Spark pool and the features' spec let only one preprocess; each run
    either registers its own version or reuses one; the champion is the best version, every alias points at a
    complete version, and no run registered twice."""
    from ml.datasets import load_shipped, upload_frame
    from ml.registry.conventions import REGISTRATION_TAG, registered_model_name
    from ml.storage import S3Uri

    raw = settings.lake.raw_bucket
    dataset = f"e2e_same_{uuid.uuid4().hex[:8]}"
    upload_frame(load_shipped("penguins"), S3Uri(raw, f"e2e/{dataset}/penguins.csv"), s3_client)
    conf = {**first_run["conf"], "raw_uri": f"s3://{raw}/e2e/{dataset}/", "dataset": dataset}
    run_ids = [trigger(airflow_api, conf), trigger(airflow_api, conf)]
    states = follow(airflow_api, run_ids, timeout_s=1800)
    tasks = {run_id: _task_states(airflow_api, run_id) for run_id in run_ids}
    assert set(states.values()) == {"success"}, tasks
    snapshots = {airflow_api.xcom(run_id, "ingest_raw_data")["snapshot_id"] for run_id in run_ids}
    assert len(snapshots) == 1, "the same data gave two snapshots"

    client = mlflow_client
    name = registered_model_name(dataset, "classification")
    found = client.search_model_versions(f"name = '{name}'")
    versions = {v.version: client.get_model_version(name, v.version) for v in found}
    registered = [run_id for run_id in run_ids if tasks[run_id]["register_best_model"] == "success"]
    assert registered, tasks
    for run_id in run_ids:
        if run_id not in registered:
            assert tasks[run_id]["reuse_existing_model"] == "success", tasks[run_id]
    assert sorted(v.tags["dag_run_id"] for v in versions.values()) == sorted(registered), "a run registered twice"
    assert all(v.tags[REGISTRATION_TAG] == "complete" for v in versions.values())

    champion = client.get_model_version_by_alias(name, "champion")
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert champion.version in versions and challenger.version in versions
    best = max(float(v.tags["test.accuracy"]) for v in versions.values())
    assert float(champion.tags["test.accuracy"]) == best
    # Each promotion replaced the champion of its moment: the promoted versions form one chain from the first.
    replaced = {
        v.tags["gate.champion_version"]: version
        for version, v in versions.items()
        if v.tags.get("gate.decision") in ("promoted", "first_model")
    }
    chain, current = [], ""
    while current in replaced:
        current = replaced.pop(current)
        chain.append(current)
    assert not replaced and chain[-1] == champion.version, (chain, {k: v.tags for k, v in versions.items()})


def test_no_secret_in_task_logs_xcom_or_the_metadata_database(
    airflow_api: AirflowApi, first_run: dict[str, Any]
) -> None:
    """After the runs above: the S3 secret key, the Airflow admin password and the Kafka password of the pipeline's
    user (kafka_default's) appear in no task log, in no service log of the stack (Airflow's own output included), and
    in no table of Airflow's metadata database (XCom, rendered template fields, run conf, triggers, audit log, ...;
    connections are stored encrypted with the Fernet key)."""
    import sqlite3

    from stack.config import stack_paths, stack_secrets
    from stack.demo import admin_password

    paths = stack_paths()
    credentials = json.loads(paths.credentials_file.read_text())
    secrets = {"S3 secret key": credentials["secret_key"], "Airflow admin password": admin_password()}
    secrets["Kafka pipeline password"] = stack_secrets(paths)["kafka_pipeline_password"]  # kafka_default's
    assert all(len(value) >= 8 for value in secrets.values())
    home = paths.airflow_home
    logs = [path for folder in (home / "logs", paths.logs) for path in folder.rglob("*") if path.is_file()]
    assert any(f"dag_id={DAG_ID}" in str(path) for path in logs), "no task log found to scan"
    for path in logs:
        text = path.read_bytes().decode(errors="replace")
        for what, value in secrets.items():
            assert value not in text, f"the {what} is in {path}"
    database = sqlite3.connect(f"file:{home / 'airflow.db'}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"xcom", "rendered_task_instance_fields", "dag_run"} <= set(tables)
        for table in tables:
            for row in database.execute(f'SELECT * FROM "{table}"'):  # table names from sqlite_master
                text = " ".join(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in row)
                for what, value in secrets.items():
                    assert value not in text, f"the {what} is in Airflow's {table} table"
    finally:
        database.close()


def test_airflow_runs_without_endpoint_or_key_variables(airflow_api: AirflowApi, first_run: dict[str, Any]) -> None:
    """Airflow's processes (the API server, scheduler, triggerer, DAG processor and what they started) have none of
    the stack's endpoint and key variables (stack.services.AIRFLOW_UNSET) and no S3 key in their environments: the
    runs above reached S3, Kafka, MLflow and Spark through connections only."""
    import os
    from pathlib import Path

    from stack.config import stack_paths
    from stack.services import AIRFLOW, AIRFLOW_UNSET

    paths = stack_paths()
    leader = AIRFLOW.running_pid(paths)
    assert leader is not None, "Airflow is not running from this stack"
    secret = json.loads(paths.credentials_file.read_text())["secret_key"].encode()
    environments: dict[int, list[bytes]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) == leader:
                environments[int(proc.name)] = (proc / "environ").read_bytes().split(b"\0")
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue  # ended meanwhile, or not ours to read
    assert leader in environments and len(environments) > 1, environments.keys()
    for pid, entries in environments.items():
        names = {entry.split(b"=", 1)[0].decode(errors="replace") for entry in entries if entry}
        assert not names & set(AIRFLOW_UNSET), (pid, sorted(names & set(AIRFLOW_UNSET)))
        assert not any(secret in entry for entry in entries), f"the S3 secret key is in process {pid}'s environment"
    # (A process that is exiting shows an empty environment: the lake bucket is checked on the leader.)
    leader_names = {entry.split(b"=", 1)[0] for entry in environments[leader] if entry}
    assert b"AIRFLOW_VAR_MLOPS_LAKE_BUCKET" in leader_names, "the DAG's lake bucket variable"
