"""The one place that builds clients: S3 (boto3, pyarrow), MLflow and Kafka, each from its typed settings.

Clients are cached per settings value (settings are frozen dataclasses), so a stage may ask for one wherever it needs
it without opening a new connection pool. Imports are inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from ml.process_env import apply_to_environment
from ml.settings import KafkaSettings, MlflowSettings, S3Settings


@lru_cache(maxsize=8)
def s3_client(s3: S3Settings) -> Any:
    """A boto3 S3 client for the endpoint (path-style addressing, standard retries)."""
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's default session resolves credentials once per process and keeps them.
    session = boto3.session.Session(
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        aws_session_token=s3.session_token,
    )
    return session.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
    )


def arrow_s3_options(s3: S3Settings, *, with_keys: bool) -> dict[str, Any]:
    """pyarrow.fs.S3FileSystem arguments for the endpoint (with or without its keys).

    Writes upload in the writing thread (`background_writes=False`): Tune's storage filesystem (ml.tune.signing) writes
    to S3 from inside Arrow's IO thread pool (pyarrow.fs.copy_files closes each stream there), and a background upload
    would wait for a thread of that pool, all of them taken by such closes: the copy never ends. The pipeline reads
    through pyarrow, and writes only Tune's state with it."""
    options: dict[str, Any] = {"region": s3.region, "background_writes": False}
    if s3.endpoint_url:
        scheme, _, host = s3.endpoint_url.partition("://")
        options.update(endpoint_override=host, scheme=scheme)
    if with_keys and s3.access_key_id:
        options.update(access_key=s3.access_key_id, secret_key=s3.secret_access_key, session_token=s3.session_token)
    return options


@lru_cache(maxsize=8)
def arrow_filesystem(s3: S3Settings) -> Any:
    """A pyarrow S3 filesystem on the endpoint, for reading and writing Parquet without a copy."""
    from pyarrow import fs

    return fs.S3FileSystem(**arrow_s3_options(s3, with_keys=True))


def keyless_arrow_filesystem(s3: S3Settings) -> Any:
    """A pyarrow S3 filesystem that signs with these settings' keys here but pickles without them (for Ray Tune's
    storage: see ml.keyless_s3)."""
    from ml.keyless_s3 import keyless_s3_filesystem

    return keyless_s3_filesystem(s3)


# MLflow's client takes a login from nowhere but the process environment (mlflow.utils.credentials reads these two
# variables on every request, for the tracking store, the registry and the artifact proxy alike).
MLFLOW_LOGIN_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_mlflow_login_lock = threading.Lock()


def use_mlflow_login(mlflow: MlflowSettings) -> None:
    """Make these settings' login the one MLflow's client sends from this process (no login: none is sent).

    The one place that writes MLflow's login variables: MLflow reads them from the process environment on each
    request and has no other way in. So a process speaks to MLflow as one identity at a time; the clients of
    `mlflow_client` and `mlflow_fluent` switch to theirs before each call, which keeps sequential use of two identities
    (a test that checks the prediction service's user against the pipeline's) correct. Concurrent threads of one
    process must share one identity (every process of this project has one)."""
    if mlflow.username and not mlflow.password:
        raise ValueError(
            f"MLflow settings for user {mlflow.username!r} at {mlflow.tracking_uri} carry no password (a pickled copy "
            "never does): give the password again"
        )
    with _mlflow_login_lock:
        apply_to_environment(dict(zip(MLFLOW_LOGIN_VARIABLES, (mlflow.username, mlflow.password), strict=True)))


class _LoggedInMlflowClient:
    """An MlflowClient whose every call is made with its settings' login (use_mlflow_login)."""

    def __init__(self, mlflow: MlflowSettings, client: Any) -> None:
        self._mlflow = mlflow
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def logged_in(*args: Any, **kwargs: Any) -> Any:
            use_mlflow_login(self._mlflow)
            return attribute(*args, **kwargs)

        return logged_in


@lru_cache(maxsize=4)
def mlflow_client(mlflow: MlflowSettings) -> Any:
    """An MlflowClient for the tracking server (also the registry), logged in as the settings say."""
    from mlflow import MlflowClient

    use_mlflow_login(mlflow)  # refuses settings without their password before any request
    return _LoggedInMlflowClient(
        mlflow, MlflowClient(tracking_uri=mlflow.tracking_uri, registry_uri=mlflow.tracking_uri)
    )


@contextmanager
def mlflow_fluent(mlflow: MlflowSettings) -> Iterator[None]:
    """MLflow's fluent API (`mlflow.start_run`, `mlflow.pyfunc.log_model`) on this server, logged in as the settings
    say, for the duration of a call.

    The fluent API keeps its server in module state; it is set here, and put back afterwards, rather than through
    MLFLOW_TRACKING_URI in the process environment. So is the experiment an earlier `mlflow.set_experiment` chose
    (of another call, maybe of another server): none during the call, put back afterwards, since MLflow refuses to
    resume a run of another experiment than the active one."""
    import mlflow as mlflow_module
    from mlflow.tracking import fluent

    use_mlflow_login(mlflow)
    previous_tracking = mlflow_module.get_tracking_uri()
    previous_registry = mlflow_module.get_registry_uri()
    previous_experiment = fluent._active_experiment_id
    mlflow_module.set_tracking_uri(mlflow.tracking_uri)
    mlflow_module.set_registry_uri(mlflow.tracking_uri)
    fluent._active_experiment_id = None
    try:
        yield
    finally:
        mlflow_module.set_tracking_uri(previous_tracking)
        mlflow_module.set_registry_uri(previous_registry)
        fluent._active_experiment_id = previous_experiment


_SCRAM_PLAINTEXT_WARNING = "Exchanging credentials in the clear during Sasl Authentication"


class _ScramOverPlaintextIsDebug(logging.Filter):
    """kafka-python warns on every SCRAM login over SASL_PLAINTEXT that credentials go "in the clear": with SCRAM they
    do not (the password never leaves the client; a salted proof does), and a warning per connection would fill task
    logs. The record is kept, at DEBUG. (That the messages themselves are not encrypted is in the README.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == _SCRAM_PLAINTEXT_WARNING:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def kafka_options(kafka: KafkaSettings) -> dict[str, Any]:
    """kafka-python's connection arguments for these settings: the bootstrap servers and, for SASL, the login."""
    options: dict[str, Any] = {"bootstrap_servers": kafka.servers}
    if kafka.security_protocol != "PLAINTEXT":
        options["security_protocol"] = kafka.security_protocol
    if kafka.uses_sasl:
        scram_log = logging.getLogger("kafka.net.sasl.scram")
        if not any(isinstance(f, _ScramOverPlaintextIsDebug) for f in scram_log.filters):
            scram_log.addFilter(_ScramOverPlaintextIsDebug())
        if not kafka.password:
            raise ValueError(
                f"Kafka settings for user {kafka.username!r} at {kafka.bootstrap_servers} carry no password (a "
                "pickled copy never does): give the password again"
            )
        options.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.username,
            sasl_plain_password=kafka.password,
        )
    return options


JAVA_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def java_kafka_properties(kafka: KafkaSettings) -> dict[str, str]:
    """The Java Kafka client's connection properties for these settings (a JVM's producer or consumer: the OpenLineage
    Spark listener, Spark's Kafka source): the bootstrap servers, the protocol and, for SASL, the login as a JAAS
    entry, which holds the password: never put it on a command line."""
    properties = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": str(kafka.security_protocol)}
    if kafka.uses_sasl:
        mechanism = str(kafka.sasl_mechanism)
        properties["sasl.mechanism"] = mechanism
        properties["sasl.jaas.config"] = (
            f"{JAVA_LOGIN_MODULES[mechanism]} required "
            f"username={json.dumps(kafka.username)} password={json.dumps(kafka.password or '')};"
        )
    return properties


def kafka_bootstrap_hint(kafka: KafkaSettings) -> str:
    """What a bootstrap timeout may mean besides a broker that is down: kafka-python reports a refused login, or a
    client that does not log in to a broker that wants it to, only as a KafkaTimeoutError (the cause is in its log)."""
    if kafka.uses_sasl:
        return (
            f"if the broker is up, check the credentials: a wrong password or unknown user ({kafka.username!r}, "
            f"{kafka.sasl_mechanism} over {kafka.security_protocol}) looks exactly like this"
        )
    return (
        f"if the broker is up, check whether it requires authentication: a client without credentials "
        f"({kafka.security_protocol}) on a SASL listener looks exactly like this"
    )


def _kafka_client(client_class: Any, kafka: KafkaSettings, options: dict[str, Any]) -> Any:
    from kafka.errors import KafkaTimeoutError

    try:
        return client_class(**kafka_options(kafka), **options)
    except KafkaTimeoutError as error:
        raise KafkaTimeoutError(f"{error}; {kafka_bootstrap_hint(kafka)}") from error


def kafka_producer(kafka: KafkaSettings, **options: Any) -> Any:
    """A KafkaProducer on the bootstrap servers, logged in as the settings say; `options` are kafka-python's (acks,
    timeouts, serializers). KafkaTimeoutError when no broker answered (or it refused the login: the message says)."""
    import kafka as kafka_python

    return _kafka_client(kafka_python.KafkaProducer, kafka, options)


def kafka_consumer(kafka: KafkaSettings, **options: Any) -> Any:
    """A KafkaConsumer on the bootstrap servers, subscribed to nothing (callers assign partitions)."""
    import kafka as kafka_python

    return _kafka_client(kafka_python.KafkaConsumer, kafka, options)


def kafka_admin(kafka: KafkaSettings, **options: Any) -> Any:
    """A KafkaAdminClient on the bootstrap servers (what it may do is what the settings' user may do)."""
    import kafka as kafka_python

    return _kafka_client(kafka_python.KafkaAdminClient, kafka, options)


def close_quietly(kafka_client: Any, **options: Any) -> None:
    """Close a Kafka producer or consumer on a path where a close error must not replace the error that matters."""
    try:
        kafka_client.close(**options)
    except Exception as error:
        logging.getLogger(__name__).debug("closing %s: %s", type(kafka_client).__name__, error)
