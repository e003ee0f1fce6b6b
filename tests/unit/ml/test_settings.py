"""ml.settings: typed settings read from an environment mapping (never this process's), written back for a child
process, and keys that stay out of every repr."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from ml.settings import (
    PROJECT_ROOT,
    KafkaSettings,
    LakeSettings,
    MlflowSettings,
    RaySettings,
    S3Settings,
    Settings,
    SparkSettings,
)


def keys() -> dict[str, str]:
    """A made-up key triple for one test (never a real one, never written anywhere)."""
    return {
        "AWS_ACCESS_KEY_ID": uuid.uuid4().hex,
        "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex,
        "AWS_SESSION_TOKEN": uuid.uuid4().hex,
    }


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    """A stack folder with the s3a classpath file that `make stack-up` writes."""
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "spark-s3a.classpath").write_text("/jars/hadoop-aws.jar:/jars/bundle.jar\n")
    return tmp_path


def full_env(stack_dir: Path) -> dict[str, str]:
    return {
        **keys(),
        "AWS_ENDPOINT_URL": "http://s3.example:9000",
        "AWS_DEFAULT_REGION": "eu-west-3",
        "MLOPS_RAW_BUCKET": "incoming",
        "MLOPS_LAKE_BUCKET": "warehouse",
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092, k2:9092",
        "MLFLOW_TRACKING_URI": "http://mlflow.example:5000",
        "SPARK_MASTER": "spark://master:7077",
        "SPARK_LOCAL_IP": "10.0.0.5",
        "RAY_ADDRESS": "ray://head:10001",
        "MLOPS_STACK_DIR": str(stack_dir),
    }


def test_defaults_are_the_local_stack() -> None:
    settings = Settings()
    assert settings.s3 == S3Settings(endpoint_url="http://127.0.0.1:9000", region="us-east-1")
    assert settings.s3.access_key_id is None and settings.s3.secret_access_key is None
    assert settings.lake == LakeSettings("raw", "lake")
    assert settings.kafka.servers == ["127.0.0.1:9092"]
    assert settings.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert settings.spark.master == "local[*]" and settings.ray.address is None


def test_from_env_reads_every_variable(stack_dir: Path) -> None:
    env = full_env(stack_dir)
    settings = Settings.from_env(env)
    assert settings == Settings(
        s3=S3Settings(
            endpoint_url="http://s3.example:9000",
            region="eu-west-3",
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            session_token=env["AWS_SESSION_TOKEN"],
        ),
        lake=LakeSettings("incoming", "warehouse"),
        kafka=KafkaSettings("k1:9092, k2:9092"),
        mlflow=MlflowSettings("http://mlflow.example:5000"),
        spark=SparkSettings(
            master="spark://master:7077",
            extra_classpath="/jars/hadoop-aws.jar:/jars/bundle.jar",
            metastore_dir=str(stack_dir / "data" / "hive"),
            local_ip="10.0.0.5",
        ),
        ray=RaySettings("ray://head:10001"),
    )
    assert settings.kafka.servers == ["k1:9092", "k2:9092"]


def test_unset_variables_keep_the_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({"MLOPS_STACK_DIR": str(tmp_path)})
    defaults = Settings()
    assert (settings.s3, settings.lake, settings.kafka, settings.mlflow, settings.ray) == (
        defaults.s3,
        defaults.lake,
        defaults.kafka,
        defaults.mlflow,
        defaults.ray,
    )
    # no classpath file: nothing added to Spark's classpath
    assert settings.spark.extra_classpath == "" and settings.spark.metastore_dir == str(tmp_path / "data" / "hive")
    assert Settings.from_env({}).spark.metastore_dir == str(PROJECT_ROOT / ".stack" / "data" / "hive")


def test_empty_values_mean_none() -> None:
    settings = Settings.from_env(
        {"AWS_ENDPOINT_URL": "", "AWS_ACCESS_KEY_ID": "", "SPARK_LOCAL_IP": "", "RAY_ADDRESS": ""}
    )
    assert settings.s3.endpoint_url is None  # AWS itself
    assert settings.s3.access_key_id is None and settings.spark.local_ip is None and settings.ray.address is None


def test_to_env_round_trips_the_environment_it_came_from(stack_dir: Path) -> None:
    settings = Settings.from_env({k: v for k, v in full_env(stack_dir).items() if k != "MLOPS_STACK_DIR"})
    assert Settings.from_env(settings.to_env()) == settings
    env = settings.to_env()
    assert env["AWS_SECRET_ACCESS_KEY"] == settings.s3.secret_access_key  # credentials included, for a child
    assert all(isinstance(value, str) and value for value in env.values())


def test_to_env_round_trips_aws_without_an_endpoint() -> None:
    settings = Settings.from_env({"AWS_ENDPOINT_URL": "", **keys()})
    assert Settings.from_env(settings.to_env()).s3 == settings.s3


def test_to_env_round_trips_the_stack_folder(stack_dir: Path) -> None:
    settings = Settings.from_env(full_env(stack_dir))
    assert Settings.from_env(settings.to_env()).spark == settings.spark


def test_subprocess_env_has_only_what_is_set() -> None:
    # No endpoint (AWS itself) is written as an empty variable, which boto3 and from_env read as "AWS".
    assert S3Settings(endpoint_url=None).subprocess_env() == {"AWS_ENDPOINT_URL": "", "AWS_DEFAULT_REGION": "us-east-1"}
    env = keys()
    s3 = S3Settings(
        access_key_id=env["AWS_ACCESS_KEY_ID"],
        secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        session_token=env["AWS_SESSION_TOKEN"],
    )
    assert s3.subprocess_env() == {
        **env,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_keys_never_appear_in_a_repr(stack_dir: Path) -> None:
    env = full_env(stack_dir)
    settings = Settings.from_env(env)
    for text in (repr(settings), str(settings), repr(settings.s3), str(settings.s3), f"{settings}"):
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            assert env[name] not in text
    assert "s3.example" in repr(settings)  # the endpoint is no secret


def test_settings_are_frozen_and_hashable() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.s3.region = "elsewhere"  # type: ignore[misc]
    # equal settings are one cache key (ml.clients caches a client per settings value)
    assert hash(Settings.from_env({})) == hash(Settings.from_env({}))
    assert len({S3Settings(), S3Settings(), S3Settings(region="x")}) == 2


def test_kafka_servers_list() -> None:
    assert KafkaSettings(" a:1 ,b:2,, ").servers == ["a:1", "b:2"]
    assert KafkaSettings("").servers == []
