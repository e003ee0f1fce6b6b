"""The stack's generated secrets and the logins made from them: the S3 server's root key, the cluster profile's
passwords and tokens, and the passwords and keys of the services' users (stack.config.users), each generated once per
stack folder (0600) so that none is committed and none is a known default."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping

from ml.settings import KafkaSettings, MlflowSettings
from stack.config.addresses import KAFKA_BOOTSTRAP, MLFLOW_URI, POSTGRES_PORT
from stack.config.paths import StackPaths, write_private
from stack.config.users import (
    KAFKA_ADMIN_USER,
    KAFKA_CLIENT_USERS,
    KAFKA_CONTROLLER_USER,
    MLFLOW_ADMIN_USER,
    MLFLOW_CLIENT_USERS,
    S3_USERS,
)


def local_credentials(paths: StackPaths) -> dict[str, str]:
    """Access keys for the local S3 server, generated once per stack folder so that none is committed."""
    if paths.credentials_file.exists():
        stored: dict[str, str] = json.loads(paths.credentials_file.read_text())
        return stored
    paths.root.mkdir(parents=True, exist_ok=True)
    created = {"access_key": "mlops-" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(30)}
    write_private(paths.credentials_file, json.dumps(created))
    return created


def cluster_secrets(paths: StackPaths) -> dict[str, str]:
    """The cluster profile's passwords, Airflow's shared secrets and Ray's token: generated once per stack folder
    (0600), so that none is committed and every component of one stack gets the same."""
    if paths.cluster_secrets_file.exists():
        stored: dict[str, str] = json.loads(paths.cluster_secrets_file.read_text())
        return stored
    from cryptography.fernet import Fernet

    created = {
        "postgres_password": secrets.token_urlsafe(24),
        "airflow_db_password": secrets.token_urlsafe(24),
        "mlflow_db_password": secrets.token_urlsafe(24),
        "metastore_db_password": secrets.token_urlsafe(24),
        "airflow_jwt_secret": secrets.token_urlsafe(32),
        "airflow_api_secret_key": secrets.token_urlsafe(32),
        "airflow_fernet_key": Fernet.generate_key().decode(),
        "ray_auth_token": secrets.token_hex(32),  # the format of Ray's own generator
    }
    write_private(paths.cluster_secrets_file, json.dumps(created))
    return created


def postgres_url(paths: StackPaths, database: str, driver: str = "postgresql+psycopg2") -> str:
    """The SQLAlchemy URL of one of the cluster profile's databases (its role has the database's name)."""
    password = cluster_secrets(paths)[f"{database}_db_password"]
    return f"{driver}://{database}:{password}@127.0.0.1:{POSTGRES_PORT}/{database}"


def _access_key_maker(user: str) -> Callable[[], str]:
    """How an S3 user's access key is made: its name (the bucket policies' principal) and a random part."""
    return lambda: f"mlops-{user}-{secrets.token_hex(6)}"


# The secrets of stack_secrets, and how each is made (URL-, JSON- and JAAS-safe characters only: [A-Za-z0-9_-]).
STACK_SECRETS: dict[str, Callable[[], str]] = {
    **{
        f"kafka_{user}_password": lambda: secrets.token_urlsafe(30)
        for user in (KAFKA_ADMIN_USER, KAFKA_CONTROLLER_USER, *KAFKA_CLIENT_USERS)
    },
    "tune_state_key": lambda: secrets.token_urlsafe(32),  # signs the Tune state searches keep in S3 (ml.tune.signing)
    # The S3 users' keys: the access key names the user (it is the principal of the bucket policies), the secret is
    # random; both differ per stack, so that no key is a known default.
    **{f"s3_{user}_access_key": _access_key_maker(user) for user in S3_USERS},
    **{f"s3_{user}_secret_key": lambda: secrets.token_urlsafe(30) for user in S3_USERS},
    **{
        f"mlflow_{user}_password": lambda: secrets.token_urlsafe(30)
        for user in (MLFLOW_ADMIN_USER, *MLFLOW_CLIENT_USERS)
    },
    "mlflow_flask_secret_key": lambda: secrets.token_urlsafe(32),  # MLflow's basic-auth app's CSRF tokens
}


def stack_secrets(paths: StackPaths) -> dict[str, str]:
    """The secrets of what both profiles run (the Kafka broker's, the MLflow server's and the S3 server's users, the
    Tune state key): generated once per stack folder (0600), so that none is committed and none is a known default.
    A secret that an older file lacks is generated and added to it; the ones it has are kept."""
    stored: dict[str, str] = (
        json.loads(paths.stack_secrets_file.read_text()) if paths.stack_secrets_file.exists() else {}
    )
    missing = {name: make() for name, make in STACK_SECRETS.items() if not stored.get(name)}
    if missing:
        stored = {**stored, **missing}
        write_private(paths.stack_secrets_file, json.dumps(stored))
    return stored


def tune_state_key(paths: StackPaths) -> str:
    """The key that signs the Tune state searches keep in S3 (ml.tune.signing): one per stack folder, so that every
    search, retry and Airflow task of one stack signs and checks with the same key."""
    return stack_secrets(paths)["tune_state_key"]


def s3_user_keys(paths: StackPaths, user: str) -> dict[str, str]:
    """The access and secret key of one of the local S3 server's users (stack.s3_users), in local_credentials' form."""
    if user not in S3_USERS:
        raise ValueError(f"{user!r} is not an S3 user of the stack ({', '.join(S3_USERS)})")
    stored = stack_secrets(paths)
    return {"access_key": stored[f"s3_{user}_access_key"], "secret_key": stored[f"s3_{user}_secret_key"]}


def on_stack_s3(paths: StackPaths, env: Mapping[str, str]) -> bool:
    """Whether `env` signs with the root key of the stack's own S3 server (which has the stack's users), rather than
    with keys of another S3 (the operator's own, whose users are theirs to manage)."""
    return env.get("AWS_ACCESS_KEY_ID") == local_credentials(paths)["access_key"]


def as_s3_user(paths: StackPaths, env: dict[str, str], user: str) -> dict[str, str]:
    """Make `env` (a service's environment) sign as the stack's S3 user `user` instead of with the root key, when it
    is on the stack's own S3 server; another S3's keys are left as they are. Returns `env`."""
    if on_stack_s3(paths, env):
        keys = s3_user_keys(paths, user)
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = keys["access_key"], keys["secret_key"]
        env.pop("AWS_SESSION_TOKEN", None)
    return env


def kafka_user_settings(paths: StackPaths, user: str, bootstrap: str = KAFKA_BOOTSTRAP) -> KafkaSettings:
    """How `user` logs in to the local broker (SASL/SCRAM-SHA-512 with its generated password)."""
    if user not in (KAFKA_ADMIN_USER, *KAFKA_CLIENT_USERS):
        raise ValueError(
            f"{user!r} is not a Kafka user of the stack ({KAFKA_ADMIN_USER}, {', '.join(KAFKA_CLIENT_USERS)})"
        )
    password = stack_secrets(paths)[f"kafka_{user}_password"]
    return KafkaSettings(bootstrap, "SASL_PLAINTEXT", "SCRAM-SHA-512", username=user, password=password)


def mlflow_user_settings(paths: StackPaths, user: str, tracking_uri: str = MLFLOW_URI) -> MlflowSettings:
    """How `user` logs in to the local MLflow server (its basic-auth app, with the user's generated password)."""
    if user not in (MLFLOW_ADMIN_USER, *MLFLOW_CLIENT_USERS):
        raise ValueError(
            f"{user!r} is not an MLflow user of the stack ({MLFLOW_ADMIN_USER}, {', '.join(MLFLOW_CLIENT_USERS)})"
        )
    return MlflowSettings(tracking_uri, username=user, password=stack_secrets(paths)[f"mlflow_{user}_password"])
