"""Faults against real processes: a Kafka broker that goes away during a search, an S3 server that crashes during an
ingest and during a Spark job, a Spark job that fails, an MLflow server that cannot be reached at registration. (Ray
trials whose worker process is killed: tests/integration/test_trial_failures.py.)

The servers that are stopped and restarted are PRIVATE copies (tests/support/private_services.py: a second broker and a
second S3 gateway on free ports of 127.0.0.1, data under tmp_path); the shared stack (S3 :9000, Kafka :9092, MLflow
:5000) is never stopped here, and is used read-only-ish (a synthetic features folder, a missing snapshot). Each stage
gets the settings of the server it must use as arguments (ml.settings), never through this process's environment;
Spark jobs get a Hive metastore of their own. Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from ml.settings import KafkaSettings, LakeSettings, MlflowSettings, RaySettings, S3Settings, Settings, SparkSettings
from tests.support.kafka_topics import topic_messages
from tests.support.private_services import PrivateKafka, PrivateServer, private_s3, running_private_kafka
from tests.support.probes import free_port

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------------------------
# Kafka broker stopped during tuning
# --------------------------------------------------------------------------------------------------------------------

# Tune pickles callbacks into the experiment (tuner.pkl in S3): the callback below keeps its live state here instead.
OUTAGE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    # The users, their ACLs and the pipeline's topics, with their partitions, as `make stack-up` makes them.
    with running_private_kafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


def topic_size(kafka: KafkaSettings, topic: str) -> int:
    from kafka import TopicPartition

    from ml.clients import kafka_consumer

    consumer = kafka_consumer(kafka, request_timeout_ms=5000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return sum(consumer.end_offsets(partitions).values()) if partitions else 0
    finally:
        consumer.close()


def closing_recording_publisher(kafka: KafkaSettings, dag_run_id: str | None) -> Any:
    """The search's metrics publisher (ml.tune.callbacks.default_publisher_factory's), noting in OUTAGE when the
    search begins to close it: the broker is restarted only then, while the close waits for what is queued."""
    publisher = OUTAGE["pipeline_factory"](kafka, dag_run_id)
    close = publisher.close

    def recording_close(timeout_s: float = 30.0) -> Any:
        OUTAGE["closing"].set()
        return close(timeout_s)

    publisher.close = recording_close
    return publisher


class BrokerOutage(tune.Callback):
    """Records every trial-epoch key the search produces; stops the broker as soon as the first message is on it;
    once the last trial finished, restarts it as soon as the metrics callback's publisher is being closed at the end
    of the experiment (its close waits up to close_timeout_s, 90 s in the test, for what is queued)."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from ml.tune.callbacks import result_epoch

        OUTAGE["expected"].append(f"{OUTAGE['run_name']}:{trial.trial_id}:{result_epoch(result)}")
        if OUTAGE["phase"] == "up":
            return
        if OUTAGE["phase"] == "before":
            from stack.services import wait_until

            kafka, topic = OUTAGE["kafka"], OUTAGE["topic"]
            if not wait_until(lambda: topic_size(kafka, topic) > 0, 20.0, interval_s=0.3):
                OUTAGE["errors"].append("the first trial-epoch message never reached the broker")
            OUTAGE["delivered_before_stop"] = topic_size(kafka, topic)
            OUTAGE["server"].stop()
            OUTAGE.update(phase="down", stopped_at=time.monotonic())
        else:
            OUTAGE["published_while_down"] += 1

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_done()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_done()

    def _trial_done(self) -> None:
        OUTAGE["finished"] += 1
        if OUTAGE["finished"] == OUTAGE["num_samples"] and OUTAGE["phase"] == "down":
            OUTAGE["restarter"] = threading.Thread(target=_restart_later, name="broker-restart", daemon=True)
            OUTAGE["restarter"].start()


def _restart_later() -> None:
    # Bounded: the experiment's end follows its last trial within seconds; room for a loaded machine.
    if not OUTAGE["closing"].wait(timeout=120):
        OUTAGE["errors"].append("the search never closed its metrics publisher")
    try:
        OUTAGE["server"].start()
        OUTAGE.update(phase="up", restarted_at=time.monotonic())
    except Exception as error:  # reported by the test
        OUTAGE["errors"].append(f"restart failed: {error!r}")


def test_metrics_survive_a_broker_outage_during_the_search(
    local_ray: None,
    private_broker: PrivateKafka,
    s3_service: None,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker stops after the first epoch's message and comes back only after training is over, while the search
    closes its publisher: every trial-epoch key must still reach Kafka, none dropped; what waited in the publisher's
    queue through the outage (no time limit on a training message) goes out once."""
    import ml.tune.callbacks
    from ml.events.publisher import EventPublisher, PublishStats
    from ml.topics import TRAINING_METRICS
    from ml.tune.callbacks import KafkaMetricsCallback
    from ml.tune.config import SearchConfig
    from ml.tune.search import run_search
    from ml.tune.space import load_search_space
    from tests.support.synthetic_features import write_synthetic_features

    pipeline = private_broker.settings()  # the pipeline's user, as Airflow's tune task logs in
    # The broker is found soon after it is back (librdkafka's reconnect back-off caps at 10 s otherwise).
    monkeypatch.setattr(EventPublisher, "reconnect_backoff_max_ms", 1000)
    # A JVM start on a loaded 2-core machine took over 16 s once: room for a slow restart, not a shorter outage.
    monkeypatch.setattr(KafkaMetricsCallback, "close_timeout_s", 90.0)
    pipeline_factory = ml.tune.callbacks.default_publisher_factory
    monkeypatch.setattr(ml.tune.callbacks, "default_publisher_factory", closing_recording_publisher)
    caplog.set_level(logging.INFO, logger="ml.tune")
    caplog.set_level(logging.INFO, logger="ml.events")

    features = write_synthetic_features(
        settings, "classification", 2, rows={"train": 300, "validation": 100, "test": 100}
    )
    run_name = f"fault-{uuid.uuid4().hex[:8]}"
    config = SearchConfig(
        dataset=features.dataset,
        snapshot_id=features.snapshot_id,
        run_name=run_name,
        search_space=load_search_space(REPO / "ml" / "search_spaces" / "small.json"),
        num_samples=4,
        max_concurrent_trials=2,
        max_epochs=4,
        patience=4,
        seed=3,
        dag_run_id=f"manual__{run_name}",
    )
    OUTAGE.clear()
    OUTAGE.update(
        server=private_broker,
        kafka=pipeline,
        topic=TRAINING_METRICS.name,
        run_name=run_name,
        num_samples=config.num_samples,
        phase="before",
        expected=[],
        errors=[],
        finished=0,
        published_while_down=0,
        pipeline_factory=pipeline_factory,
        closing=threading.Event(),
    )
    started = time.monotonic()
    try:
        # No MLflow tracking; the metrics stream goes to the private broker.
        result = run_search(
            config,
            s3=settings.s3,
            lake=settings.lake,
            # the module's local Ray (local_ray) is already running; the stack's key signs the search's state
            ray=RaySettings(None, state_signing_key=settings.ray.state_signing_key),
            mlflow=None,
            kafka=pipeline,
            callbacks=[BrokerOutage()],
        )
        search_done = time.monotonic()
    finally:
        if OUTAGE.get("restarter") is not None:
            OUTAGE["restarter"].join(timeout=120)
        features.cleanup()
    if not private_broker.healthy():  # whatever happened, the broker is up for the reading below
        private_broker.start()
    records = topic_messages(pipeline, TRAINING_METRICS.name, expect=len(OUTAGE["expected"]))

    assert not OUTAGE["errors"], OUTAGE["errors"]
    assert result.num_trials == 4 and result.num_errored == 0
    assert OUTAGE["phase"] == "up" and OUTAGE["published_while_down"] >= 1, OUTAGE
    # The outage lasted until the search closed its publisher; whether the publisher waited for the broker is checked
    # below from its own stats: nothing failed, dropped or pending.
    assert OUTAGE["closing"].is_set(), "the search never closed its metrics publisher"
    down_s = OUTAGE["restarted_at"] - OUTAGE["stopped_at"]  # reported, not asserted

    expected = Counter(OUTAGE["expected"])
    assert max(expected.values()) == 1, "Tune reported a trial-epoch twice"
    keys = Counter(record.key.decode() for record in records if record.key.decode().startswith(f"{run_name}:"))
    missing = sorted(set(expected) - set(keys))
    unexpected = sorted(set(keys) - set(expected))
    duplicates = {key: count for key, count in keys.items() if count > 1}
    stats = [r.args[0] for r in caplog.records if r.getMessage().startswith("training metrics to Kafka:")]
    print(
        f"\nbroker down {down_s:.1f}s ({OUTAGE['published_while_down']} epochs published meanwhile, "
        f"{OUTAGE['delivered_before_stop']} delivered before); search {search_done - started:.1f}s; "
        f"{len(expected)} keys expected, {sum(keys.values())} messages read, {len(duplicates)} duplicated "
        f"{duplicates}; publisher {stats}"
    )
    assert not missing, f"{len(missing)} of {len(expected)} trial-epoch keys never reached Kafka: {missing}"
    assert not unexpected, unexpected
    # Re-deliveries are allowed (keys make them recognisable) but must be the same event, not a new one.
    by_key: dict[str, set[str]] = {}
    for record in records:
        envelope = json.loads(record.value)
        by_key.setdefault(record.key.decode(), set()).add(envelope["event_id"])
        assert envelope["dag_run_id"] == f"manual__{run_name}"
    assert all(len(ids) == 1 for ids in by_key.values()), "a re-delivery carried a different event id"
    assert len(stats) == 1 and isinstance(stats[0], PublishStats), "the metrics callback did not close its publisher"
    assert (stats[0].dropped, stats[0].failed, stats[0].pending) == (0, 0, 0), stats[0]
    # Each message handed to librdkafka once and delivered once (v1 and v2: two per trial-epoch).
    assert stats[0].sent == stats[0].delivered == 2 * len(expected), (stats[0], len(expected))


# --------------------------------------------------------------------------------------------------------------------
# S3 server crashing in the middle of an ingest
# --------------------------------------------------------------------------------------------------------------------

CSV_PARTS = 4


@dataclasses.dataclass(frozen=True)
class PrivateGateway:
    server: PrivateServer
    s3: S3Settings  # its endpoint and keys, as the stages take them

    @property
    def client(self) -> Any:
        """The (cached) boto3 client every stage given `s3` uses."""
        from ml.clients import s3_client

        return s3_client(self.s3)


@pytest.fixture
def private_gateway(tmp_path: Path) -> Iterator[PrivateGateway]:
    """A private S3 gateway with raw and lake buckets."""
    from ml.clients import arrow_filesystem, s3_client

    server, keys = private_s3(tmp_path / "s3")
    server.start()
    try:
        gateway = PrivateGateway(
            server,
            S3Settings(
                endpoint_url=server.service.url,
                region="us-east-1",
                access_key_id=keys.access_key,
                secret_access_key=keys.secret_key,
            ),
        )
        for bucket in ("raw", "lake"):
            gateway.client.create_bucket(Bucket=bucket)
        yield gateway
    finally:
        server.stop()
        # No client of this test's endpoint stays cached for later tests.
        s3_client.cache_clear()
        arrow_filesystem.cache_clear()


def private_spark(settings: Settings, tmp_path: Path) -> SparkSettings:
    """The stack's Spark (its s3a jars) with a Hive metastore of the test's own: no other job holds its Derby lock."""
    return dataclasses.replace(settings.spark, master="local[2]", metastore_dir=str(tmp_path / "hive"))


def _csv_part(index: int, rows: int = 40) -> bytes:
    """Distinct rows (an id column), so that nothing is dropped as a duplicate downstream."""
    lines = ["id,x1,x2,color,target"]
    for row in range(rows):
        x1 = (row * 7 + index * 3) % 11 - 5
        colour = ("red", "green", "blue")[row % 3]
        lines.append(f"{index * rows + row},{x1},{(row % 5) * 0.5},{colour},{'yes' if x1 > 0 else 'no'}")
    return ("\n".join(lines) + "\n").encode()


def test_ingest_fails_cleanly_when_the_s3_server_crashes_and_succeeds_after_restart(
    private_gateway: PrivateGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from ml.ingest.config import IngestConfig
    from ml.ingest.read import content_hash, source_objects
    from ml.ingest.snapshot import ingest
    from ml.storage import S3Uri, exists, latest_snapshot_uri, list_keys, snapshot_uri

    gateway, s3, lake = private_gateway.server, private_gateway.s3, LakeSettings()
    client = private_gateway.client  # the cached client ingest() will use (same endpoint and keys)
    assert client.meta.endpoint_url == gateway.service.url
    for index in range(CSV_PARTS):
        client.put_object(Bucket="raw", Key=f"cars/part-{index}.csv", Body=_csv_part(index))
    config = IngestConfig(raw_uri="s3://raw/cars/", dataset="cars", target="target", task="classification")
    raw = S3Uri.parse(config.raw_uri)
    snapshot_id = content_hash(raw, source_objects(raw, client), config.target, config.task)
    root = snapshot_uri(lake, "cars", snapshot_id)

    # The first server-side copy completes, then the server crashes (SIGKILL) before the others start.
    original_copy = client.copy
    lock, crashed = threading.Lock(), threading.Event()
    calls: list[str] = []

    def copy_then_crash(source: dict[str, str], *args: Any, **kwargs: Any) -> Any:
        with lock:
            first = not calls
            calls.append(source["Key"])
        if not first:
            crashed.wait(30)
            return original_copy(source, *args, **kwargs)
        try:
            return original_copy(source, *args, **kwargs)
        finally:
            gateway.kill()
            crashed.set()

    monkeypatch.setattr(client, "copy", copy_then_crash)
    started = time.monotonic()
    with pytest.raises((BotoCoreError, ClientError, OSError)) as failure:
        ingest(config, s3=s3, lake=lake)
    failed_after = time.monotonic() - started
    monkeypatch.setattr(client, "copy", original_copy)
    print(f"\ningest failed after {failed_after:.1f}s with {type(failure.value).__name__}: {failure.value}")
    assert crashed.is_set() and len(calls) == CSV_PARTS
    # A clear error: the failed copy, naming the server and the object (not a secondary error of the clean-up,
    # which cannot reach the server either).
    message = str(failure.value)
    assert gateway.service.url.removeprefix("http://") in message and "Could not connect" in message, message
    assert re.search(r"/raw/cars/part-|/data/attempt-[0-9a-f]+/part-", message), f"not the copy's error: {message}"

    gateway.start()  # the same data folder and keys: the raw objects (and their ETags) are still there
    assert not exists(root.join("manifest.json"), client), "a failed ingest left a manifest: a later run would trust it"
    assert not exists(latest_snapshot_uri(lake, "cars"), client), "a failed ingest moved the dataset's latest pointer"
    leftovers = [obj["Key"] for obj in list_keys(root, client)]
    print(f"left under {root} by the failed ingest (no manifest, so never trusted): {leftovers}")

    again = ingest(config, s3=s3, lake=lake)
    assert again.created and again.snapshot_id == snapshot_id and again.rows == CSV_PARTS * 40
    manifest = json.loads(client.get_object(Bucket=root.bucket, Key=root.join("manifest.json").key)["Body"].read())
    assert [obj["source"] for obj in manifest["objects"]] == [f"s3://raw/cars/part-{i}.csv" for i in range(CSV_PARTS)]
    data_keys = sorted(obj["Key"] for obj in list_keys(root.join("data"), client))
    assert data_keys == sorted(S3Uri.parse(obj["snapshot_uri"]).key for obj in manifest["objects"])
    assert ingest(config, s3=s3, lake=lake).created is False  # and a third run recognises the complete snapshot


# --------------------------------------------------------------------------------------------------------------------
# A Spark job that fails
# --------------------------------------------------------------------------------------------------------------------


def test_preprocessing_a_missing_snapshot_fails_clearly_and_writes_nothing(
    s3_service: None, settings: Settings, s3_client: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from ml.preprocess.submit import run_preprocess
    from ml.storage import features_uri, list_keys

    dataset, snapshot = f"missing-{uuid.uuid4().hex[:8]}", "0123456789abcdef"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=f"Spark preprocessing of {dataset} snapshot {snapshot} failed") as failure:
        run_preprocess(
            dataset,
            snapshot,
            s3=settings.s3,
            lake=settings.lake,
            spark=private_spark(settings, tmp_path),
            driver_memory="512m",
        )
    elapsed = time.monotonic() - started
    spark_log = capfd.readouterr().err
    print(f"\nspark-submit failed after {elapsed:.1f}s: {failure.value}")
    assert "does not exist" in str(failure.value) and "run ingest first" in str(failure.value), failure.value
    assert "manifest.json does not exist" in spark_log  # the job's own message is in the forwarded log too
    assert not list_keys(features_uri(settings.lake, dataset, snapshot), s3_client), "a failed job left features"


def test_preprocessing_fails_cleanly_when_the_s3_server_crashes_mid_write_and_its_retry_succeeds(
    private_gateway: PrivateGateway, settings: Settings, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The gateway dies (SIGKILL) as soon as the Spark job's first output object appears under the features folder,
    stays down until spark-submit has failed, then comes back with the same data: the failed attempt left no
    feature_spec.json (what marks features complete), and the retry (Airflow's, here a second call) writes them."""
    from ml.ingest.config import IngestConfig
    from ml.ingest.snapshot import ingest
    from ml.preprocess.submit import run_preprocess
    from ml.storage import exists, features_uri, list_keys
    from stack.services import wait_until

    gateway, s3, lake = private_gateway.server, private_gateway.s3, LakeSettings()
    spark = private_spark(settings, tmp_path)
    client = private_gateway.client
    for index in range(CSV_PARTS):
        client.put_object(Bucket="raw", Key=f"cars/part-{index}.csv", Body=_csv_part(index, rows=500))
    dataset = f"fault_{uuid.uuid4().hex[:8]}"
    config = IngestConfig(raw_uri="s3://raw/cars/", dataset=dataset, target="target")
    snapshot_id = ingest(config, s3=s3, lake=lake).snapshot_id
    out = features_uri(lake, dataset, snapshot_id)

    outcome: dict[str, Any] = {}

    def first_attempt() -> None:
        try:
            outcome["result"] = run_preprocess(dataset, snapshot_id, s3=s3, lake=lake, spark=spark, driver_memory="1g")
        except Exception as error:  # what the test expects; reported below
            outcome["error"] = error

    attempt = threading.Thread(target=first_attempt, name="preprocess-attempt-1", daemon=True)
    attempt.start()
    wrote = wait_until(lambda: not attempt.is_alive() or bool(list_keys(out, client)), 300.0, interval_s=0.2)
    first_keys = [obj["Key"] for obj in list_keys(out, client)] if attempt.is_alive() else []
    gateway.kill()
    attempt.join(timeout=420)
    assert wrote and first_keys, f"the job ended before writing anything: {outcome}"
    assert not attempt.is_alive(), "spark-submit did not give up on a dead S3 server within 7 minutes"
    spark_log = capfd.readouterr().err
    print(f"\nkilled the gateway when {first_keys[0]} appeared; the attempt ended with {outcome!r}")
    assert "result" not in outcome, "the job reported success although its S3 server died while it wrote"
    assert isinstance(outcome["error"], RuntimeError)
    assert f"Spark preprocessing of {dataset} snapshot {snapshot_id} failed" in str(outcome["error"])
    assert gateway.service.url.removeprefix("http://") in spark_log or "Connection refused" in spark_log

    gateway.start()
    assert not exists(out.join("feature_spec.json"), client), "a failed attempt left a spec: a later run would trust it"
    leftovers = [obj["Key"] for obj in list_keys(out, client)]
    print(f"left under {out} by the failed attempt (no spec, so never used): {len(leftovers)} objects")

    summary = run_preprocess(dataset, snapshot_id, s3=s3, lake=lake, spark=spark, driver_memory="1g")
    assert summary["skipped"] is False and sum(summary["rows"].values()) == CSV_PARTS * 500
    assert exists(out.join("feature_spec.json"), client)
    from ml.clients import arrow_filesystem
    from ml.data import load_feature_spec, load_training_data

    spec = load_feature_spec(out, client)
    data = load_training_data(out, spec, arrow_filesystem(s3))
    assert (len(data.train.y), len(data.validation.y)) == (spec.rows["train"], spec.rows["validation"])


# --------------------------------------------------------------------------------------------------------------------
# MLflow unreachable at registration
# --------------------------------------------------------------------------------------------------------------------


def test_registration_with_mlflow_unreachable_fails_then_its_retry_makes_exactly_one_version(
    mlflow_service: None, settings: Settings, mlflow_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml.registry.context import RegistryContext
    from ml.registry.conventions import registered_model_name
    from ml.registry.register import register_model
    from tests.support.stand_in_model import make_checkpoint, make_spec

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # MLflow's own HTTP client settings (not an endpoint): fail at once instead of retrying for minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    events: list[tuple[Any, ...]] = []  # no Kafka here: the registry's events are recorded instead

    def context(mlflow: MlflowSettings) -> RegistryContext:
        return RegistryContext(
            mlflow=mlflow,
            s3=settings.s3,
            lake=settings.lake,
            kafka=settings.kafka,
            publish=lambda *event: events.append(event),
        )

    dataset = f"fault-{uuid.uuid4().hex[:8]}"
    spec = make_spec("classification", dataset=dataset)
    (tmp_path / "feature_spec.json").write_text(spec.to_json())
    evaluation = {
        "dataset": dataset,
        "snapshot_id": spec.snapshot_id,
        "task": "classification",
        "metric": "accuracy",
        "test_metrics": {"accuracy": 0.9},
        "checkpoint_uri": str(make_checkpoint(tmp_path / "checkpoint", spec)),
        "feature_spec_uri": str(tmp_path / "feature_spec.json"),
    }
    run_id = f"manual__{dataset}"
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        register_model(evaluation, context(MlflowSettings(closed)), dag_id="mlops_training", dag_run_id=run_id)
    elapsed = time.monotonic() - started
    print(f"\nregistration failed after {elapsed:.1f}s: {type(failure.value).__name__}: {failure.value}")
    assert closed.removeprefix("http://") in str(failure.value), "the error should name the MLflow endpoint"

    real = mlflow_client
    name = registered_model_name(dataset, "classification")
    assert not real.search_registered_models(filter_string=f"name = '{name}'")
    assert not real.search_model_versions(f"tags.dag_run_id = '{run_id}'")
    assert real.get_experiment_by_name(dataset) is None

    # The task's retry once MLflow answers again registers the model; a further retry of the same DAG run (a task
    # cleared after success, a retry racing a slow first attempt) finds that version instead of adding another.
    retried = register_model(evaluation, context(settings.mlflow), dag_id="mlops_training", dag_run_id=run_id)
    again = register_model(evaluation, context(settings.mlflow), dag_id="mlops_training", dag_run_id=run_id)
    assert retried["created"] is True and again["created"] is False and again["version"] == retried["version"]
    versions = real.search_model_versions(f"name = '{name}'")
    assert [v.version for v in versions] == [retried["version"]]
    assert versions[0].tags["dag_run_id"] == run_id and versions[0].tags["mlops.registration"] == "complete"
