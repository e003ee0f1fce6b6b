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
    (tmp_path / "jars" / "spark-lineage.classpath").write_text("/jars/openlineage-spark.jar:/jars/kafka-clients.jar\n")
    (tmp_path / "jars" / "spark-kafka.classpath").write_text("/jars/spark-sql-kafka.jar:/jars/kafka-clients-3.jar\n")
    return tmp_path


def full_env(stack_dir: Path) -> dict[str, str]:
    return {
        **keys(),
        "AWS_ENDPOINT_URL": "http://s3.example:9000",
        "AWS_DEFAULT_REGION": "eu-west-3",
        "MLOPS_RAW_BUCKET": "incoming",
        "MLOPS_LAKE_BUCKET": "warehouse",
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092, k2:9092",
        "MLOPS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "MLOPS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "MLOPS_KAFKA_USERNAME": "pipeline",
        "MLOPS_KAFKA_PASSWORD": uuid.uuid4().hex,
        "MLFLOW_TRACKING_URI": "http://mlflow.example:5000",
        "MLFLOW_TRACKING_USERNAME": "pipeline",
        "MLFLOW_TRACKING_PASSWORD": uuid.uuid4().hex,
        "SPARK_MASTER": "spark://master:7077",
        "SPARK_LOCAL_IP": "10.0.0.5",
        "RAY_ADDRESS": "ray://head:10001",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex,
        "MLOPS_TUNE_STATE_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
        "MLOPS_SPARK_EXECUTOR_CLASSPATH": "/opt/spark/extra-jars/*",
        "MLOPS_SPARK_CORES_MAX": "2",
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
        kafka=KafkaSettings(
            "k1:9092, k2:9092", "SASL_SSL", "SCRAM-SHA-256", username="pipeline", password=env["MLOPS_KAFKA_PASSWORD"]
        ),
        mlflow=MlflowSettings("http://mlflow.example:5000", "pipeline", env["MLFLOW_TRACKING_PASSWORD"]),
        spark=SparkSettings(
            master="spark://master:7077",
            extra_classpath="/jars/hadoop-aws.jar:/jars/bundle.jar",
            metastore_dir=str(stack_dir / "data" / "hive"),
            local_ip="10.0.0.5",
            executor_classpath="/opt/spark/extra-jars/*",
            cores_max=2,
            lineage_classpath="/jars/openlineage-spark.jar:/jars/kafka-clients.jar",
            kafka_source_classpath="/jars/spark-sql-kafka.jar:/jars/kafka-clients-3.jar",
            class_archive_dir=str(stack_dir / "data" / "spark" / "class-archives"),
        ),
        ray=RaySettings(
            "ray://head:10001",
            auth_token=env["RAY_AUTH_TOKEN"],
            auth_mode="token",
            state_signing_key=env["MLOPS_TUNE_STATE_KEY"],
        ),
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
    # the driver's class archives in the stack folder; Settings() (no stack) keeps none
    assert settings.spark.class_archive_dir == str(tmp_path / "data" / "spark" / "class-archives")
    assert Settings().spark.class_archive_dir is None


def test_the_class_archive_folder_is_configurable_and_an_empty_one_turns_archives_off(tmp_path: Path) -> None:
    folder = str(tmp_path / "archives")
    assert Settings.from_env({"MLOPS_SPARK_CLASS_ARCHIVE_DIR": folder}).spark.class_archive_dir == folder
    assert Settings.from_env({"MLOPS_SPARK_CLASS_ARCHIVE_DIR": ""}).spark.class_archive_dir is None


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
    for text in (repr(settings), str(settings), repr(settings.s3), str(settings.ray), f"{settings}"):
        for name in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "RAY_AUTH_TOKEN",
            "MLOPS_TUNE_STATE_KEY",
            "MLOPS_KAFKA_PASSWORD",
            "MLFLOW_TRACKING_PASSWORD",
        ):
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


def test_kafka_logs_in_when_given_a_user_and_not_otherwise() -> None:
    """A broker of your own without logins stays possible: no user, PLAINTEXT, and Settings() writes no login."""
    anonymous = KafkaSettings("k:9092")
    assert (anonymous.security_protocol, anonymous.sasl_mechanism, anonymous.uses_sasl) == ("PLAINTEXT", None, False)
    assert anonymous.to_env() == {"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}
    login = KafkaSettings("k:9092", username="pipeline", password="p")
    assert (login.security_protocol, login.sasl_mechanism, login.uses_sasl) == ("SASL_PLAINTEXT", "SCRAM-SHA-512", True)
    assert login == KafkaSettings("k:9092", "sasl_plaintext", "scram-sha-512", "pipeline", "p"), "filled in, upper-case"
    assert not {key for key in Settings().to_env() if key.startswith("MLOPS_KAFKA_")}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"security_protocol": "SASL_PLAINTEXT"}, "needs a username"),
        ({"security_protocol": "PLAINTEXT", "username": "u", "password": "p"}, "logs in with no username"),
        ({"password": "p"}, "logs in with no username"),
        ({"security_protocol": "KERBEROS"}, "security protocol must be one of"),
        ({"username": "u", "password": "p", "sasl_mechanism": "GSSAPI"}, "SASL mechanism must be one of"),
    ],
)
def test_inconsistent_kafka_settings_are_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaSettings("k:9092", **options)


def test_kafka_settings_round_trip_with_the_login_and_lose_only_the_password_when_asked() -> None:
    login = KafkaSettings("k:9092", "SASL_SSL", "PLAIN", "pipeline", uuid.uuid4().hex)
    assert Settings.from_env(Settings(kafka=login).to_env()).kafka == login
    assert Settings.from_env(Settings(kafka=KafkaSettings("k:9092", "SSL")).to_env()).kafka.security_protocol == "SSL"
    record = login.without_password()
    assert record.password is None and record == KafkaSettings("k:9092", "SASL_SSL", "PLAIN", "pipeline")
    assert KafkaSettings("k:9092").without_password() == KafkaSettings("k:9092")


def test_mlflow_settings_round_trip_with_the_login_and_lose_only_the_password_when_asked() -> None:
    login = MlflowSettings("http://mlflow.example:5000", "pipeline", uuid.uuid4().hex)
    assert Settings.from_env(Settings(mlflow=login).to_env()).mlflow == login
    assert "MLFLOW_TRACKING_USERNAME" not in Settings().to_env()
    record = login.without_password()
    assert record == MlflowSettings("http://mlflow.example:5000", "pipeline") and record.password is None
    assert MlflowSettings().without_password() == MlflowSettings()
    with pytest.raises(ValueError, match="a password without a username"):
        MlflowSettings("http://mlflow.example:5000", password=uuid.uuid4().hex)


# --- pointing at a cluster (docs/PIPELINE.md) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("master", "local"),
    [
        ("local", True),
        ("local[*]", True),
        ("local[4]", True),
        ("local[2,3]", True),
        ("spark://127.0.0.1:7077", False),
        ("yarn", False),
        ("k8s://https://api:6443", False),
        ("local-cluster[2,1,1024]", False),  # executors in processes of their own
    ],
)
def test_which_masters_are_local(master: str, local: bool) -> None:
    assert SparkSettings(master=master).is_local is local


def test_a_networked_metastore_needs_no_folder(stack_dir: Path) -> None:
    uri = "thrift://metastore:9083"
    spark = Settings.from_env({"MLOPS_STACK_DIR": str(stack_dir), "MLOPS_HIVE_METASTORE_URI": uri}).spark
    assert (spark.metastore_uri, spark.metastore_dir) == (uri, None), "no Derby folder in the stack for a cluster"
    explicit = {"MLOPS_HIVE_METASTORE_URI": uri, "MLOPS_HIVE_METASTORE_DIR": str(stack_dir / "hive")}
    assert Settings.from_env(explicit).spark.metastore_dir is None, "one metastore: the URI wins"
    settings = Settings.from_env({"MLOPS_STACK_DIR": str(stack_dir), "MLOPS_HIVE_METASTORE_URI": uri})
    assert Settings.from_env(settings.to_env()).spark == settings.spark


def test_cores_max_is_a_positive_whole_number() -> None:
    assert Settings.from_env({"MLOPS_SPARK_CORES_MAX": " 3 "}).spark.cores_max == 3
    assert Settings.from_env({"MLOPS_SPARK_CORES_MAX": ""}).spark.cores_max is None
    for wrong in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="MLOPS_SPARK_CORES_MAX"):
            Settings.from_env({"MLOPS_SPARK_CORES_MAX": wrong})
    with pytest.raises(ValueError, match="cores_max"):
        SparkSettings(cores_max=0)


def test_the_new_settings_are_written_only_when_set() -> None:
    """A child of the local stack gets no variable it did not have (stack.config builds on Settings().to_env())."""
    written = Settings().to_env()
    for name in ("MLOPS_HIVE_METASTORE_URI", "MLOPS_SPARK_EXECUTOR_CLASSPATH", "MLOPS_SPARK_CORES_MAX"):
        assert name not in written
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLOPS_TUNE_STATE_KEY"):
        assert name not in written


def test_the_ray_token_comes_from_ray_auth_token_or_the_file_ray_auth_token_path_names(tmp_path: Path) -> None:
    token, other = uuid.uuid4().hex, uuid.uuid4().hex
    token_file = tmp_path / "auth_token"
    token_file.write_text(f"  {token}  \nsecond line\n")  # as Ray reads it: the first line, trimmed
    assert Settings.from_env({"RAY_AUTH_TOKEN_PATH": str(token_file)}).ray.auth_token == token
    # RAY_AUTH_TOKEN first, as for Ray itself
    both = {"RAY_AUTH_TOKEN": other, "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert Settings.from_env(both).ray.auth_token == other
    assert Settings.from_env({}).ray.auth_token is None


@pytest.mark.parametrize("content", [None, "", "\n  \n"], ids=["missing", "empty", "blank-first-line"])
def test_a_token_path_without_a_token_is_an_error(tmp_path: Path, content: str | None) -> None:
    """Ray aborts on it rather than fall back; so does from_env, naming the file."""
    token_file = tmp_path / "auth_token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(ValueError, match=str(token_file)):
        Settings.from_env({"RAY_AUTH_TOKEN_PATH": str(token_file)})


def test_the_ray_auth_mode_is_explicit() -> None:
    token = uuid.uuid4().hex
    assert RaySettings().resolved_auth_mode == "token", "a local Ray: token auth (with a token of its own)"
    assert RaySettings(auth_mode="disabled").resolved_auth_mode == "disabled"
    assert RaySettings("10.0.0.5:6380").resolved_auth_mode == "disabled"
    assert RaySettings("10.0.0.5:6380", auth_token=token).resolved_auth_mode == "token"
    assert RaySettings("10.0.0.5:6380", auth_mode="token").resolved_auth_mode == "token"  # token from Ray's own files
    assert RaySettings("10.0.0.5:6380", auth_token=token, auth_mode="disabled").resolved_auth_mode == "disabled"
    assert Settings.from_env({"RAY_AUTH_MODE": "TOKEN"}).ray.auth_mode == "token"
    assert Settings.from_env({"RAY_AUTH_MODE": "disabled"}).ray.auth_mode == "disabled"
    with pytest.raises(ValueError, match="auth mode"):
        RaySettings(auth_mode="k8s")
    # however written, the same settings compare equal (a connection's vs. an environment's)
    assert RaySettings("h:1", auth_token=token) == RaySettings("h:1", auth_token=token, auth_mode="token")
    assert RaySettings() == RaySettings(auth_mode="token")


@pytest.mark.parametrize(
    "ray",
    [
        RaySettings("10.0.0.5:6380", auth_mode="token"),  # the token from Ray's own files (RAY_AUTH_TOKEN_PATH, ~/.ray)
        RaySettings("10.0.0.5:6380", auth_token=uuid.uuid4().hex, auth_mode="disabled"),
        RaySettings("ray://head:10001", auth_token=uuid.uuid4().hex),
        RaySettings(),
    ],
    ids=["token-mode-without-token", "disabled-despite-token", "token", "local"],
)
def test_the_ray_auth_mode_round_trips(ray: RaySettings) -> None:
    assert Settings.from_env(Settings(ray=ray).to_env()).ray == ray


def test_ray_settings_round_trip_with_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "auth_token"
    token_file.write_text(uuid.uuid4().hex)
    settings = Settings.from_env({"RAY_ADDRESS": "10.0.0.5:6380", "RAY_AUTH_TOKEN_PATH": str(token_file)})
    assert settings.to_env()["RAY_AUTH_TOKEN"] == settings.ray.auth_token, "for a child, like the S3 keys"
    assert Settings.from_env(settings.to_env()).ray == settings.ray


def test_every_cluster_setting_is_documented() -> None:
    """docs/PIPELINE.md, "Pointing at a cluster": each variable from_env reads, each connection extra hooks read."""
    text = (PROJECT_ROOT / "docs" / "PIPELINE.md").read_text()
    section = text[text.index("## Pointing at a cluster") :]
    names = [
        *("SPARK_MASTER", "MLOPS_SPARK_EXTRA_CLASSPATH", "MLOPS_SPARK_EXECUTOR_CLASSPATH", "MLOPS_HIVE_METASTORE_URI"),
        *("MLOPS_HIVE_METASTORE_DIR", "MLOPS_SPARK_CORES_MAX", "SPARK_LOCAL_IP"),
        *("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "MLOPS_TUNE_STATE_KEY"),
        *(
            "MLOPS_KAFKA_SECURITY_PROTOCOL",
            "MLOPS_KAFKA_SASL_MECHANISM",
            "MLOPS_KAFKA_USERNAME",
            "MLOPS_KAFKA_PASSWORD",
        ),
        *("security.protocol", "sasl.mechanisms", "sasl.username", "sasl.password"),
        *("extra-classpath", "executor-extra-classpath", "metastore-uri", "metastore-dir", "cores-max", "local-ip"),
        *("`address`", "password", "auth-mode", "state-signing-secret"),
    ]
    assert [name for name in names if name not in section] == []
