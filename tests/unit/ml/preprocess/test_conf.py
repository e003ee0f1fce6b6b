"""ml.preprocess.conf: the `--conf` pairs of a pipeline Spark job and the environment of its spark-submit."""

from __future__ import annotations

import uuid
from pathlib import Path

from ml.preprocess.conf import spark_conf, spark_submit_env
from ml.settings import LakeSettings, S3Settings, SparkSettings


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
