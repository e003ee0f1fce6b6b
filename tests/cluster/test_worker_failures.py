"""Faults on the cluster profile, from the engines' side: a Spark worker killed (SIGKILL to its process group: the
worker daemon and its executor) while the preprocessing job runs tasks on it, a Ray worker node killed while one of
its trials runs, and a job started while the metastore, the Spark master or PostgreSQL is down. Each killed service
is started again afterwards, so the stack is whole for the next test."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from ray import tune

from ml.settings import Settings
from stack.cluster import (
    METASTORE,
    POSTGRES,
    RAY_HEAD,
    RAY_WORKER,
    SPARK_MASTER,
    SPARK_WORKERS,
    spark_master_state,
    spark_worker_state,
)
from stack.config import SPARK_WORKER_UI_PORTS, stack_paths
from stack.process import Service, signal_group, wait_until

pytestmark = [
    # A recovered trial reports its re-run epoch again; OptunaSearch passes it on and Optuna ignores the repeated step.
    pytest.mark.filterwarnings("ignore:The reported value is ignored because this `step=.*` is already reported"),
]

# Enough rows that the preprocessing job's stages keep both executors busy for a while (a task is running on the
# worker when it is killed; the job's own log shows the retry on the other one).
SPARK_ROWS = 1_500_000


def _kill_group(service: Service) -> int:
    pid = service.running_pid(stack_paths())
    assert pid is not None, f"{service.name} is not running"
    signal_group(pid, signal.SIGKILL)
    return pid


@pytest.fixture
def restarted(cluster_stack: dict[str, str]) -> Iterator[list[Service]]:
    """Services a test kills or stops go here; they are started again (and waited for) afterwards."""
    stopped: list[Service] = []
    yield stopped
    for service in stopped:
        service.start(stack_paths(), cluster_stack)


@pytest.fixture(scope="module")
def large_snapshot(cluster_stack: dict[str, str], settings: Settings, s3_client: Any) -> tuple[str, str]:
    """A synthetic dataset of SPARK_ROWS rows, ingested: (dataset, snapshot id)."""
    from ml.datasets import synthetic, upload_frame
    from ml.ingest.config import IngestConfig
    from ml.ingest.snapshot import ingest
    from ml.storage import S3Uri

    dataset = f"cluster_faults_{uuid.uuid4().hex[:8]}"
    frame = synthetic(SPARK_ROWS, seed=7)
    parts = 4
    for part in range(parts):
        rows = frame.iloc[part * SPARK_ROWS // parts : (part + 1) * SPARK_ROWS // parts]
        upload_frame(
            rows, S3Uri(settings.lake.raw_bucket, f"cluster/{dataset}/part-{part}.parquet"), s3_client, "parquet"
        )
    raw_uri = f"s3://{settings.lake.raw_bucket}/cluster/{dataset}/"
    result = ingest(IngestConfig(raw_uri, dataset, "target", "classification"), s3=settings.s3, lake=settings.lake)
    return dataset, result.snapshot_id


def _executor_on(worker_port: int) -> str | None:
    """The app id of an executor that runs on the worker (the UI port names the worker), if any."""
    executors = spark_worker_state(worker_port).get("executors") or []
    return str(executors[0]["appid"]) if executors else None


def test_a_spark_worker_killed_mid_job_leaves_its_tasks_to_the_other_worker(
    large_snapshot: tuple[str, str], settings: Settings, s3_client: Any, restarted: list[Service]
) -> None:
    from ml.features import FeatureSpec
    from ml.preprocess.submit import run_preprocess
    from ml.storage import feature_spec_uri, features_uri, read_json

    dataset, snapshot_id = large_snapshot
    victim, victim_port = SPARK_WORKERS[1], SPARK_WORKER_UI_PORTS[1]
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(
            run_preprocess, dataset, snapshot_id, s3=settings.s3, lake=settings.lake, spark=settings.spark
        )
        # The executor on the victim exists once the job's application runs there; its tasks start right after.
        assert wait_until(lambda: job.done() or _executor_on(victim_port) is not None, 300, 0.5)
        assert not job.done(), "the job ended before it ran on the second worker: make SPARK_ROWS larger"
        app_id = _executor_on(victim_port)
        restarted.append(victim)
        _kill_group(victim)
        result = job.result(timeout=900)
    out = features_uri(settings.lake, dataset, snapshot_id)
    spec = FeatureSpec.from_dict(read_json(feature_spec_uri(out), s3_client))
    assert not result["skipped"] and result["rows"] == spec.rows
    assert sum(spec.rows.values()) + sum(spec.dropped.values()) == SPARK_ROWS, "no row lost with the worker"
    apps = {app["id"]: app for app in spark_master_state()["completedapps"]}
    assert apps[app_id]["state"] == "FINISHED"
    survivor = spark_worker_state(SPARK_WORKER_UI_PORTS[0])
    # The worker may not have moved the app's executor to its finished ones yet when the master says FINISHED.
    ran_here = survivor["executors"] + survivor["finishedexecutors"]
    assert app_id in {executor["appid"] for executor in ran_here}


# --- Ray: a worker node killed while one of its trials runs ------------------------------------------------------

# Tune pickles callbacks into the experiment state, so the callback keeps what it saw here (this test process).
SEEN: dict[str, Any] = {}


def _node_group(pid: int) -> int | None:
    """The process group of the Ray node that runs `pid`: Ray puts each worker process in a group of its own, so the
    node is the group (one `ray start`, as `make stack-up` started it) of the worker's nearest ancestor outside it."""
    try:
        while pid > 1:
            group = os.getpgid(pid)
            if group in (SEEN["worker_group"], SEEN["head_group"]):
                return group
            with open(f"/proc/{pid}/stat") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])  # the parent's pid
    except (ProcessLookupError, FileNotFoundError):
        return None
    return None


class KillWorkerNode(tune.Callback):
    """At the first result of a trial that runs on the Ray worker node, SIGKILLs the node (its process group: raylet
    and agents) and the trial's worker process: the node is gone as a machine would be."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        pid = result.get("pid")
        if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
            SEEN["results"].append((trial.trial_id, pid, None))
            return
        group = _node_group(pid)  # the trial's process reported just now; it may end right after
        SEEN["results"].append((trial.trial_id, pid, group))
        if not SEEN["killed"] and group == SEEN["worker_group"]:
            os.killpg(SEEN["worker_group"], signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
            SEEN["killed"].append(len(SEEN["results"]) - 1)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        SEEN["recovered"].append(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        SEEN["errored"].append(trial.trial_id)


def test_a_ray_worker_node_killed_mid_search_leaves_its_trials_to_the_head(
    cluster_stack: dict[str, str], settings: Settings, s3_client: Any, restarted: list[Service]
) -> None:
    from ml.storage import S3Uri, exists
    from tests.integration.ml.tune.support import search, small_search
    from tests.support.synthetic_features import write_synthetic_features

    worker_group = RAY_WORKER.running_pid(stack_paths())
    head_group = RAY_HEAD.running_pid(stack_paths())
    assert worker_group is not None and head_group is not None
    SEEN.clear()
    SEEN.update(worker_group=worker_group, head_group=head_group, results=[], killed=[], recovered=[], errored=[])
    features = write_synthetic_features(
        settings, "classification", 2, rows={"train": 3000, "validation": 500, "test": 500}
    )
    run_name = f"cluster-node-kill-{uuid.uuid4().hex[:8]}"
    # grace_period = patience = max_epochs: neither ASHA nor early stopping ends a trial before the node dies.
    config = small_search(
        features.dataset, features.snapshot_id, run_name, num_samples=2, max_epochs=4, grace_period=4, patience=4
    )
    restarted.append(RAY_WORKER)
    try:
        result = search(config, settings, mlflow=False, kafka=False, callbacks=[KillWorkerNode()])
        assert SEEN["killed"], f"no trial ran on the worker node: {SEEN['results']}"
        killed_at = SEEN["killed"][0]
        killed_trial = SEEN["results"][killed_at][0]
        assert killed_trial in SEEN["recovered"] and not SEEN["errored"], SEEN
        later = [group for trial, _, group in SEEN["results"][killed_at + 1 :] if trial == killed_trial]
        assert later and set(later) == {head_group}, f"the recovered trial went on on the head node: {SEEN['results']}"
        assert result.num_trials == 2 and result.num_errored == 0
        checkpoint = S3Uri.parse(result.best_checkpoint_uri)
        assert all(exists(checkpoint.join(name), s3_client) for name in ("model_state.pt", "model_config.json"))
    finally:
        features.cleanup()  # the features and the search's state under lake/tune/<dataset>


# --- a service down when a job starts -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", [METASTORE, SPARK_MASTER], ids=lambda service: service.name)
def test_a_job_started_while_a_cluster_service_is_down_fails_at_once_naming_it(
    service: Service,
    large_snapshot: tuple[str, str],
    settings: Settings,
    s3_client: Any,
    restarted: list[Service],
) -> None:
    from ml.preprocess.preflight import ClusterServiceUnreachable
    from ml.preprocess.submit import run_preprocess
    from ml.storage import features_uri, list_keys

    dataset, snapshot_id = large_snapshot
    out = features_uri(settings.lake, dataset, f"{snapshot_id}")
    before = sorted(obj["Key"] for obj in list_keys(out, s3_client))
    restarted.append(service)
    service.stop(stack_paths())
    address = settings.spark.metastore_uri if service is METASTORE else settings.spark.master
    with pytest.raises(ClusterServiceUnreachable, match=f"at {address} is not reachable"):
        run_preprocess(dataset, snapshot_id, s3=settings.s3, lake=settings.lake, spark=settings.spark, force=True)
    assert sorted(obj["Key"] for obj in list_keys(out, s3_client)) == before, "nothing written or removed"


def test_tasks_started_while_postgresql_is_down_fail_at_once_naming_it(
    large_snapshot: tuple[str, str],
    settings: Settings,
    s3_client: Any,
    restarted: list[Service],
) -> None:
    """PostgreSQL holds the metastore's and MLflow's databases: both services still accept connections without it,
    so a TCP check would pass and the clients' own retries would take minutes. The preflights ask each for one
    request that reads its database, and the task fails at once with the service, its address and its database's
    error; nothing is written. (Airflow itself needs PostgreSQL too, to schedule anything at all.)"""
    from ml.preflight import ServiceUnavailable, require_mlflow
    from ml.preprocess.preflight import ClusterServiceUnreachable
    from ml.preprocess.submit import run_preprocess
    from ml.storage import features_uri, list_keys

    dataset, snapshot_id = large_snapshot
    out = features_uri(settings.lake, dataset, snapshot_id)
    before = sorted(obj["Key"] for obj in list_keys(out, s3_client))
    restarted.append(POSTGRES)
    POSTGRES.stop(stack_paths())

    with pytest.raises(ClusterServiceUnreachable) as metastore_failure:
        run_preprocess(dataset, snapshot_id, s3=settings.s3, lake=settings.lake, spark=settings.spark, force=True)
    message = str(metastore_failure.value)
    print(f"\npreprocessing with PostgreSQL down: {message}")
    assert f"Hive metastore at {settings.spark.metastore_uri} accepts connections but cannot serve" in message
    assert "postgresql" in message.lower() or "did not answer" in message, message
    assert sorted(obj["Key"] for obj in list_keys(out, s3_client)) == before, "nothing written or removed"

    with pytest.raises(ServiceUnavailable) as mlflow_failure:
        require_mlflow(settings.mlflow)
    message = str(mlflow_failure.value)
    print(f"MLflow with PostgreSQL down: {message}")
    assert f"MLflow server at {settings.mlflow.tracking_uri} cannot serve requests (HTTP 5" in message
    assert "127.0.0.1" in message and "5432" in message, "the database's address, from MLflow's own error"
