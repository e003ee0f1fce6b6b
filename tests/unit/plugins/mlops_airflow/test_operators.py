"""plugins/mlops_airflow/operators.py and run_outcome.py, with the `ml` stages replaced by doubles: each operator
passes the settings of its own connections (and nothing else) to `ml`, returns a small JSON value for XCom, and never
writes the worker's environment. Connections are `AIRFLOW_CONN_*` variables (conftest.py), defined per test: exactly
the ones the operator declares. (The real stages under a real Airflow: tests/e2e.)"""

from __future__ import annotations

import inspect
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ml.settings import KafkaSettings, LakeSettings, MlflowSettings, RaySettings, S3Settings
from tests.support.airflow_connections import (
    ACCESS_KEY_ID,
    KAFKA_SERVERS,
    MLFLOW_URI,
    S3_ENDPOINT,
    S3_KEY,
    SPARK_CLASSPATH,
    TUNE_ACCESS_KEY_ID,
    TUNE_S3_KEY,
    connection_documents,
)

Define = Callable[..., None]

CONNECTION_S3 = S3Settings(
    endpoint_url=S3_ENDPOINT, region="eu-west-1", access_key_id=ACCESS_KEY_ID, secret_access_key=S3_KEY
)
TUNE_CONNECTION_S3 = S3Settings(  # aws_tune: the tune task's own keys
    endpoint_url=S3_ENDPOINT, region="eu-west-1", access_key_id=TUNE_ACCESS_KEY_ID, secret_access_key=TUNE_S3_KEY
)
LAKE = LakeSettings(lake_bucket="unit-lake")
RUN_ID = "manual__2026-01-01T00:00:00+00:00"
REPO = Path(__file__).resolve().parents[4]


@contextmanager
def environment_unchanged() -> Iterator[None]:
    """The block leaves os.environ exactly as it found it."""
    before = dict(os.environ)
    yield
    after = dict(os.environ)
    assert after == before, {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


def assert_no_credentials_in_environment() -> None:
    """Called by a stage double: the connection's keys did not reach this process's environment."""
    assert not {ACCESS_KEY_ID, S3_KEY} & set(os.environ.values()), "a connection's key is in os.environ"


class OutletEvents:
    """context["outlet_events"] as the Task SDK gives it: `[alias].add(asset, extra=...)`; `.added[alias name]`."""

    def __init__(self) -> None:
        self.added: dict[str, list[tuple[Any, Any]]] = {}

    def __getitem__(self, alias: Any) -> Any:
        events = self.added.setdefault(alias.name, [])
        return SimpleNamespace(add=lambda asset, extra=None: events.append((asset, extra)))


def lineage_context(**values: Any) -> dict[str, Any]:
    return {"outlet_events": OutletEvents(), **values}


def openlineage_io(operator: Any) -> tuple[list[tuple[str, str, str | None]], list[tuple[str, str, str | None]]]:
    """What the operator answers the OpenLineage provider after it ran: (namespace, name, version) of its inputs and
    outputs, read off OpenLineage's own dataset classes."""

    def described(dataset: Any) -> tuple[str, str, str | None]:
        version = dataset.facets.get("version")
        return dataset.namespace, dataset.name, version.datasetVersion if version else None

    facets = operator.get_openlineage_facets_on_complete(None)
    return [described(d) for d in facets.inputs], [described(d) for d in facets.outputs]


# --- which connections each operator declares ------------------------------------------------------------------------


def test_each_operator_declares_only_the_connections_it_uses() -> None:
    from mlops_airflow import operators, run_outcome

    declared = {
        cls.__name__: sorted(name for name in inspect.signature(cls.__init__).parameters if name.endswith("conn_id"))
        for cls in (
            operators.IngestOperator,
            operators.FeaturePreprocessOperator,
            run_outcome.SkipIfModelExistsOperator,
            operators.RayTuneOperator,
            operators.RegisterModelOperator,
            run_outcome.PublishRunSummaryOperator,
        )
    }
    assert declared == {
        "IngestOperator": ["aws_conn_id"],
        "FeaturePreprocessOperator": ["aws_conn_id"],  # plus SparkSubmitOperator's own conn_id
        "SkipIfModelExistsOperator": ["mlflow_conn_id"],
        "RayTuneOperator": ["aws_conn_id", "kafka_conn_id", "mlflow_conn_id", "ray_conn_id"],
        "RegisterModelOperator": ["aws_conn_id", "kafka_conn_id", "mlflow_conn_id"],
        "PublishRunSummaryOperator": ["kafka_conn_id"],
    }


# --- IngestOperator ---------------------------------------------------------------------------------------------------


def _ingest_result(**changes: Any) -> Any:
    from ml.ingest.config import IngestResult

    values = {
        "dataset": "d",
        "snapshot_id": "abc",
        "snapshot_uri": "s3://unit-lake/datasets/d/snapshots/abc",
        "manifest_uri": "s3://unit-lake/datasets/d/snapshots/abc/manifest.json",
        "rows": 10,
        "task": "regression",
        "target": "y",
        "created": True,
    }
    return IngestResult(**{**values, **changes})


def test_ingest_operator_needs_only_the_aws_connection(connections: Define, monkeypatch: pytest.MonkeyPatch) -> None:
    import ml.ingest.snapshot
    from ml.ingest.config import IngestConfig
    from mlops_airflow.operators import IngestOperator

    connections("aws_default")  # no kafka_default, mlflow_default, spark_default
    calls: list[tuple[Any, ...]] = []

    def fake_ingest(config: Any, *, s3: S3Settings, lake: LakeSettings) -> Any:
        assert_no_credentials_in_environment()
        calls.append((config, s3, lake))
        return _ingest_result()

    monkeypatch.setattr(ml.ingest.snapshot, "ingest", fake_ingest)
    operator = IngestOperator(
        task_id="ingest", raw_uri="s3://raw/d/", dataset="d", target="y", ml_task="regression", lake_bucket="unit-lake"
    )
    context = lineage_context()
    with environment_unchanged():
        result = operator.execute(context)
    assert calls == [(IngestConfig("s3://raw/d/", "d", "y", task="regression"), CONNECTION_S3, LAKE)]
    [(snapshot, extra)] = context["outlet_events"].added["mlops_snapshots"]
    assert operator.outlets[0].name == "mlops_snapshots", "the alias is the task's outlet"
    assert (snapshot.name, snapshot.uri) == ("snapshot/d/abc", "s3://unit-lake/datasets/d/snapshots/abc")
    assert extra == {"raw_uri": "s3://raw/d/", "rows": _ingest_result().rows}
    assert openlineage_io(operator) == (
        [("s3://raw", "d", None)],
        [("s3://unit-lake", "datasets/d/snapshots/abc", None)],
    )
    assert result == _ingest_result().to_dict()
    assert operator.multiple_outputs is True, "task.output['snapshot_id'] is an XCom of its own"


def test_ingest_operator_lets_ingest_infer_the_task(connections: Define, monkeypatch: pytest.MonkeyPatch) -> None:
    import ml.ingest.snapshot
    from mlops_airflow.operators import IngestOperator

    connections("aws_default")
    configs: list[Any] = []
    monkeypatch.setattr(
        ml.ingest.snapshot, "ingest", lambda config, **settings: configs.append(config) or _ingest_result()
    )
    IngestOperator(task_id="ingest", raw_uri="s3://raw/d/", dataset="d", target="y", ml_task="").execute(
        lineage_context()
    )
    assert configs[0].task is None


# --- FeaturePreprocessOperator (spark-submit) -------------------------------------------------------------------------


@dataclass
class SubmittedJob:
    """What SparkSubmitHook would run: its command line, the environment it adds for the subprocess and the first
    `--py-files` entry, checked to exist while the job runs."""

    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    py_files_seen: Path | None = None
    preflights: list[Any] = field(default_factory=list)  # the Spark settings the services were checked for


@pytest.fixture
def spark_submit(monkeypatch: pytest.MonkeyPatch) -> SubmittedJob:
    """SparkSubmitHook.submit replaced: the hook builds its real command line, nothing is started. The pre-flight
    check of the cluster's services records the settings it was given (the unit tests' master does not exist)."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    import ml.preprocess.preflight

    job = SubmittedJob()
    monkeypatch.setattr(ml.preprocess.preflight, "require_cluster_services", job.preflights.append)

    def submit(self: Any, application: str = "", **kwargs: Any) -> None:
        assert_no_credentials_in_environment()
        job.command = self._build_spark_submit_command(application)
        job.env = dict(self._env or {})
        first = Path((self._py_files or "").split(",")[0])
        job.py_files_seen = first if first.is_file() else None

    monkeypatch.setattr(SparkSubmitHook, "submit", submit)
    return job


@pytest.fixture
def feature_spec_in_s3(monkeypatch: pytest.MonkeyPatch) -> list[tuple[S3Settings, str, str]]:
    """ml.clients.s3_client replaced by a client that serves one feature_spec.json; records what was read."""
    import ml.clients
    from ml.features import FeatureSpec, NumericFeature

    spec = FeatureSpec("d", "abc", "regression", "y", [NumericFeature("x", 0.0, 0.0, 1.0)], [], rows={"train": 8})
    reads: list[tuple[S3Settings, str, str]] = []

    def client_for(settings: S3Settings) -> Any:
        def get_object(Bucket: str, Key: str) -> dict[str, Any]:
            reads.append((settings, Bucket, Key))
            return {"Body": SimpleNamespace(read=lambda: spec.to_json().encode())}

        return SimpleNamespace(get_object=get_object)

    monkeypatch.setattr(ml.clients, "s3_client", client_for)
    return reads


def _conf(command: list[str]) -> dict[str, str]:
    return dict(command[i + 1].split("=", 1) for i, part in enumerate(command[:-1]) if part == "--conf")


def test_preprocess_operator_resolves_spark_configuration_at_run_time(
    connections: Define,
    spark_submit: SubmittedJob,
    feature_spec_in_s3: list[tuple[S3Settings, str, str]],
    tmp_path: Path,
) -> None:
    from mlops_airflow.operators import FeaturePreprocessOperator

    operator = FeaturePreprocessOperator(
        task_id="pre", dataset="d", snapshot_id="abc", lake_bucket="unit-lake", conn_id="spark_default"
    )
    assert (operator.conf, operator.env_vars, operator.application_args) == (None, None, None), (
        "nothing is resolved when the DAG is parsed"
    )
    connections("aws_default", "spark_default")  # and no other
    context = lineage_context()
    with environment_unchanged():
        result = operator.execute(context)
    [(features, extra)] = context["outlet_events"].added["mlops_features"]
    assert (features.name, features.uri) == ("features/d/abc", "s3://unit-lake/datasets/d/features/abc")
    assert extra["made_from"] == "snapshot/d/abc", "the chain: features made from the snapshot"
    assert openlineage_io(operator) == (
        [("s3://unit-lake", "datasets/d/snapshots/abc", None)],
        [("s3://unit-lake", "datasets/d/features/abc", None)],
    )

    command = spark_submit.command
    assert command[command.index("--master") + 1] == "spark://spark.unit.test:7077"
    application = command.index(str(REPO / "ml" / "preprocess" / "job.py"))
    assert command[application + 1 :] == ["--dataset", "d", "--snapshot", "abc", "--lake-bucket", "unit-lake"]
    conf = _conf(command)
    assert conf["spark.sql.catalogImplementation"] == "hive"
    assert conf["spark.sql.warehouse.dir"] == "s3a://unit-lake/warehouse"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == S3_ENDPOINT
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    # a cluster master (client mode): the driver on this host keeps its jars, the workers bring their own
    assert conf["spark.driver.extraClassPath"] == SPARK_CLASSPATH
    assert not [key for key in conf if key.startswith("spark.executor") and SPARK_CLASSPATH in conf[key]]
    assert "spark.executor.extraClassPath" not in conf
    assert conf["spark.driver.host"] == "10.1.2.3"
    assert str(tmp_path / "hive" / "metastore_db") in conf["spark.hadoop.javax.jdo.option.ConnectionURL"]
    assert (tmp_path / "hive").is_dir(), "the embedded metastore's folder is made before the job starts"
    # the ml package reaches the executors as a zip, which lives as long as the job
    shipped = Path(command[command.index("--py-files") + 1])
    assert shipped.suffix == ".zip" and shipped == spark_submit.py_files_seen
    assert not shipped.exists() and operator.py_files is None

    assert result == {
        "features_uri": "s3://unit-lake/datasets/d/features/abc",
        "feature_spec_uri": "s3://unit-lake/datasets/d/features/abc/feature_spec.json",
        "rows": {"train": 8},
        "num_features": 1,
        "task": "regression",
    }
    assert feature_spec_in_s3 == [(CONNECTION_S3, "unit-lake", "datasets/d/features/abc/feature_spec.json")]


def test_batch_score_operator_submits_the_scoring_job_with_the_resolved_version(
    connections: Define, spark_submit: SubmittedJob
) -> None:
    import json

    from mlops_airflow.scoring import BatchScoreOperator

    model = {"name": "m", "version": "3", "checkpoint_uri": "s3://l/c", "feature_spec_uri": "s3://l/f.json"}
    operator = BatchScoreOperator(
        task_id="score",
        dataset="d",
        model=model,
        score_date="2026-12-03",
        raw_uri="s3://raw/d/",
        conn_id="spark_default",
    )
    assert (operator.conf, operator.env_vars, operator.application_args) == (None, None, None)
    connections("aws_default", "spark_default")
    with environment_unchanged():
        result = operator.execute({})
    command = spark_submit.command
    application = command.index(str(REPO / "ml" / "scoring" / "job.py"))
    args = command[application + 1 :]
    assert json.loads(args[args.index("--model-json") + 1]) == model
    assert args[args.index("--date") + 1] == "2026-12-03" and args[args.index("--raw-uri") + 1] == "s3://raw/d/"
    assert "--table" not in args and _conf(command)["spark.sql.catalogImplementation"] == "hive"
    assert spark_submit.py_files_seen is not None, "the ml zip ships with the job"
    assert result == {"table": "mlops.d_predictions", "score_date": "2026-12-03", "model": "m", "model_version": "3"}


def test_preprocess_operator_checks_the_clusters_services_before_it_submits(
    connections: Define, spark_submit: SubmittedJob, feature_spec_in_s3: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.preprocess.preflight
    from mlops_airflow.operators import FeaturePreprocessOperator

    connections("aws_default", "spark_default")
    operator = FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc", conn_id="spark_default")
    operator.execute(lineage_context())
    assert [spark.master for spark in spark_submit.preflights] == ["spark://spark.unit.test:7077"]

    def down(spark: Any) -> None:
        raise ml.preprocess.preflight.ClusterServiceUnreachable(f"the Spark master at {spark.master} is down")

    spark_submit.command = []
    monkeypatch.setattr(ml.preprocess.preflight, "require_cluster_services", down)
    with pytest.raises(ml.preprocess.preflight.ClusterServiceUnreachable, match=r"spark\.unit\.test:7077"):
        FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc", conn_id="spark_default").execute(
            lineage_context()
        )
    assert spark_submit.command == [], "nothing was submitted"


def test_preprocess_operator_gives_credentials_to_the_subprocess_only(
    connections: Define, spark_submit: SubmittedJob, feature_spec_in_s3: list[Any]
) -> None:
    """The keys go into env_vars (spark-submit's environment), never into --conf (the command line, `ps`, Spark's UI
    and event log) and never into the worker's own environment."""
    from mlops_airflow.operators import FeaturePreprocessOperator

    connections("aws_default", "spark_default")
    operator = FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc")
    with environment_unchanged():
        operator.execute(lineage_context())
    assert not [part for part in spark_submit.command if S3_KEY in part or ACCESS_KEY_ID in part]
    assert not [value for value in (operator.conf or {}).values() if S3_KEY in str(value)]
    assert spark_submit.env["AWS_ACCESS_KEY_ID"] == ACCESS_KEY_ID
    assert spark_submit.env["AWS_SECRET_ACCESS_KEY"] == S3_KEY
    assert spark_submit.env["AWS_ENDPOINT_URL"] == S3_ENDPOINT
    assert spark_submit.env["SPARK_LOCAL_IP"] == "10.1.2.3"
    assert Path(spark_submit.env["PYTHONPATH"]) == REPO, "the driver imports `ml` from the repository"


@pytest.fixture
def openlineage_to_kafka(monkeypatch: pytest.MonkeyPatch) -> str:
    """The OpenLineage provider configured as the stack configures it: its client in connection openlineage_default
    (a Kafka transport with a login). Returns the transport's password. (The provider caches its configuration,
    except under pytest.)"""
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__CONFIG_CONN_ID", "openlineage_default")
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__NAMESPACE", "unit-namespace")
    return uuid.uuid4().hex


def _openlineage_connection(password: str) -> dict[str, Any]:
    config = {
        "bootstrap.servers": KAFKA_SERVERS,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "lineage-user",
        "sasl.password": password,
    }
    return {"conn_type": "generic", "extra": {"transport": {"type": "kafka", "topic": "lineage", "config": config}}}


def test_preprocess_operator_adds_the_openlineage_listener_with_its_login_in_the_environment_only(
    connections: Define,
    spark_submit: SubmittedJob,
    feature_spec_in_s3: list[Any],
    openlineage_to_kafka: str,
    tmp_path: Path,
) -> None:
    """OpenLineage sends to Kafka and the Spark connection names the listener's jars: the job gets the listener on
    the driver's classpath, Airflow's namespace, and the transport (with its password) in spark-submit's
    environment, never on the command line."""
    from mlops_airflow.operators import FeaturePreprocessOperator

    password = openlineage_to_kafka
    spark = {**connection_documents(tmp_path / "hive")["spark_default"]}
    spark["extra"] = {**spark["extra"], "lineage-classpath": "/opt/lineage/ol.jar:/opt/lineage/kafka.jar"}
    connections("aws_default", spark_default=spark, openlineage_default=_openlineage_connection(password))
    FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc").execute(lineage_context())
    conf = _conf(spark_submit.command)
    assert conf["spark.extraListeners"] == "io.openlineage.spark.agent.OpenLineageSparkListener"
    assert conf["spark.openlineage.namespace"] == "unit-namespace"
    assert conf["spark.driver.extraClassPath"] == f"{SPARK_CLASSPATH}:/opt/lineage/ol.jar:/opt/lineage/kafka.jar"
    transport = json.loads(spark_submit.env["OPENLINEAGE__TRANSPORT"])
    assert (transport["type"], transport["topicName"]) == ("kafka", "lineage")
    assert transport["properties"]["bootstrap.servers"] == KAFKA_SERVERS
    assert f'password="{password}"' in transport["properties"]["sasl.jaas.config"]
    assert not [part for part in spark_submit.command if password in part]


def test_preprocess_operator_adds_no_listener_without_its_jars_or_without_openlineage(
    connections: Define,
    spark_submit: SubmittedJob,
    feature_spec_in_s3: list[Any],
    openlineage_to_kafka: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from mlops_airflow.operators import FeaturePreprocessOperator

    connections("aws_default", "spark_default", openlineage_default=_openlineage_connection(openlineage_to_kafka))
    FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc").execute(lineage_context())
    assert "spark.extraListeners" not in _conf(spark_submit.command), "no lineage-classpath in spark_default"
    assert "OPENLINEAGE__TRANSPORT" not in spark_submit.env

    # The jars, but OpenLineage not configured (no transport at all): no listener either.
    monkeypatch.delenv("AIRFLOW__OPENLINEAGE__CONFIG_CONN_ID")
    spark = {**connection_documents(tmp_path / "hive")["spark_default"]}
    spark["extra"] = {**spark["extra"], "lineage-classpath": "/opt/lineage/ol.jar"}
    connections("aws_default", spark_default=spark)
    FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc").execute(lineage_context())
    assert "spark.extraListeners" not in _conf(spark_submit.command), "OpenLineage is off"


def test_preprocess_operator_gives_the_driver_its_class_archive(
    connections: Define,
    spark_submit: SubmittedJob,
    feature_spec_in_s3: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `class-archive-dir` in the Spark connection, the first job's driver writes the archive (of the classpath
    it runs with, the listener's jars included) and a later job's maps it (ml.preprocess.class_archive)."""
    from ml.preprocess import class_archive
    from mlops_airflow.operators import FeaturePreprocessOperator

    java = tmp_path / "java"
    java.write_text("")
    monkeypatch.setattr(class_archive, "java_binary", lambda env: java)
    archives = tmp_path / "archives"
    spark = {**connection_documents(tmp_path / "hive")["spark_default"]}
    spark["extra"] = {**spark["extra"], "class-archive-dir": str(archives)}
    connections("aws_default", spark_default=spark)
    FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc").execute(lineage_context())
    options = _conf(spark_submit.command)["spark.driver.extraJavaOptions"].split()
    assert options[0].startswith("-Dderby.system.home="), "the embedded metastore's options stay"
    [written] = [Path(part.split("=", 1)[1]) for part in options if part.startswith("-XX:ArchiveClassesAtExit=")]
    assert written.parent == archives and not written.exists(), "the JVM (not started here) wrote none: none kept"
    archive = archives / f"{written.name.split('.')[0]}.jsa"
    archive.write_bytes(b"an archive")
    FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc").execute(lineage_context())
    options = _conf(spark_submit.command)["spark.driver.extraJavaOptions"].split()
    assert f"-XX:SharedArchiveFile={archive}" in options


def test_preprocess_operator_keeps_the_dag_authors_conf_and_env(
    connections: Define, spark_submit: SubmittedJob, feature_spec_in_s3: list[Any]
) -> None:
    from mlops_airflow.operators import FeaturePreprocessOperator

    connections("aws_default", "spark_default")
    FeaturePreprocessOperator(
        task_id="pre",
        dataset="d",
        snapshot_id="abc",
        conf={"spark.sql.shuffle.partitions": "3", "spark.executor.memory": "1g"},
        env_vars={"EXTRA": "1"},
    ).execute(lineage_context())
    conf = _conf(spark_submit.command)
    assert (conf["spark.sql.shuffle.partitions"], conf["spark.executor.memory"]) == ("3", "1g")
    assert spark_submit.env["EXTRA"] == "1" and spark_submit.env["AWS_SECRET_ACCESS_KEY"] == S3_KEY


def test_preprocess_operator_forwards_temporary_credentials(
    connections: Define, spark_submit: SubmittedJob, feature_spec_in_s3: list[Any]
) -> None:
    """A session token reaches spark-submit's environment with its keys (the job then hands all three to s3a's
    TemporaryAWSCredentialsProvider), and nothing of it the command line."""
    from mlops_airflow.operators import FeaturePreprocessOperator

    token = uuid.uuid4().hex
    temporary = {
        "conn_type": "aws",
        "login": ACCESS_KEY_ID,
        "password": S3_KEY,
        "extra": {"endpoint_url": S3_ENDPOINT, "region_name": "eu-west-1", "aws_session_token": token},
    }
    connections("spark_default", aws_default=temporary)
    FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc").execute(lineage_context())
    assert spark_submit.env["AWS_SESSION_TOKEN"] == token and spark_submit.env["AWS_SECRET_ACCESS_KEY"] == S3_KEY
    assert not [part for part in spark_submit.command if token in part]


def test_preprocess_operator_keeps_the_dag_authors_py_files(
    connections: Define, spark_submit: SubmittedJob, feature_spec_in_s3: list[Any]
) -> None:
    from mlops_airflow.operators import FeaturePreprocessOperator

    connections("aws_default", "spark_default")
    operator = FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc", py_files="/opt/extra/udfs.zip")
    operator.execute(lineage_context())
    shipped = spark_submit.command[spark_submit.command.index("--py-files") + 1].split(",")
    assert shipped[1:] == ["/opt/extra/udfs.zip"] and Path(shipped[0]).name.startswith("ml-")
    assert operator.py_files == "/opt/extra/udfs.zip", "what the DAG author gave is kept for a retry"


def test_preprocess_operator_on_a_local_master_shares_the_drivers_jars(
    connections: Define, spark_submit: SubmittedJob, feature_spec_in_s3: list[Any]
) -> None:
    from mlops_airflow.operators import FeaturePreprocessOperator

    local = {"conn_type": "spark", "host": "local[2]", "extra": {"extra-classpath": SPARK_CLASSPATH}}
    connections("aws_default", spark_local=local)
    FeaturePreprocessOperator(task_id="pre", dataset="d", snapshot_id="abc", conn_id="spark_local").execute(
        lineage_context()
    )
    conf = _conf(spark_submit.command)
    assert conf["spark.driver.extraClassPath"] == conf["spark.executor.extraClassPath"] == SPARK_CLASSPATH
    assert "SPARK_LOCAL_IP" not in spark_submit.env, "no local-ip extra: no address pinned"


# --- SkipIfModelExistsOperator ----------------------------------------------------------------------------------------


class FakeRegistry:
    """The MlflowClient the hook builds (ml.clients.mlflow_client replaced)."""

    def __init__(self, versions: list[Any], error: Exception | None = None) -> None:
        self.versions, self.error = versions, error
        self.built_for: list[MlflowSettings] = []
        self.queries: list[str] = []

    def search_model_versions(self, query: str, **options: Any) -> list[Any]:
        self.queries.append(query)
        if self.error is not None:
            raise self.error
        return self.versions


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeRegistry]:
    import ml.clients

    def install(versions: list[Any], error: Exception | None = None) -> FakeRegistry:
        fake = FakeRegistry(versions, error)
        monkeypatch.setattr(ml.clients, "mlflow_client", lambda settings: fake.built_for.append(settings) or fake)
        return fake

    return install


def _branch(force: Any = False) -> Any:
    from mlops_airflow.run_outcome import SkipIfModelExistsOperator

    return SkipIfModelExistsOperator(
        task_id="check",
        dataset="d",
        snapshot_id="abc",
        ml_task="classification",
        force=force,
        train_task_id="preprocess_with_spark",
        reuse_task_id="reuse_existing_model",
    )


def _ti() -> tuple[Any, dict[str, Any]]:
    pushed: dict[str, Any] = {}
    return SimpleNamespace(xcom_push=lambda key, value: pushed.update({key: value})), pushed


@pytest.mark.parametrize(
    ("found", "expected", "existing"),
    [
        ([], "preprocess_with_spark", {}),
        ([SimpleNamespace(version=7)], "reuse_existing_model", {"model": "d-classification", "version": "7"}),
    ],
    ids=["no-model-train", "model-exists-reuse"],
)
def test_skip_branch_follows_an_existing_model(
    connections: Define,
    registry: Callable[..., FakeRegistry],
    mlflow_checks: list[Any],
    found: list[Any],
    expected: str,
    existing: Any,
) -> None:
    from ml.lineage import code_version

    connections("mlflow_default")  # and no other
    fake = registry(found)
    ti, pushed = _ti()
    with environment_unchanged():
        assert _branch().choose_branch({"ti": ti}) == expected
    assert mlflow_checks == [MlflowSettings(MLFLOW_URI)], "the server (and its store) checked first"
    assert fake.built_for == [MlflowSettings(MLFLOW_URI)]
    assert fake.queries == [
        f"name = 'd-classification' and tags.`snapshot_id` = 'abc' and tags.`code_version` = '{code_version()}' "
        "and tags.`mlops.registration` = 'complete'"
    ]
    # Always pushed, and never None: Airflow reads a None XCom as a missing one, and the summary's XComArg of this
    # key would then fail (XComNotFound) on every training run.
    assert pushed == {"existing_model": existing}


@pytest.mark.parametrize("force", [True, "True", "true"])
def test_skip_branch_trains_when_forced_without_asking_mlflow(
    connections: Define, registry: Callable[..., FakeRegistry], force: Any
) -> None:
    connections()  # not even mlflow_default: a forced run does not need the registry
    fake = registry([SimpleNamespace(version=7)])
    ti, pushed = _ti()
    assert _branch(force).choose_branch({"ti": ti}) == "preprocess_with_spark"
    assert fake.queries == [] and pushed == {"existing_model": {}}


def test_skip_branch_fails_when_mlflow_fails(connections: Define, registry: Callable[..., FakeRegistry]) -> None:
    """An unreachable registry fails the task (and its retries), instead of starting hours of tuning."""
    from mlflow.exceptions import MlflowException

    connections("mlflow_default")
    registry([], MlflowException("API request to http://mlflow.unit.test:5000/... failed: Connection refused"))
    ti, pushed = _ti()
    with pytest.raises(MlflowException, match=r"mlflow\.unit\.test"):
        _branch().choose_branch({"ti": ti})
    assert pushed == {}


# --- RayTuneOperator --------------------------------------------------------------------------------------------------


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    import ml.tune.search

    calls: list[tuple[Any, dict[str, Any]]] = []

    def fake_run_search(config: Any, **settings: Any) -> Any:
        assert_no_credentials_in_environment()
        calls.append((config, settings))
        return SimpleNamespace(to_dict=lambda: {"best_params": {"lr": 0.1}, "num_trials": config.num_samples})

    monkeypatch.setattr(ml.tune.search, "run_search", fake_run_search)
    return calls


def _tune_operator(**changes: Any) -> Any:
    from mlops_airflow.operators import RayTuneOperator

    values: dict[str, Any] = {
        "task_id": "tune",
        "dataset": "d",
        "snapshot_id": "abc",
        "search_space": None,
        "num_samples": "3",
        "max_concurrent_trials": "2",
        "max_epochs": "4",
        "lake_bucket": "unit-lake",
    }
    return RayTuneOperator(**{**values, **changes})


def test_ray_tune_operator_names_the_search_after_the_dag_run(
    connections: Define, searches: list[tuple[Any, dict[str, Any]]], mlflow_checks: list[Any]
) -> None:
    from ml.tune.space import default_search_space

    connections("aws_tune", "mlflow_default", "kafka_default")  # no ray_default: a local Ray
    operator = _tune_operator()
    with environment_unchanged():
        result = operator.execute({"run_id": RUN_ID})
    [(config, settings)] = searches
    assert mlflow_checks == [MlflowSettings(MLFLOW_URI)], "MLflow (and its store) checked before the search"
    assert config.run_name == "manual__2026-01-01T00-00-00-00-00"  # sanitised, identical on every retry
    assert config.dag_run_id == RUN_ID
    assert (config.dataset, config.snapshot_id) == ("d", "abc")
    assert (config.num_samples, config.max_concurrent_trials, config.max_epochs) == (3, 2, 4)
    assert config.search_space == default_search_space()
    assert settings == {
        "s3": TUNE_CONNECTION_S3,
        "lake": LAKE,
        "ray": RaySettings(None),
        "mlflow": MlflowSettings(MLFLOW_URI),
        "kafka": KafkaSettings(KAFKA_SERVERS),
    }
    assert openlineage_io(operator) == (
        [("s3://unit-lake", "datasets/d/features/abc", None)],
        [("s3://unit-lake", f"tune/d/abc/{config.run_name}", None)],
    ), "OpenLineage: the search read the features and wrote its storage"
    assert result == {"best_params": {"lr": 0.1}, "num_trials": 3}


def test_ray_tune_operator_passes_the_data_parallel_and_cache_settings(
    connections: Define, searches: list[tuple[Any, dict[str, Any]]]
) -> None:
    connections("aws_tune", "mlflow_default", "kafka_default")
    _tune_operator().execute({"run_id": RUN_ID})
    # Rendered DAG params arrive as text; "None" is a null gpus_per_worker (Ray decides).
    _tune_operator(workers_per_trial="2", gpus_per_worker="0.5", cache_mb="64").execute({"run_id": RUN_ID})
    _tune_operator(gpus_per_worker="None").execute({"run_id": RUN_ID})
    defaults, given, null_gpus = (config for config, _ in searches)
    assert (defaults.workers_per_trial, defaults.gpus_per_worker, defaults.cache_mb) == (1, None, 1024.0)
    assert (given.workers_per_trial, given.gpus_per_worker, given.cache_mb) == (2, 0.5, 64.0)
    assert null_gpus.gpus_per_worker is None


def test_ray_tune_operator_uses_the_ray_connection_and_a_given_space(
    connections: Define, searches: list[tuple[Any, dict[str, Any]]]
) -> None:
    space = {"num_layers": {"type": "choice", "values": [1, 2]}, "activation": "relu"}
    connections("aws_tune", "mlflow_default", "kafka_default", "ray_default")
    _tune_operator(search_space=space).execute({"run_id": RUN_ID})
    [(config, settings)] = searches
    assert settings["ray"] == RaySettings("ray://ray.unit.test:10001")
    assert config.search_space["num_layers"] == space["num_layers"]


def test_ray_tune_operator_never_reads_a_file_of_the_worker(
    connections: Define, searches: list[tuple[Any, dict[str, Any]]], tmp_path: Path
) -> None:
    local = tmp_path / "space.json"
    local.write_text('{"lr": 0.01}')
    connections("aws_tune", "mlflow_default", "kafka_default")
    with pytest.raises(ValueError, match="nor an s3:// URI"):
        _tune_operator(search_space=str(local)).execute({"run_id": RUN_ID})
    assert searches == []


def test_ray_tune_operator_passes_the_clusters_token_in_the_settings_only(
    connections: Define, searches: list[tuple[Any, dict[str, Any]]]
) -> None:
    token = uuid.uuid4().hex
    ray_cluster = {"conn_type": "generic", "password": token, "extra": {"address": "10.0.0.5:6380"}}
    connections("aws_tune", "mlflow_default", "kafka_default", ray_default=ray_cluster)
    with environment_unchanged():
        _tune_operator().execute({"run_id": RUN_ID})
    [(_, settings)] = searches
    assert settings["ray"] == RaySettings("10.0.0.5:6380", auth_token=token)
    assert token not in os.environ.values()


def test_ray_tune_operator_gives_the_search_the_state_signing_key_of_the_ray_connection(
    connections: Define, searches: list[tuple[Any, dict[str, Any]]]
) -> None:
    signing_key = uuid.uuid4().hex + uuid.uuid4().hex
    local_ray = {"conn_type": "generic", "extra": {"state-signing-secret": signing_key}}
    connections("aws_tune", "mlflow_default", "kafka_default", ray_default=local_ray)
    with environment_unchanged():
        _tune_operator().execute({"run_id": RUN_ID})
    [(_, settings)] = searches
    assert settings["ray"] == RaySettings(None, state_signing_key=signing_key)
    assert signing_key not in os.environ.values()


def test_ray_tune_operator_has_the_tuning_report_link() -> None:
    from mlops_airflow.operators import TuningReportLink

    assert [type(link) for link in _tune_operator().operator_extra_links] == [TuningReportLink]


def test_ray_tune_operator_on_kill_stops_ray_only_when_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    calls: list[str] = []
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    operator = _tune_operator()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    operator.on_kill()
    assert calls == []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    operator.on_kill()
    assert calls == ["shutdown"]


# --- RegisterModelOperator --------------------------------------------------------------------------------------------

EVALUATION = {"dataset": "d", "snapshot_id": "abc", "metric": "accuracy", "test_metrics": {"accuracy": 0.9}}
DECISION = {"model_name": "d-classification", "version": "3", "decision": "promoted", "promoted": True}


@pytest.fixture
def registration(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import ml.evaluate
    import ml.registry.promote

    seen: dict[str, Any] = {}

    def fake_evaluate_best(search_result: Any, **settings: Any) -> dict[str, Any]:
        assert_no_credentials_in_environment()
        seen["evaluate"] = (search_result, settings)
        return dict(EVALUATION)

    def fake_register_and_promote(evaluation: Any, context: Any, **options: Any) -> dict[str, Any]:
        assert_no_credentials_in_environment()
        seen["register"] = (evaluation, context, options)
        return dict(DECISION)

    monkeypatch.setattr(ml.evaluate, "evaluate_best", fake_evaluate_best)
    monkeypatch.setattr(ml.registry.promote, "register_and_promote", fake_register_and_promote)
    return seen


def _register_operator(**changes: Any) -> Any:
    from airflow.sdk import DAG

    from mlops_airflow.operators import RegisterModelOperator

    with DAG("unit_dag", schedule=None):
        return RegisterModelOperator(
            task_id="register",
            **{"search_result": {"best_trial_id": "t1"}, "lake_bucket": "unit-lake", **changes},
        )


def test_register_operator_passes_its_connections_to_evaluation_and_registry(
    connections: Define, registration: dict[str, Any], mlflow_checks: list[Any]
) -> None:
    from airflow.sdk.api.datamodels._generated import DagRunType

    from ml.lineage import code_version

    connections("aws_default", "mlflow_default", "kafka_default")  # and no other
    operator = _register_operator(metric="", margin="0.05", allow_backfill_promotion="False")
    drift = {"source": "drift", "model_name": "toy-classification", "model_version": "2"}
    context = lineage_context(
        run_id=RUN_ID, dag_run=SimpleNamespace(run_type=DagRunType.MANUAL), params={"event": drift}
    )
    with environment_unchanged():
        result = operator.execute(context)
    [(version, extra)] = context["outlet_events"].added["mlops_model_versions"]
    assert (version.name, version.uri) == ("model/d-classification/3", "models:/d-classification/3")
    assert extra == {"made_from": "features/d/abc", "decision": "promoted", "promoted": True}
    assert openlineage_io(operator) == (
        [("s3://unit-lake", "datasets/d/features/abc", None)],
        [(MLFLOW_URI.rstrip("/"), "models/d-classification", "3")],
    )
    assert mlflow_checks == [MlflowSettings(MLFLOW_URI)], "MLflow (and its store) checked before any work"
    assert registration["evaluate"] == (
        {"best_trial_id": "t1"},
        {"s3": CONNECTION_S3, "mlflow": MlflowSettings(MLFLOW_URI)},
    )
    evaluation, context, options = registration["register"]
    assert evaluation == EVALUATION
    assert (context.mlflow, context.s3, context.lake, context.kafka) == (
        MlflowSettings(MLFLOW_URI),
        CONNECTION_S3,
        LAKE,
        KafkaSettings(KAFKA_SERVERS),
    )
    assert context.publish is None, "events go to the kafka_default brokers"
    assert options == {
        "dag_id": "unit_dag",
        "dag_run_id": RUN_ID,
        "code_version": code_version(),
        "metric": None,
        "margin": 0.05,
        "is_backfill": False,
        "allow_backfill_promotion": False,
        "task_id": "register",
        "trigger_event": drift,  # the run's `event` param: what started it, for the version's tags
    }
    assert result == {"evaluation": EVALUATION, **DECISION}


@pytest.mark.parametrize(
    ("run_type", "allow", "expected"),
    [("BACKFILL", True, (True, True)), ("BACKFILL", "false", (True, False)), ("SCHEDULED", "True", (False, True))],
)
def test_register_operator_tells_the_gate_about_backfills(
    connections: Define, registration: dict[str, Any], run_type: str, allow: Any, expected: tuple[bool, bool]
) -> None:
    from airflow.sdk.api.datamodels._generated import DagRunType

    connections("aws_default", "mlflow_default", "kafka_default")
    dag_run = SimpleNamespace(run_type=DagRunType[run_type])
    _register_operator(allow_backfill_promotion=allow).execute(lineage_context(run_id=RUN_ID, dag_run=dag_run))
    options = registration["register"][2]
    assert (options["is_backfill"], options["allow_backfill_promotion"]) == expected


# --- PublishRunSummaryOperator ----------------------------------------------------------------------------------------


def _summary_operator(**values: Any) -> Any:
    from airflow.sdk import DAG

    from mlops_airflow.run_outcome import PublishRunSummaryOperator

    with DAG("unit_dag", schedule=None):
        return PublishRunSummaryOperator(task_id="publish_run_summary", **values)


SNAPSHOT = {"dataset": "d", "snapshot_id": "abc", "rows": 344}


@pytest.mark.parametrize("no_model", [None, {}], ids=["none", "branch-trained"])
def test_run_summary_of_a_trained_model(
    connections: Define, published: list[dict[str, Any]], no_model: dict[str, str] | None
) -> None:
    from ml.events.envelope import pipeline_event_key
    from ml.topics import PIPELINE_EVENTS

    connections("kafka_default")  # and no other
    registered = {"evaluation": {"test_metrics": {"accuracy": 0.97}}, "version": "3", "decision": "promoted"}
    operator = _summary_operator(
        snapshot=SNAPSHOT,
        search={"best_params": {"lr": 0.01}, "num_trials": 8},
        registered=registered,
        existing_model=no_model,  # the branch pushes {} when it trains
    )
    with environment_unchanged():
        summary = operator.execute({"run_id": RUN_ID})
    assert summary == {
        "dataset": "d",
        "snapshot_id": "abc",
        "rows": 344,
        "outcome": "trained",
        "existing_model": None,
        "best_params": {"lr": 0.01},
        "num_trials": 8,
        "test_metrics": {"accuracy": 0.97},
        "model": {"version": "3", "decision": "promoted"},
    }
    [message] = published
    assert (message["kafka"], message["topic"]) == (KafkaSettings(KAFKA_SERVERS), PIPELINE_EVENTS)
    assert message["key"] == pipeline_event_key("unit_dag", RUN_ID, "publish_run_summary", "run_summary")
    envelope = message["envelope"]
    assert envelope["dag_run_id"] == RUN_ID
    assert envelope["payload"] == {
        "dag_id": "unit_dag",
        "task_id": "publish_run_summary",
        "event": "run_summary",
        "details": summary,
    }


def test_run_summary_of_a_reused_model(connections: Define, published: list[dict[str, Any]]) -> None:
    """The skip path: tuning and registration were skipped, so their XComArgs resolve to None."""
    connections("kafka_default")
    existing = {"model": "d-classification", "version": "7"}
    summary = _summary_operator(snapshot=SNAPSHOT, search=None, registered=None, existing_model=existing).execute(
        {"run_id": RUN_ID}
    )
    assert summary["outcome"] == "reused_existing_model" and summary["existing_model"] == existing
    assert (summary["best_params"], summary["num_trials"], summary["test_metrics"], summary["model"]) == (
        None,
        None,
        None,
        None,
    )
    assert published[0]["envelope"]["payload"]["details"] == summary


def test_run_summary_fails_when_kafka_does_not_take_it(connections: Define, monkeypatch: pytest.MonkeyPatch) -> None:
    """Publishing is this task's whole job: unlike a callback, it fails (and is retried) when the broker is down."""
    import ml.events.publisher
    from ml.events.publisher import EventPublishError

    def down(*args: Any, **kwargs: Any) -> Any:
        raise EventPublishError(f"Kafka is unreachable at {KAFKA_SERVERS}")

    connections("kafka_default")
    monkeypatch.setattr(ml.events.publisher, "publish_event", down)
    with pytest.raises(EventPublishError, match=KAFKA_SERVERS):
        _summary_operator(snapshot=SNAPSHOT).execute({"run_id": RUN_ID})


def test_tuning_report_link_points_at_the_report_of_the_run() -> None:
    from mlops_airflow.operators import TuningReportLink

    key = SimpleNamespace(dag_id="mlops_training", run_id="manual__2026-01-01T00:00:00+00:00")
    link = TuningReportLink().get_link(None, ti_key=key)
    assert link.endswith("/mlops/tuning-report?dag_id=mlops_training&run_id=manual__2026-01-01T00%3A00%3A00%2B00%3A00")
    assert link.startswith("http"), "the UI renders extra links as external links: absolute"
