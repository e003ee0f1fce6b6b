"""ml.clients: one client per settings value, configured from the settings alone; the keyless pyarrow filesystem signs
with its keys but pickles without them. Nothing here connects anywhere."""

from __future__ import annotations

import dataclasses
import os
import uuid
from typing import Any

import pytest

from ml import clients
from ml.settings import KafkaSettings, MlflowSettings, S3Settings

PASSWORD = uuid.uuid4().hex  # a made-up Kafka password, never a real one


def keyed(endpoint_url: str | None = "http://127.0.0.1:9000", **overrides: Any) -> S3Settings:
    values = {
        "endpoint_url": endpoint_url,
        "region": "eu-west-3",
        "access_key_id": uuid.uuid4().hex,
        "secret_access_key": uuid.uuid4().hex,
        "session_token": uuid.uuid4().hex,
        **overrides,
    }
    return S3Settings(**values)


def test_s3_client_is_cached_per_settings_value() -> None:
    s3 = keyed()
    first = clients.s3_client(s3)
    assert clients.s3_client(dataclasses.replace(s3)) is first  # an equal value, not the same object
    assert clients.s3_client(keyed()) is not first  # other keys: another client


def test_s3_client_uses_the_settings_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # what the process environment says must not matter
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", uuid.uuid4().hex)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://elsewhere.example:1")
    s3 = keyed()
    client = clients.s3_client(s3)
    assert client.meta.endpoint_url == "http://127.0.0.1:9000"
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.retries["mode"] == "standard"
    credentials = client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key, credentials.token) == (
        s3.access_key_id,
        s3.secret_access_key,
        s3.session_token,
    )


def test_arrow_options() -> None:
    s3 = keyed("https://s3.example:9443")
    assert clients.arrow_s3_options(s3, with_keys=False) == {
        "region": "eu-west-3",
        "background_writes": False,
        "endpoint_override": "s3.example:9443",
        "scheme": "https",
    }
    with_keys = clients.arrow_s3_options(s3, with_keys=True)
    assert (with_keys["access_key"], with_keys["secret_key"], with_keys["session_token"]) == (
        s3.access_key_id,
        s3.secret_access_key,
        s3.session_token,
    )
    # AWS itself: no endpoint override; no keys: pyarrow's own credential chain
    assert clients.arrow_s3_options(S3Settings(endpoint_url=None), with_keys=True) == {
        "region": "us-east-1",
        "background_writes": False,
    }


def test_arrow_filesystem_is_cached_per_settings_value() -> None:
    s3 = keyed()
    assert clients.arrow_filesystem(s3) is clients.arrow_filesystem(s3)
    assert clients.arrow_filesystem(s3).type_name == "s3"


def test_mlflow_client_is_cached_and_points_at_the_server() -> None:
    mlflow = MlflowSettings("http://mlflow.example:5000")
    client = clients.mlflow_client(mlflow)
    assert clients.mlflow_client(MlflowSettings("http://mlflow.example:5000")) is client
    assert client.tracking_uri == "http://mlflow.example:5000"
    assert client._registry_uri == "http://mlflow.example:5000"


def test_mlflow_fluent_sets_the_server_for_the_call_only() -> None:
    import mlflow

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    with clients.mlflow_fluent(MlflowSettings("http://mlflow.example:5000")):
        assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == "http://mlflow.example:5000"
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    with pytest.raises(RuntimeError), clients.mlflow_fluent(MlflowSettings("http://other.example:5000")):
        raise RuntimeError("the call failed")
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before


def test_mlflow_fluent_clears_the_active_experiment_for_the_call_only() -> None:
    """An experiment an earlier `mlflow.set_experiment` chose would make MLflow refuse to resume a run of another
    experiment (registration resumes the search's parent run): none inside the call, the earlier one after it."""
    from mlflow.tracking import fluent

    fluent._active_experiment_id = "7"
    try:
        with clients.mlflow_fluent(MlflowSettings("http://mlflow.example:5000")):
            assert fluent._active_experiment_id is None
        assert fluent._active_experiment_id == "7"
    finally:
        fluent._active_experiment_id = None


def test_mlflow_clients_send_their_own_login_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow reads its login from the process environment per request: each client puts its own there before each
    call, so two identities used one after the other each send theirs (and a server without logins gets none)."""
    for name in clients.MLFLOW_LOGIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    sent: list[tuple[str | None, str | None]] = []

    class Recording:
        def search_experiments(self) -> None:
            sent.append(tuple(os.environ.get(name) for name in clients.MLFLOW_LOGIN_VARIABLES))  # type: ignore[arg-type]

    pipeline = MlflowSettings("http://mlflow.example:5000", "pipeline", uuid.uuid4().hex)
    serving = MlflowSettings("http://mlflow.example:5000", "serving", uuid.uuid4().hex)
    anonymous = MlflowSettings("http://other.example:5000")
    as_pipeline, as_serving, as_nobody = (
        clients._LoggedInMlflowClient(settings, Recording()) for settings in (pipeline, serving, anonymous)
    )
    as_pipeline.search_experiments()
    as_serving.search_experiments()
    as_pipeline.search_experiments()
    as_nobody.search_experiments()
    assert sent == [
        ("pipeline", pipeline.password),
        ("serving", serving.password),
        ("pipeline", pipeline.password),
        (None, None),
    ]
    with clients.mlflow_fluent(serving):
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "serving"


def test_mlflow_settings_without_their_password_connect_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    record = MlflowSettings("http://mlflow.example:5000", "pipeline", uuid.uuid4().hex).without_password()
    with pytest.raises(ValueError, match=r"user 'pipeline' .* carry no password"):
        clients.mlflow_client(record)
    with pytest.raises(ValueError, match="carry no password"), clients.mlflow_fluent(record):
        pass
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ


def test_kafka_clients_get_the_bootstrap_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    import kafka

    made: list[tuple[str, dict[str, Any]]] = []
    for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(kafka, name, lambda name=name, **options: made.append((name, options)) or name)
    settings = KafkaSettings("a:9092,b:9092")
    assert clients.kafka_producer(settings, acks="all") == "KafkaProducer"
    assert clients.kafka_consumer(settings, group_id=None) == "KafkaConsumer"
    assert clients.kafka_admin(settings) == "KafkaAdminClient"
    assert made == [
        ("KafkaProducer", {"bootstrap_servers": ["a:9092", "b:9092"], "acks": "all"}),
        ("KafkaConsumer", {"bootstrap_servers": ["a:9092", "b:9092"], "group_id": None}),
        ("KafkaAdminClient", {"bootstrap_servers": ["a:9092", "b:9092"]}),
    ]


def test_kafka_clients_log_in_as_the_settings_say(monkeypatch: pytest.MonkeyPatch) -> None:
    import kafka

    made: list[tuple[str, dict[str, Any]]] = []
    for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(kafka, name, lambda name=name, **options: made.append((name, options)) or name)
    password = uuid.uuid4().hex
    settings = KafkaSettings("a:9092", username="pipeline", password=password)
    clients.kafka_producer(settings, acks="all")
    clients.kafka_consumer(settings)
    clients.kafka_admin(settings)
    login = {
        "bootstrap_servers": ["a:9092"],
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "pipeline",
        "sasl_plain_password": password,
    }
    assert made == [("KafkaProducer", {**login, "acks": "all"}), ("KafkaConsumer", login), ("KafkaAdminClient", login)]


def test_kafka_pythons_scram_in_the_clear_warning_is_kept_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """With SCRAM the password never goes over the wire: kafka-python's per-connection warning would only fill logs."""
    import logging

    clients.kafka_options(KafkaSettings("a:9092", username="pipeline", password="p"))
    scram_log = logging.getLogger("kafka.net.sasl.scram")
    with caplog.at_level(logging.DEBUG, "kafka.net.sasl.scram"):
        scram_log.warning("Exchanging credentials in the clear during Sasl Authentication")
        scram_log.warning("another warning")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "Exchanging credentials in the clear during Sasl Authentication"),
        ("WARNING", "another warning"),
    ]


def test_kafka_settings_without_their_password_connect_nowhere() -> None:
    record = KafkaSettings("a:9092", username="pipeline", password="p").without_password()
    with pytest.raises(ValueError, match="user 'pipeline' at a:9092 carry no password"):
        clients.kafka_producer(record)


@pytest.mark.parametrize(
    ("settings", "hint"),
    [
        (
            KafkaSettings("a:9092", username="pipeline", password=PASSWORD),
            "check the credentials: a wrong password",
        ),
        (KafkaSettings("a:9092"), "whether it requires authentication: a client without credentials"),
    ],
)
def test_a_bootstrap_timeout_says_that_a_refused_login_looks_the_same(
    monkeypatch: pytest.MonkeyPatch, settings: KafkaSettings, hint: str
) -> None:
    """kafka-python reports a refused login only as a bootstrap timeout (the cause is in its log)."""
    import kafka
    from kafka.errors import KafkaTimeoutError

    def unable(**options: Any) -> None:
        raise KafkaTimeoutError("Unable to bootstrap from ['a:9092']")

    monkeypatch.setattr(kafka, "KafkaConsumer", unable)
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap") as raised:
        clients.kafka_consumer(settings)
    assert hint in str(raised.value) and "looks exactly like this" in str(raised.value)
    assert PASSWORD not in str(raised.value), "no password in the message"


def test_close_quietly_swallows_close_errors_only() -> None:
    closed: list[dict[str, Any]] = []

    class Closing:
        def close(self, **options: Any) -> None:
            closed.append(options)

    class Failing:
        def close(self, **options: Any) -> None:
            raise ConnectionError("broker gone")

    clients.close_quietly(Closing(), timeout=1)
    clients.close_quietly(Failing())
    assert closed == [{"timeout": 1}]
