"""The fault matrix (issue 14, item 7): each local-tier service (the S3 server, the Kafka broker, the MLflow server) is
stopped or killed at each stage of one pipeline run, and every cell asserts:

  * the stage fails with an error that names the service's address, or succeeds when it does not need the service;
  * nothing half-written is left that a later run would take for good (checked with the real S3 and MLflow once they
    are back): ingest leaves no manifest or `latest.json` without its data, preprocessing no `feature_spec.json`,
    tuning no `search_result.json`, registration no version reachable by an alias without its gate's tags;
  * the champion alias, whenever there is one, points at a version whose tags show the gate passed it
    (`ml.predictor.ungated_reason(tags) is None`), after every cell in which MLflow is up;
  * and, at the end, no Kafka event is lost: every event a stage reports as sent (acknowledged by the broker) is read
    back from the broker, and every one it could not send is reported as undelivered, never dropped silently.

The run is walked ONCE, stage by stage, in the order of the DAG (`MATRIX` below, one test per row): a stage's failing
cells are followed by its next cell, which is its retry (Airflow's task retry) once the faulted service is back, and
each stage ends with a cell that succeeds and feeds the next stage. So "the run succeeds on retry" is checked on the
state that the failed attempts really left behind, and no earlier stage is run again per cell (that keeps the file
within a few minutes). The rows depend on each other: run the file whole (`-x` stops at the first broken cell).

Each stage is called the way its Airflow operator calls it (plugins/mlops_airflow/operators.py) with settings given
explicitly (never this process's environment): ingest (`ml.ingest.snapshot.ingest`), the branch
(`SkipIfModelExistsOperator._existing_model`, through Airflow connections defined for the private servers),
preprocessing (spark-submit through `ml.preprocess.submit.run_preprocess`, local master, a Derby metastore in tmp),
tuning (the MLflow preflight, then `ml.tune.search.run_search` on a local Ray started under the project's
`ray_auth_scope`: 2 trials of 2 epochs) and registration (the preflight, `ml.evaluate.evaluate_best`,
`ml.registry.promote.register_and_promote`). Each attempt ends with the task_succeeded / task_failed event that the
DAG's callbacks (plugins/mlops_airflow/callbacks.py) publish; task_started is left out (it would add nothing but a
10 s timeout per attempt while the broker is down). The data is the shipped penguins dataset (ml.datasets), in two
CSV objects.

Every server here is a PRIVATE copy (tests/support/private_services.py) on free ports of 127.0.0.1, built as the
stack builds its own (SASL/SCRAM Kafka with ACLs, MLflow's basic-auth app, a Versity S3 gateway); the shared stack
(:9000, :9092, :5000, :8080) is never used, stopped or read. Servers are killed (SIGKILL: a crash) or stopped
(SIGTERM: a clean shutdown) by their own process group only. "During" a stage means at a point the stage itself
reaches (a wrapped client call or promote(), a Tune callback), never after a timed wait.

Cells that live elsewhere:
  * the S3 server killed while Spark writes the features, and the Kafka broker stopped mid-search until the search
    closes its publisher: tests/integration/test_faults.py
    (`test_preprocessing_fails_cleanly_when_the_s3_server_crashes_mid_write_and_its_retry_succeeds`,
    `test_metrics_survive_a_broker_outage_during_the_search`);
  * Ray trial workers killed: tests/integration/ml/tune/test_trial_failures.py;
  * the cluster tier (make test-cluster), tests/cluster/test_worker_failures.py: a Spark worker killed mid-job
    (`test_a_spark_worker_killed_mid_job_leaves_its_tasks_to_the_other_worker`), a Ray worker node killed
    mid-search (`test_a_ray_worker_node_killed_mid_search_leaves_its_trials_to_the_head`), PostgreSQL down when tasks
    start (`test_tasks_started_while_postgresql_is_down_fail_at_once_naming_it`), the metastore or the Spark master
    down at job start (`test_a_job_started_while_a_cluster_service_is_down_fails_at_once_naming_it`), and the
    Airflow scheduler killed while the tune task runs (tests/cluster/test_scheduler_failure.py,
    `test_a_run_survives_its_scheduler_killed_mid_task`).
Not covered anywhere yet: the S3 server or MLflow killed in the middle of a search (their clients' retries make it
neither cheap nor deterministic here).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from ml.settings import KafkaSettings, LakeSettings, MlflowSettings, RaySettings, S3Settings, SparkSettings
from stack.config import stack_paths
from tests.support.kafka_topics import topic_messages
from tests.support.private_services import (
    PrivateKafka,
    PrivateMlflow,
    PrivateServer,
    private_mlflow,
    private_s3,
    running_private_kafka,
)

DAG_ID = "mlops_training"
DATASET = "penguins"
TARGET = "species"
RUN_ID = f"manual__fault-matrix-{uuid.uuid4().hex[:8]}"
RAW_URI = f"s3://raw/{DATASET}/"
MODEL = f"{DATASET}-classification"

pytestmark = [
    # A recovered trial may report an epoch again; Optuna ignores the repeated step.
    pytest.mark.filterwarnings("ignore:The reported value is ignored because this `step=.*` is already reported"),
]


# --------------------------------------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------------------------------------

FAILS = "fails, naming the service's address"
SUCCEEDS = "succeeds"


@dataclasses.dataclass(frozen=True)
class Cell:
    service: str  # s3, kafka, mlflow (or several: the stage needs none of them)
    stage: str
    fault: str
    expected: str

    @property
    def id(self) -> str:
        return f"{self.stage}-{self.service}-{self.fault}".replace(" ", "_").replace("+", "_and_")


MATRIX = [
    Cell("s3", "ingest", "killed after the first copy", FAILS),
    Cell("s3", "ingest", "stopped before", FAILS),
    Cell("kafka+mlflow", "ingest", "stopped before", SUCCEEDS),  # the retry; kafka and mlflow stay down
    Cell("s3", "preprocess", "stopped before", FAILS),
    Cell("kafka+mlflow", "preprocess", "still stopped", SUCCEEDS),  # the retry; then kafka comes back
    Cell("mlflow", "branch", "still stopped", FAILS),  # then mlflow comes back, and its retry trains
    Cell("s3", "tune", "stopped before", FAILS),
    Cell("mlflow", "tune", "stopped before", FAILS),
    Cell("kafka", "tune", "stopped before, back during", SUCCEEDS),  # the retry
    Cell("s3", "register", "stopped before", FAILS),
    Cell("mlflow", "register", "stopped before", FAILS),
    Cell("mlflow", "register", "killed after the version is created", FAILS),
    Cell("s3", "register", "killed between registration and the gate", FAILS),
    Cell("kafka", "register", "stopped before", FAILS),
    Cell("none", "register", "all up", SUCCEEDS),  # the retry
    Cell("kafka", "events", "count sent vs received", SUCCEEDS),
]


# --------------------------------------------------------------------------------------------------------------------
# The private stack and the walk's state
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Ledger:
    """What the stages reported about their Kafka events: acknowledged (topic, key, event_id), and failed sends."""

    acked: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Walk:
    s3_server: PrivateServer
    kafka: PrivateKafka
    mlflow_server: PrivateMlflow
    s3: S3Settings
    spark: SparkSettings
    ray: RaySettings
    tmp: Path
    ledger: Ledger
    lake: LakeSettings = dataclasses.field(default_factory=LakeSettings)
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    broken: str | None = None  # the first cell that failed: later cells cannot run on its state
    resources: ExitStack = dataclasses.field(default_factory=ExitStack)

    @property
    def mlflow(self) -> MlflowSettings:
        return self.mlflow_server.settings()

    @property
    def client(self) -> Any:
        from ml.clients import s3_client

        return s3_client(self.s3)

    @property
    def address(self) -> dict[str, str]:
        """Each service's address as its errors name it."""
        return {
            "s3": str(self.s3.endpoint_url).removeprefix("http://"),
            "kafka": self.kafka.bootstrap,
            "mlflow": self.mlflow_server.tracking_uri.removeprefix("http://"),
        }

    def server(self, name: str) -> PrivateServer:
        return {"s3": self.s3_server, "kafka": self.kafka, "mlflow": self.mlflow_server}[name]

    def up(self, *names: str) -> None:
        """Start each named server again (same ports, same data) unless it answers."""
        for name in names:
            if not self.server(name).healthy():
                self.server(name).start()


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    """A private S3 gateway (buckets raw, lake, mlflow; the penguins in two CSV objects), a private Kafka broker
    prepared as `make stack-up` prepares the stack's, a private MLflow server with its users, and the Airflow
    connections the DAG's callbacks and branch operator read (kafka_default, mlflow_default) pointing at them."""
    from ml.clients import arrow_filesystem, s3_client
    from ml.datasets import load_shipped, upload_frame
    from ml.storage import S3Uri

    root = tmp_path_factory.mktemp("fault-matrix")
    s3_server, keys = private_s3(root / "s3")
    s3_server.start()
    s3 = S3Settings(s3_server.service.url, "us-east-1", keys.access_key, keys.secret_key)
    with ExitStack() as stack:
        stack.callback(arrow_filesystem.cache_clear)  # no client of these endpoints stays cached for later tests
        stack.callback(s3_client.cache_clear)
        stack.callback(s3_server.stop)
        client = s3_client(s3)
        for bucket in ("raw", "lake", "mlflow"):
            client.create_bucket(Bucket=bucket)
        penguins = load_shipped(DATASET)
        half = len(penguins) // 2
        for index, part in enumerate((penguins.iloc[:half], penguins.iloc[half:])):
            upload_frame(part, S3Uri.parse(f"{RAW_URI}part-{index}.csv"), client)

        kafka = stack.enter_context(running_private_kafka(root / "kafka"))
        mlflow_server = private_mlflow(root / "mlflow", s3)
        mlflow_server.start()
        stack.callback(mlflow_server.stop)
        mlflow_server.prepare()

        classpath_file = stack_paths().spark_s3a_classpath_file  # the stack's s3a jars, read only
        assert classpath_file.is_file(), f"{classpath_file} is missing; run `make tools` first"
        spark = SparkSettings(
            master="local[2]", extra_classpath=classpath_file.read_text().strip(), metastore_dir=str(root / "hive")
        )
        ray = RaySettings(None, state_signing_key=secrets.token_urlsafe(32))  # a local Ray, a key of this test's
        monkeypatch = stack.enter_context(pytest.MonkeyPatch.context())
        # spark-submit (and the python3 its launcher runs to find Spark) from this venv, as on an Airflow worker.
        monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        _define_connections(monkeypatch, kafka, mlflow_server)
        ledger = _record_publishes(monkeypatch)
        state = Walk(s3_server, kafka, mlflow_server, s3, spark, ray, root, ledger)
        stack.enter_context(state.resources)
        yield state


def _define_connections(monkeypatch: pytest.MonkeyPatch, kafka: PrivateKafka, mlflow: PrivateMlflow) -> None:
    """The Airflow connections of the callbacks (kafka_default) and of the branch (mlflow_default), as a deployment
    gives them (AIRFLOW_CONN_* JSON), with the pipeline's logins on the private servers; no other connection."""
    from stack.config import KAFKA_PIPELINE_USER, MLFLOW_PIPELINE_USER

    for name in [name for name in os.environ if name.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(name)
    kafka_login = kafka.settings()
    extra = {
        "bootstrap.servers": kafka.bootstrap,
        "security.protocol": kafka_login.security_protocol,
        "sasl.mechanisms": kafka_login.sasl_mechanism,
        "sasl.username": KAFKA_PIPELINE_USER,
        "sasl.password": kafka.passwords[KAFKA_PIPELINE_USER],
    }
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps({"conn_type": "kafka", "extra": extra}))
    document = {
        "conn_type": "http",
        "host": mlflow.tracking_uri,
        "login": MLFLOW_PIPELINE_USER,
        "password": mlflow.passwords[MLFLOW_PIPELINE_USER],
    }
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(document))


def _record_publishes(monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """ml.events.publisher.publish_event (every synchronous send: the callbacks', the registry's) still sends, and
    each send is recorded as acknowledged or failed."""
    import ml.events.publisher

    ledger = Ledger()
    real = ml.events.publisher.publish_event

    def recording(kafka: KafkaSettings, topic: Any, payload: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        try:
            envelope = real(kafka, topic, payload, key, *args, **kwargs)
        except Exception as error:
            ledger.failed.append((topic.name, key, f"{type(error).__name__}: {error}"))
            raise
        ledger.acked.append((topic.name, key, envelope["event_id"]))
        return envelope

    monkeypatch.setattr(ml.events.publisher, "publish_event", recording)
    return ledger


# --------------------------------------------------------------------------------------------------------------------
# Stages, as their operators call them, each attempt ending with its callback's event
# --------------------------------------------------------------------------------------------------------------------


def attempt(task_id: str, stage: Callable[[], Any]) -> Any:
    """Run one task attempt: the stage, then the DAG's task_succeeded or task_failed callback (which never fails the
    task: an event it cannot deliver is logged as undelivered). Returns the stage's result or raises its error."""
    from types import SimpleNamespace

    from mlops_airflow import callbacks

    context: dict[str, Any] = {
        "dag": SimpleNamespace(dag_id=DAG_ID),
        "ti": SimpleNamespace(dag_id=DAG_ID, task_id=task_id, try_number=1),
        "run_id": RUN_ID,
    }
    try:
        result = stage()
    except Exception as error:
        callbacks.task_failed({**context, "exception": error})
        raise
    callbacks.task_succeeded(context)
    return result


def ingest_stage(walk: Walk) -> Any:
    from ml.ingest.config import IngestConfig
    from ml.ingest.snapshot import ingest

    return attempt(
        "ingest_raw_data", lambda: ingest(IngestConfig(RAW_URI, DATASET, TARGET), s3=walk.s3, lake=walk.lake)
    )


def preprocess_stage(walk: Walk) -> Any:
    from ml.preprocess.submit import run_preprocess

    snapshot_id = walk.state["snapshot_id"]
    return attempt(
        "preprocess_with_spark",
        lambda: run_preprocess(
            DATASET, snapshot_id, s3=walk.s3, lake=walk.lake, spark=walk.spark, driver_memory="512m"
        ),
    )


def branch_stage(walk: Walk) -> Any:
    from mlops_airflow.run_outcome import SkipIfModelExistsOperator

    operator = SkipIfModelExistsOperator(
        task_id="check_for_existing_model",
        dataset=DATASET,
        snapshot_id=walk.state["snapshot_id"],
        ml_task="classification",
        train_task_id="preprocess_with_spark",
        reuse_task_id="reuse_existing_model",
    )
    return attempt("check_for_existing_model", operator._existing_model)


def tune_stage(walk: Walk, callbacks: Sequence[Any] = ()) -> Any:
    from ml.preflight import require_mlflow
    from ml.tune.config import SearchConfig
    from ml.tune.search import run_search

    def stage() -> Any:
        require_mlflow(walk.mlflow)  # RayTuneOperator: MlflowHook.available_settings()
        config = SearchConfig.create(
            s3=walk.s3,
            dataset=DATASET,
            snapshot_id=walk.state["snapshot_id"],
            run_name=RUN_ID,
            search_space="small",
            allow_local_files=False,
            num_samples=2,
            max_concurrent_trials=2,
            max_epochs=2,
            patience=2,
            dag_run_id=RUN_ID,
        )
        return run_search(
            config,
            s3=walk.s3,
            lake=walk.lake,
            ray=walk.ray,
            mlflow=walk.mlflow,
            kafka=walk.kafka.settings(),
            callbacks=callbacks,
        )

    return attempt("tune_models", stage)


def register_stage(walk: Walk) -> Any:
    from ml.evaluate import evaluate_best
    from ml.lineage import code_version
    from ml.preflight import require_mlflow
    from ml.registry.context import RegistryContext
    from ml.registry.promote import register_and_promote

    def stage() -> Any:
        require_mlflow(walk.mlflow)  # RegisterModelOperator: MlflowHook.available_settings()
        registry = RegistryContext(mlflow=walk.mlflow, s3=walk.s3, lake=walk.lake, kafka=walk.kafka.settings())
        evaluation = evaluate_best(walk.state["search_result"], s3=walk.s3, mlflow=walk.mlflow)
        return register_and_promote(
            evaluation,
            registry,
            dag_id=DAG_ID,
            dag_run_id=RUN_ID,
            code_version=code_version(),
            task_id="register_best_model",
        )

    return attempt("register_best_model", stage)


# --------------------------------------------------------------------------------------------------------------------
# Checks shared by the cells
# --------------------------------------------------------------------------------------------------------------------


def fails_naming(walk: Walk, service: str, stage: Callable[[], Any], *also: str) -> BaseException:
    """The stage fails, and its error (or, for spark-submit, the log in `also`) names the service's address."""
    with pytest.raises(Exception) as failure:
        stage()
    where = walk.address[service]
    text = "\n".join([f"{type(failure.value).__name__}: {failure.value}", *also])
    assert where in text, f"the error does not name {service} at {where}: {text[-3000:]}"
    return failure.value


def fails_while_stopped(walk: Walk, service: str, stage: Callable[[], Any]) -> BaseException:
    """Stop the service (a clean shutdown), run the stage: it fails naming the service; then start the service again."""
    walk.server(service).stop()
    error = fails_naming(walk, service, stage)
    walk.up(service)
    return error


def check_champion_gated(walk: Walk) -> None:
    """The champion alias, if any, points at a version whose tags show the gate passed it; no alias points at a
    version that is not completely registered."""
    from mlflow.exceptions import MlflowException

    from ml.clients import mlflow_client
    from ml.predictor import alias_version, ungated_reason
    from ml.registry.conventions import CHALLENGER, CHAMPION, REGISTRATION_TAG

    client = mlflow_client(walk.mlflow)
    try:
        client.get_registered_model(MODEL)
    except MlflowException as error:
        assert error.error_code == "RESOURCE_DOES_NOT_EXIST", error
        return
    champion = alias_version(client, MODEL, CHAMPION)
    if champion is not None:
        tags = dict(client.get_model_version(MODEL, champion).tags)
        assert ungated_reason(tags) is None, f"champion v{champion} is ungated: {ungated_reason(tags)}"
    for alias in (CHAMPION, CHALLENGER):
        version = alias_version(client, MODEL, alias)
        if version is not None:
            registration = client.get_model_version(MODEL, version).tags.get(REGISTRATION_TAG)
            assert registration == "complete", f"{alias} points at v{version}, registration {registration}"


def model_versions(walk: Walk) -> list[Any]:
    from ml.clients import mlflow_client
    from ml.experiments import quoted

    return list(mlflow_client(walk.mlflow).search_model_versions(f"name = {quoted(MODEL)}"))


def snapshot_root(walk: Walk) -> Any:
    from ml.ingest.read import content_hash, source_objects
    from ml.storage import S3Uri, snapshot_uri

    raw = S3Uri.parse(RAW_URI)
    return snapshot_uri(walk.lake, DATASET, content_hash(raw, source_objects(raw, walk.client), TARGET, None))


def no_snapshot_committed(walk: Walk) -> None:
    from ml.storage import exists, latest_snapshot_uri

    root = snapshot_root(walk)
    assert not exists(root.join("manifest.json"), walk.client), "a failed ingest left a manifest"
    assert not exists(latest_snapshot_uri(walk.lake, DATASET), walk.client), "a failed ingest moved latest.json"


# --------------------------------------------------------------------------------------------------------------------
# The cells, in walk order
# --------------------------------------------------------------------------------------------------------------------


def ingest_s3_killed_mid_copy(walk: Walk, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first server-side copy completes, then the gateway crashes before the second one's request."""
    client = walk.client  # the cached client ingest() uses
    original = client.copy
    lock, crashed, calls = threading.Lock(), threading.Event(), []

    def copy_then_crash(source: dict[str, str], *args: Any, **kwargs: Any) -> Any:
        with lock:
            first = not calls
            calls.append(source["Key"])
        if not first:
            assert crashed.wait(30), "the gateway was not killed"
            return original(source, *args, **kwargs)
        try:
            return original(source, *args, **kwargs)
        finally:
            walk.s3_server.kill()
            crashed.set()

    with monkeypatch.context() as patch:
        patch.setattr(client, "copy", copy_then_crash)
        fails_naming(walk, "s3", lambda: ingest_stage(walk))
    assert crashed.is_set() and len(calls) == 2, calls
    walk.up("s3")
    no_snapshot_committed(walk)
    from ml.storage import list_keys

    walk.state["crashed_copies"] = [obj["Key"] for obj in list_keys(snapshot_root(walk).join("data"), walk.client)]
    assert walk.state["crashed_copies"], "the first copy should be left behind (its clean-up could not reach S3)"


def ingest_s3_stopped_before(walk: Walk) -> None:
    fails_while_stopped(walk, "s3", lambda: ingest_stage(walk))
    no_snapshot_committed(walk)


def ingest_kafka_and_mlflow_stopped(walk: Walk) -> None:
    """The retry, with the broker and MLflow down (they stay down through preprocessing): ingest needs neither; its
    task_succeeded event is reported undelivered. The copies of the crashed attempt are removed by the commit."""
    from ml.storage import S3Uri, list_keys, read_json

    walk.kafka.stop()
    walk.mlflow_server.stop()
    failed_before = len(walk.ledger.failed)
    result = ingest_stage(walk)
    assert result.created and result.rows == 344, result
    walk.state["snapshot_id"] = result.snapshot_id
    manifest = read_json(S3Uri.parse(result.manifest_uri), walk.client)
    named = sorted(S3Uri.parse(obj["snapshot_uri"]).key for obj in manifest["objects"])
    stored = sorted(obj["Key"] for obj in list_keys(snapshot_root(walk).join("data"), walk.client))
    assert stored == named, f"objects no manifest names under data/: {sorted(set(stored) - set(named))}"
    assert not set(walk.state["crashed_copies"]) & set(stored)
    [undelivered] = walk.ledger.failed[failed_before:]
    assert undelivered[1].endswith(":ingest_raw_data:task_succeeded") and walk.address["kafka"] in undelivered[2]


def preprocess_s3_stopped_before(walk: Walk, capfd: pytest.CaptureFixture[str]) -> None:
    from ml.storage import exists, feature_spec_uri, features_uri

    walk.s3_server.stop()
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="Spark preprocessing of") as failure:
        preprocess_stage(walk)
    spark_log = capfd.readouterr().err
    where = walk.address["s3"]
    assert where in f"{failure.value}\n{spark_log}", f"neither the error nor Spark's log names {where}"
    walk.up("s3")
    spec = feature_spec_uri(features_uri(walk.lake, DATASET, walk.state["snapshot_id"]))
    assert not exists(spec, walk.client), "a failed preprocessing left feature_spec.json"


def preprocess_kafka_and_mlflow_stopped(walk: Walk) -> None:
    from ml.storage import exists, feature_spec_uri, features_uri

    summary = preprocess_stage(walk)
    assert summary["skipped"] is False and sum(summary["rows"].values()) > 300, summary
    spec = feature_spec_uri(features_uri(walk.lake, DATASET, walk.state["snapshot_id"]))
    assert exists(spec, walk.client)
    walk.up("kafka")  # MLflow stays down for the branch


def branch_mlflow_stopped(walk: Walk) -> None:
    """The branch asks MLflow whether a model exists: down, it fails at once (an unreachable registry is not "no
    model": hours of tuning would follow). Its retry, once MLflow is back, finds none and trains."""
    error = fails_naming(walk, "mlflow", lambda: branch_stage(walk))
    assert "is not reachable" in str(error), error
    walk.up("mlflow")
    assert branch_stage(walk) is None  # no model for this snapshot: train
    assert not model_versions(walk)


class KafkaBackDuringTheSearch(tune.Callback):
    """Records every trial-epoch key the search reports; at the first result (the broker is down), starts the broker
    again, so the metrics published meanwhile wait in the publisher's buffer and go out once it is back. Tune pickles
    callbacks into its state: the live objects are in TUNE_OUTAGE."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from ml.tune.callbacks import result_epoch

        TUNE_OUTAGE["expected"].append(f"{RUN_ID}:{trial.trial_id}:{result_epoch(result)}")
        if not TUNE_OUTAGE["restarted"]:
            TUNE_OUTAGE["restarted"] = True
            TUNE_OUTAGE["walk"].up("kafka")


TUNE_OUTAGE: dict[str, Any] = {}


def tune_s3_stopped_before(walk: Walk) -> None:
    fails_while_stopped(walk, "s3", lambda: tune_stage(walk))
    check_no_search_result(walk)


def tune_mlflow_stopped_before(walk: Walk) -> None:
    error = fails_while_stopped(walk, "mlflow", lambda: tune_stage(walk))
    assert "is not reachable" in str(error), error
    check_no_search_result(walk)


def check_no_search_result(walk: Walk) -> None:
    from ml.storage import exists, tune_uri
    from ml.tune.config import SEARCH_RESULT_FILE

    experiment = tune_uri(walk.lake, DATASET, walk.state["snapshot_id"], RUN_ID)
    assert not exists(experiment.join(SEARCH_RESULT_FILE), walk.client), "a failed search left search_result.json"


def tune_kafka_stopped_then_back(walk: Walk, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The retry: the broker is down when the search starts and comes back at its first result; the search succeeds
    and its metrics publisher ends with nothing dropped, failed or pending (the keys are counted at the end)."""
    import ray

    from ml.events.publisher import EventPublisher, PublishStats
    from ml.tune.runtime import ray_auth_scope

    # The publisher finds the broker soon after it is back (librdkafka's reconnect back-off caps at 10 s otherwise).
    monkeypatch.setattr(EventPublisher, "reconnect_backoff_max_ms", 1000)
    caplog.set_level(logging.INFO, logger="ml.tune")
    if not ray.is_initialized():  # a local Ray of this module's, as tests/conftest.py's local_ray starts one
        temp_dir = walk.resources.enter_context(tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp"))
        with ray_auth_scope(walk.ray):
            ray.init(
                address="local",
                num_cpus=2,
                include_dashboard=False,
                _temp_dir=temp_dir,
                log_to_driver=False,
                runtime_env={"env_vars": walk.s3.subprocess_env()},
            )
        walk.resources.callback(ray.shutdown)
    walk.kafka.stop()
    TUNE_OUTAGE.clear()
    TUNE_OUTAGE.update(walk=walk, expected=[], restarted=False)
    result = tune_stage(walk, callbacks=[KafkaBackDuringTheSearch()])
    assert TUNE_OUTAGE["restarted"] and walk.kafka.healthy()
    assert result.num_trials == 2 and result.num_errored == 0, result
    stats = [r.args[0] for r in caplog.records if r.getMessage().startswith("training metrics to Kafka:")]
    assert len(stats) == 1 and isinstance(stats[0], PublishStats), "the metrics publisher was not closed"
    assert (stats[0].dropped, stats[0].failed, stats[0].pending) == (0, 0, 0), stats[0]
    walk.state["search_result"] = result.to_dict()
    walk.state["metric_keys"] = list(TUNE_OUTAGE["expected"])
    TUNE_OUTAGE.clear()


def register_s3_stopped_before(walk: Walk) -> None:
    fails_while_stopped(walk, "s3", lambda: register_stage(walk))
    assert not model_versions(walk)


def register_mlflow_stopped_before(walk: Walk) -> None:
    error = fails_while_stopped(walk, "mlflow", lambda: register_stage(walk))
    assert "is not reachable" in str(error), error
    assert not model_versions(walk)


def register_mlflow_killed_after_create(walk: Walk, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow crashes right after it created the version: the attempt fails, cannot delete its version (MLflow is
    gone), and leaves it pending, with no alias on it; the next attempt of the run deletes it under the lock."""
    from ml.clients import mlflow_client
    from ml.registry.conventions import REGISTRATION_TAG

    client = mlflow_client(walk.mlflow)  # the cached client RegistryContext.client returns
    original = client.create_model_version

    def create_then_crash(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            walk.mlflow_server.kill()

    with monkeypatch.context() as patch:
        # MLflow's own client settings, not an endpoint: fail at once instead of retrying for minutes.
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        patch.setattr(client, "create_model_version", create_then_crash, raising=False)
        fails_naming(walk, "mlflow", lambda: register_stage(walk))
    assert "create_model_version" not in vars(client)
    walk.up("mlflow")
    [version] = model_versions(walk)
    assert version.tags.get(REGISTRATION_TAG) == "pending", version.tags
    assert "gate.decision" not in version.tags
    walk.state["pending_version"] = str(version.version)


def register_s3_killed_before_the_gate(walk: Walk, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version is registered (the pending one of the crashed attempt deleted), then the gateway crashes just
    before the gate takes the alias lock: the version is complete and the challenger, and nothing is champion."""
    import ml.registry.promote
    from ml.clients import mlflow_client
    from ml.predictor import alias_version
    from ml.registry.conventions import CHALLENGER, CHAMPION, REGISTRATION_TAG

    original = ml.registry.promote.promote

    def crash_then_promote(*args: Any, **kwargs: Any) -> Any:
        walk.s3_server.kill()
        return original(*args, **kwargs)

    monkeypatch.setattr(ml.registry.promote, "promote", crash_then_promote)
    fails_naming(walk, "s3", lambda: register_stage(walk))
    monkeypatch.setattr(ml.registry.promote, "promote", original)
    walk.up("s3")
    [version] = model_versions(walk)
    assert str(version.version) != walk.state["pending_version"], "the crashed attempt's pending version is still there"
    assert version.tags.get(REGISTRATION_TAG) == "complete" and "gate.decision" not in version.tags
    client = mlflow_client(walk.mlflow)
    assert alias_version(client, MODEL, CHALLENGER) == str(version.version)
    assert alias_version(client, MODEL, CHAMPION) is None


def register_kafka_stopped_before(walk: Walk) -> None:
    """The gate promotes (its tags first, then the alias) and cannot publish model_promoted: the task fails naming
    the broker; the champion has its gate's tags. The retry publishes the event (already_champion)."""
    from ml.clients import mlflow_client
    from ml.predictor import alias_version
    from ml.registry.conventions import CHAMPION

    failed_before = len(walk.ledger.failed)
    fails_while_stopped(walk, "kafka", lambda: register_stage(walk))
    [version] = model_versions(walk)
    assert alias_version(mlflow_client(walk.mlflow), MODEL, CHAMPION) == str(version.version)
    undelivered = [key for _topic, key, _error in walk.ledger.failed[failed_before:]]
    assert any(key == MODEL for key in undelivered), f"model_promoted was not reported undelivered: {undelivered}"


def register_all_up(walk: Walk) -> None:
    from ml.topics import MODEL_PROMOTED

    acked_before = len(walk.ledger.acked)
    decision = register_stage(walk)
    assert decision["created"] is False and decision["decision"] == "already_champion", decision
    assert len(model_versions(walk)) == 1
    sent = [(topic, key) for topic, key, _id in walk.ledger.acked[acked_before:]]
    assert (MODEL_PROMOTED.name, MODEL) in sent, f"the retry did not publish model_promoted: {sent}"


def events_count(walk: Walk) -> None:
    """Every event a stage reported as acknowledged is on the broker, exactly once (publish_event's producer is
    idempotent; a retried task publishes a NEW event under the same key, by design at-least-once per key: the
    callbacks' task events, model_promoted re-published by an already_champion gate). Every trial-epoch key of the
    search is there at least once: the metrics publisher re-sends a message whose delivery timed out (at-least-once,
    same event id; consumers drop re-deliveries by key)."""
    from ml.topics import ALL_TOPICS, TRAINING_METRICS

    received: dict[str, Counter[str]] = {}
    keys: dict[str, set[str]] = {}
    expected = Counter(topic for topic, _key, _id in walk.ledger.acked)
    expected[TRAINING_METRICS.name] += len(walk.state["metric_keys"])
    for topic in ALL_TOPICS:
        records = topic_messages(walk.kafka.settings(), topic.name, expect=expected[topic.name])
        received[topic.name] = Counter(json.loads(record.value)["event_id"] for record in records)
        keys[topic.name] = {record.key.decode() for record in records}
    print(f"\nacknowledged {len(walk.ledger.acked)}, reported undelivered {len(walk.ledger.failed)}:")
    for topic, key, error in walk.ledger.failed:
        print(f"  undelivered {topic} {key}: {error[:160]}")
    lost = [(t, k, i) for t, k, i in walk.ledger.acked if received[t][i] == 0]
    assert not lost, f"acknowledged events missing from the broker: {lost}"
    duplicated = [(t, k, i) for t, k, i in walk.ledger.acked if received[t][i] > 1]
    assert not duplicated, f"events delivered twice: {duplicated}"
    missing = sorted(set(walk.state["metric_keys"]) - keys[TRAINING_METRICS.name])
    assert not missing, f"trial-epoch keys never reached Kafka: {missing}"
    assert len(walk.state["metric_keys"]) >= 2 and walk.ledger.failed  # the walk did publish, and did hit outages


CELLS: dict[str, Callable[..., None]] = {
    MATRIX[0].id: ingest_s3_killed_mid_copy,
    MATRIX[1].id: ingest_s3_stopped_before,
    MATRIX[2].id: ingest_kafka_and_mlflow_stopped,
    MATRIX[3].id: preprocess_s3_stopped_before,
    MATRIX[4].id: preprocess_kafka_and_mlflow_stopped,
    MATRIX[5].id: branch_mlflow_stopped,
    MATRIX[6].id: tune_s3_stopped_before,
    MATRIX[7].id: tune_mlflow_stopped_before,
    MATRIX[8].id: tune_kafka_stopped_then_back,
    MATRIX[9].id: register_s3_stopped_before,
    MATRIX[10].id: register_mlflow_stopped_before,
    MATRIX[11].id: register_mlflow_killed_after_create,
    MATRIX[12].id: register_s3_killed_before_the_gate,
    MATRIX[13].id: register_kafka_stopped_before,
    MATRIX[14].id: register_all_up,
    MATRIX[15].id: events_count,
}


@pytest.mark.parametrize("cell", MATRIX, ids=[cell.id for cell in MATRIX])
def test_fault_matrix(cell: Cell, walk: Walk, request: pytest.FixtureRequest) -> None:
    if walk.broken is not None:
        pytest.fail(f"not run: cell {walk.broken} failed, and this one depends on the state it should have left")
    run = CELLS[cell.id]
    fixtures = {name: request.getfixturevalue(name) for name in run.__code__.co_varnames[1 : run.__code__.co_argcount]}
    try:
        run(walk, **fixtures)
        if walk.mlflow_server.healthy():
            check_champion_gated(walk)
    except BaseException:
        walk.broken = cell.id
        raise
