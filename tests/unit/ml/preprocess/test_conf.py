"""ml.preprocess.conf: the `--conf` pairs of a pipeline Spark job (local master or cluster), the s3a credentials the
job hands its executors, and the environment of its spark-submit."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from ml.preprocess.conf import (
    CLUSTER_SHUFFLE_PARTITIONS,
    apply_s3a_credentials,
    s3a_credentials,
    shuffle_partitions_for,
    spark_conf,
    spark_submit_env,
)
from ml.settings import LakeSettings, S3Settings, SparkSettings

HOST_JARS = "/opt/airflow-host/jars/hadoop-aws.jar:/opt/airflow-host/jars/bundle.jar"


def keyed_s3(endpoint_url: str | None = "http://127.0.0.1:9000") -> S3Settings:
    return S3Settings(
        endpoint_url=endpoint_url,
        region="eu-west-3",
        access_key_id=uuid.uuid4().hex,
        secret_access_key=uuid.uuid4().hex,
        session_token=uuid.uuid4().hex,
    )


def test_conf_points_s3a_at_the_endpoint_and_hive_at_the_lake() -> None:
    conf = spark_conf(SparkSettings(), keyed_s3(), LakeSettings(lake_bucket="my-lake"), shuffle_partitions=3)
    assert conf["spark.sql.shuffle.partitions"] == "3"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-3"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.sql.catalogImplementation"] == "hive"
    assert conf["spark.sql.warehouse.dir"] == "s3a://my-lake/warehouse"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.sql.inMemoryColumnarStorage.compressed"] == "false"  # the job's cache: built faster (B3)
    # a dead object store fails the job in seconds, not minutes: Airflow's retry is the recovery
    assert int(conf["spark.hadoop.fs.s3a.retry.limit"]) <= 3 and int(conf["spark.hadoop.fs.s3a.attempts.maximum"]) <= 2
    assert all(isinstance(value, str) for value in conf.values())


def test_conf_never_holds_credentials() -> None:
    s3 = keyed_s3()
    text = repr(spark_conf(SparkSettings(metastore_dir="/tmp/hive", extra_classpath="/jars/a.jar"), s3, LakeSettings()))
    for secret in (s3.access_key_id, s3.secret_access_key, s3.session_token):
        assert secret and secret not in text
    assert "access.key" not in text and "secret.key" not in text


def test_https_and_aws_endpoints() -> None:
    assert (
        spark_conf(SparkSettings(), keyed_s3("https://s3.example"), LakeSettings())[
            "spark.hadoop.fs.s3a.connection.ssl.enabled"
        ]
        == "true"
    )
    # no endpoint: s3a's own (AWS), no path-style override
    conf = spark_conf(SparkSettings(), keyed_s3(None), LakeSettings())
    assert "spark.hadoop.fs.s3a.endpoint" not in conf and "spark.hadoop.fs.s3a.path.style.access" not in conf


def test_shuffle_partitions_default_fits_the_cores() -> None:
    partitions = int(spark_conf(SparkSettings(), keyed_s3(), LakeSettings())["spark.sql.shuffle.partitions"])
    assert 4 <= partitions < 200


def test_the_metastore_and_the_classpath_when_the_deployment_has_them(tmp_path: Path) -> None:
    bare = spark_conf(SparkSettings(metastore_dir=None, extra_classpath=""), keyed_s3(), LakeSettings())
    assert not any("jdo" in key or "extraClassPath" in key or "extraJavaOptions" in key for key in bare)
    hive = tmp_path / "hive"
    conf = spark_conf(
        SparkSettings(metastore_dir=str(hive), extra_classpath="/jars/a.jar:/jars/b.jar"), keyed_s3(), LakeSettings()
    )
    assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"] == (
        f"jdbc:derby:;databaseName={hive / 'metastore_db'};create=true"
    )
    assert f"-Dderby.system.home={hive}" in conf["spark.driver.extraJavaOptions"]
    assert conf["spark.driver.extraClassPath"] == conf["spark.executor.extraClassPath"] == "/jars/a.jar:/jars/b.jar"


def test_submit_env_carries_the_credentials_and_bind_address(tmp_path: Path) -> None:
    s3 = keyed_s3()
    hive = tmp_path / "data" / "hive"
    env = spark_submit_env(SparkSettings(local_ip="127.0.0.1", metastore_dir=str(hive)), s3)
    assert env == {**s3.subprocess_env(), "SPARK_LOCAL_IP": "127.0.0.1"}
    assert env["AWS_ACCESS_KEY_ID"] == s3.access_key_id and env["AWS_SECRET_ACCESS_KEY"] == s3.secret_access_key
    assert hive.is_dir()  # the Derby folder is created for the job
    assert "SPARK_LOCAL_IP" not in spark_submit_env(SparkSettings(local_ip=None), S3Settings())


# --- a cluster master: nothing executor-side from the submitting host ---------------------------------------------


def executor_side(conf: dict[str, str]) -> dict[str, str]:
    """The keys that configure executors (their JVM, classpath, environment) rather than the driver."""
    return {key: value for key, value in conf.items() if key.startswith(("spark.executor", "spark.executorEnv."))}


@pytest.mark.parametrize(
    "master", ["spark://127.0.0.1:7077", "yarn", "k8s://https://api:6443", "local-cluster[2,1,512]"]
)
def test_a_cluster_gets_no_path_of_the_submitting_host_for_its_executors(master: str, tmp_path: Path) -> None:
    hive = tmp_path / "hive"
    spark = SparkSettings(master=master, extra_classpath=HOST_JARS, metastore_dir=str(hive), local_ip="10.0.0.5")
    conf = spark_conf(spark, keyed_s3(), LakeSettings())
    assert "spark.executor.extraClassPath" not in conf
    for value in executor_side(conf).values():
        assert "/opt/airflow-host" not in value and str(tmp_path) not in value
    # client mode: the driver runs on the submitting host and keeps its jars and its Derby folder
    assert conf["spark.driver.extraClassPath"] == HOST_JARS
    assert f"-Dderby.system.home={hive}" in conf["spark.driver.extraJavaOptions"]
    # executors in other processes connect back to the driver's address
    assert conf["spark.driver.host"] == "10.0.0.5"


def test_a_classpath_on_the_workers_goes_to_the_executors_of_a_cluster_only() -> None:
    spark = SparkSettings(
        master="spark://master:7077", extra_classpath=HOST_JARS, executor_classpath="/opt/spark/extra-jars/*"
    )
    assert spark_conf(spark, keyed_s3(), LakeSettings())["spark.executor.extraClassPath"] == "/opt/spark/extra-jars/*"
    # a local master's executors live in the driver's JVM, on this host: they share the driver's jars
    local = SparkSettings(master="local[2]", extra_classpath=HOST_JARS, executor_classpath="/opt/spark/extra-jars/*")
    assert spark_conf(local, keyed_s3(), LakeSettings())["spark.executor.extraClassPath"] == HOST_JARS


def test_a_networked_metastore_replaces_the_embedded_one(tmp_path: Path) -> None:
    hive = tmp_path / "hive"
    spark = SparkSettings(metastore_uri="thrift://metastore:9083", metastore_dir=str(hive))
    assert spark.metastore_dir is None, "one metastore: the Derby folder is ignored"
    conf = spark_conf(spark, keyed_s3(), LakeSettings())
    assert conf["spark.hadoop.hive.metastore.uris"] == "thrift://metastore:9083"
    assert not [key for key in conf if "jdo" in key or "derby" in conf[key].lower() or "extraJavaOptions" in key]
    spark_submit_env(spark, keyed_s3())
    assert not hive.exists(), "no Derby folder is made for a networked metastore"


def test_cores_max_shares_a_standalone_cluster_and_sizes_its_shuffles() -> None:
    cluster = SparkSettings(master="spark://master:7077", cores_max=3)
    conf = spark_conf(cluster, keyed_s3(), LakeSettings())
    assert (conf["spark.cores.max"], conf["spark.sql.shuffle.partitions"]) == ("3", "6")
    # a cluster of unknown size: a fixed count that adaptive execution coalesces, never this host's cores
    unsized = spark_conf(SparkSettings(master="spark://master:7077"), keyed_s3(), LakeSettings())
    assert unsized["spark.sql.shuffle.partitions"] == str(CLUSTER_SHUFFLE_PARTITIONS)
    assert "spark.cores.max" not in unsized
    # local keeps sizing by this host's cores
    local = SparkSettings(master="local[*]", cores_max=3)
    assert shuffle_partitions_for(local) == max(4, 2 * (os.cpu_count() or 2))
    # an explicit count wins everywhere
    assert spark_conf(cluster, keyed_s3(), LakeSettings(), shuffle_partitions=5)["spark.sql.shuffle.partitions"] == "5"


def test_no_local_ip_pins_no_address() -> None:
    conf = spark_conf(SparkSettings(local_ip=None), keyed_s3(), LakeSettings())
    assert "spark.driver.host" not in conf
    assert (
        spark_conf(SparkSettings(local_ip="127.0.0.1"), keyed_s3(), LakeSettings())["spark.driver.host"] == "127.0.0.1"
    )


# --- the credentials the job gives its executors -------------------------------------------------------------------


def test_temporary_credentials_travel_with_their_session_token() -> None:
    s3 = keyed_s3()
    assert s3a_credentials(s3) == {
        "fs.s3a.access.key": s3.access_key_id,
        "fs.s3a.secret.key": s3.secret_access_key,
        "fs.s3a.session.token": s3.session_token,
        "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider",
    }


def test_long_lived_keys_use_the_simple_provider_and_no_keys_leave_s3as_chain() -> None:
    s3 = S3Settings(access_key_id=uuid.uuid4().hex, secret_access_key=uuid.uuid4().hex)
    credentials = s3a_credentials(s3)
    assert credentials["fs.s3a.aws.credentials.provider"] == "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
    assert "fs.s3a.session.token" not in credentials
    assert s3a_credentials(S3Settings()) == {}, "no keys: the workers' own chain (an instance role, say)"


def test_the_credentials_reach_the_hadoop_configuration_each_job_ships(spark: Any) -> None:
    """Set on a live session, they are in the configuration Spark builds for each file scan and write (and sends to
    the executors with the tasks), not only in the driver's environment."""
    s3 = S3Settings(access_key_id=uuid.uuid4().hex, secret_access_key=uuid.uuid4().hex, session_token=uuid.uuid4().hex)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    keys = ("fs.s3a.access.key", "fs.s3a.secret.key", "fs.s3a.session.token", "fs.s3a.aws.credentials.provider")
    try:
        apply_s3a_credentials(spark, s3)
        per_job = spark._jsparkSession.sessionState().newHadoopConf()
        assert [per_job.get(key) for key in keys] == [
            s3.access_key_id,
            s3.secret_access_key,
            s3.session_token,
            "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider",
        ]
    finally:
        for key in keys:  # the session is shared by the module's tests
            hadoop.unset(key)
