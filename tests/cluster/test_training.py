"""`mlops_training` on the cluster profile, a data-parallel trial across both Ray nodes, and evidence from the engines
themselves that the work was distributed: Spark's master, Ray's state API, the Hive metastore used by two
applications at once, metadata in PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from ml.settings import Settings
from stack.demo import AirflowApi


def is_class(actor: dict[str, Any], name: str) -> bool:
    """Whether a state API actor is of class `name`: Ray names it by its qualified name or not, from one job to the
    next (the same Tune trial was `ImplicitFunc` in one run, `wrap_function.<locals>.ImplicitFunc` in the next)."""
    return str(actor["class_name"]).rsplit(".", 1)[-1] == name


def test_the_run_succeeds_on_the_clusters(cluster_run: dict[str, Any]) -> None:
    assert cluster_run["state"] == "success", f"run {cluster_run['run_id']} ended {cluster_run['state']}"


def test_spark_ran_the_preprocessing_on_both_workers(cluster_run: dict[str, Any]) -> None:
    from stack.cluster import spark_master_state, spark_worker_state
    from stack.config import SPARK_WORKER_UI_PORTS

    master = spark_master_state()
    apps = [app for app in master["completedapps"] if app["name"].startswith(f"preprocess-{cluster_run['dataset']}")]
    assert len(apps) == 1 and apps[0]["state"] == "FINISHED", apps
    app_id = apps[0]["id"]
    for port in SPARK_WORKER_UI_PORTS:
        worker = spark_worker_state(port)
        assert app_id in {executor["appid"] for executor in worker["finishedexecutors"]}, (
            f"no executor of {app_id} ran on the worker at :{port}"
        )


def test_ray_ran_the_trials_on_both_nodes(cluster_run: dict[str, Any], airflow_api: AirflowApi) -> None:
    from stack.cluster import ray_state
    from stack.config import stack_paths

    paths = stack_paths()
    nodes = {node["node_id"] for node in ray_state(paths, "nodes") if node["state"] == "ALIVE"}
    assert len(nodes) == 2
    # The tune task is a Ray driver job of its own, whose entrypoint names the Airflow task instance.
    run = quote(cluster_run["run_id"])
    tune = airflow_api.request("GET", f"/api/v2/dags/mlops_training/dagRuns/{run}/taskInstances/tune_models")
    jobs = ray_state(paths, "jobs", detail=True)
    drivers = {job["job_id"] for job in jobs if str(tune["id"]) in str(job.get("entrypoint"))}
    actors = ray_state(paths, "actors", detail=True)
    trials = [actor for actor in actors if is_class(actor, "ImplicitFunc") and actor["job_id"] in drivers]
    seen = {
        "tune task instance": (tune["id"], tune.get("try_number")),
        "jobs": [(job["job_id"], job.get("start_time"), job.get("end_time"), job.get("entrypoint")) for job in jobs],
        "actors": sorted({(actor["class_name"], actor["job_id"], actor["state"]) for actor in actors}),
    }
    assert trials, f"no trial actor of this run in Ray's state API: {seen}"
    assert {actor["node_id"] for actor in trials} == nodes


def test_the_metadata_is_in_postgresql(cluster_run: dict[str, Any], airflow_api: AirflowApi) -> None:
    from ml.preprocess.hive import hive_table_name
    from ml.registry.conventions import registered_model_name
    from stack.cluster import postgres_connect
    from stack.config import stack_paths

    paths = stack_paths()
    registered = airflow_api.xcom(cluster_run["run_id"], "register_best_model")
    queries = {
        "airflow": ("SELECT state FROM dag_run WHERE run_id = %s", (cluster_run["run_id"],)),
        "mlflow": (
            "SELECT max(version) FROM model_versions WHERE name = %s",
            (registered_model_name(cluster_run["dataset"], "classification"),),
        ),
        "metastore": (
            'SELECT count(*) FROM "TBLS" WHERE "TBL_NAME" = %s',
            (hive_table_name(cluster_run["dataset"]).split(".")[1],),
        ),
    }
    found = {}
    for database, (sql, args) in queries.items():
        connection = postgres_connect(paths, database)
        try:
            with connection.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.execute(sql, args)
                found[database] = cursor.fetchone()[0]
        finally:
            connection.close()  # type: ignore[attr-defined]
    assert found == {"airflow": "success", "mlflow": int(registered["version"]), "metastore": 1}


def test_two_spark_applications_use_the_hive_table_at_once(
    cluster_run: dict[str, Any], airflow_api: AirflowApi, stack_env: dict[str, str]
) -> None:
    from ml.preprocess.hive import hive_table_name
    from stack.cluster import spark_master_state
    from tests.support.hive import hive_query, hive_session

    preprocess = airflow_api.xcom(cluster_run["run_id"], "preprocess_with_spark")
    snapshot_id = airflow_api.xcom(cluster_run["run_id"], "ingest_raw_data")["snapshot_id"]
    sql = f"SELECT count(*) FROM {hive_table_name(cluster_run['dataset'])} WHERE snapshot_id = '{snapshot_id}'"
    one_core_each = {**stack_env, "MLOPS_SPARK_CORES_MAX": "1"}  # both fit on the two-core cluster
    with hive_session(sql, one_core_each, "tests-hive-holder") as (held_count, holder_id):
        count, reader_id = hive_query(sql, one_core_each, "tests-hive-reader")
        master = spark_master_state()
        assert holder_id in {app["id"] for app in master["activeapps"]}, "the holder's session was still open"
        assert {app["id"]: app["state"] for app in master["completedapps"]}.get(reader_id) == "FINISHED"
    assert int(held_count) == int(count) == sum(preprocess["rows"].values()) > 300


def test_a_data_parallel_trial_spans_both_ray_nodes(cluster_stack: dict[str, str], settings: Settings) -> None:
    """Two 1-CPU DDP workers of one trial on the head and the worker node (one CPU each): gloo across the nodes,
    the splits streamed from S3 by each worker, the best checkpoint kept by the trial's Train run."""
    import time

    from ml.storage import S3Uri
    from stack.cluster import ray_state
    from stack.config import stack_paths
    from tests.integration.ml.tune.support import search, small_search
    from tests.support.synthetic_features import write_synthetic_features

    features = write_synthetic_features(settings, "classification", 2, rows={"train": 4000, "validation": 500})
    started_ms = int(time.time() * 1000)
    try:
        config = small_search(
            features.dataset,
            features.snapshot_id,
            f"cluster-ddp-{uuid.uuid4().hex[:8]}",
            num_samples=1,
            max_epochs=2,
            workers_per_trial=2,
            cache_mb=0.01,  # over the cap: each worker streams its shard
        )
        result = search(config, settings, mlflow=False, kafka=False)
        assert (result.num_trials, result.num_errored) == (1, 0)
        assert "/train/checkpoint_epoch_" in S3Uri.parse(result.best_checkpoint_uri).key
        paths = stack_paths()
        nodes = {node["node_id"] for node in ray_state(paths, "nodes") if node["state"] == "ALIVE"}
        # This search is a Ray driver job of its own; a dead actor's detail has no start time of its own.
        drivers = {job["job_id"] for job in ray_state(paths, "jobs", detail=True) if job["start_time"] >= started_ms}
        workers = [
            actor
            for actor in ray_state(paths, "actors", detail=True)
            if is_class(actor, "RayTrainWorker") and actor["job_id"] in drivers
        ]
        assert len(workers) == 2 and {actor["node_id"] for actor in workers} == nodes, workers
    finally:
        features.cleanup()
