"""stack/config/credentials.py: the stack's generated secrets (the S3 root key, the cluster profile's, the services'
users'), each generated once per stack folder and private, and the logins made from them."""

from __future__ import annotations

import json
import re
import stat
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography.fernet import Fernet

from stack.config import (
    StackPaths,
    as_s3_user,
    cluster_secrets,
    local_credentials,
    on_stack_s3,
    postgres_url,
    s3_user_keys,
    stack_secrets,
)
from stack.config.users import S3_USERS

GIVEN_KEY = "given-key-value"


def test_local_credentials_are_generated_once_and_private(stack_dir: StackPaths, tmp_path: Path) -> None:
    first = local_credentials(stack_dir)
    assert stack_dir.credentials_file.stat().st_mode & 0o077 == 0, "credentials.json is readable by others"
    assert local_credentials(stack_dir) == first == json.loads(stack_dir.credentials_file.read_text())
    assert first["access_key"].startswith("mlops-") and len(first["secret_key"]) >= 30
    other = local_credentials(StackPaths(tmp_path / "other"))
    assert other["secret_key"] != first["secret_key"], "each stack folder has keys of its own"


SECRET_NAMES = {
    "postgres_password",
    "airflow_db_password",
    "mlflow_db_password",
    "metastore_db_password",
    "airflow_jwt_secret",
    "airflow_api_secret_key",
    "airflow_fernet_key",
    "ray_auth_token",
}


def test_cluster_secrets_are_generated_once_private_and_stable(stack_dir: StackPaths, tmp_path: Path) -> None:
    assert not stack_dir.cluster_secrets_file.exists()
    first = cluster_secrets(stack_dir)
    assert set(first) == SECRET_NAMES
    assert stat.S_IMODE(stack_dir.cluster_secrets_file.stat().st_mode) == 0o600
    assert cluster_secrets(stack_dir) == first == json.loads(stack_dir.cluster_secrets_file.read_text())
    assert len(set(first.values())) == len(first), "every secret is a value of its own"
    assert all(len(value) >= 32 for value in first.values()), first.keys()
    other = cluster_secrets(StackPaths(tmp_path / "other"))
    assert not set(other.values()) & set(first.values()), "each stack folder has secrets of its own"


def test_the_generated_keys_have_the_formats_their_readers_need(stack_dir: StackPaths) -> None:
    secrets = cluster_secrets(stack_dir)
    Fernet(secrets["airflow_fernet_key"].encode())  # raises for a key Airflow could not use
    assert re.fullmatch(r"[0-9a-f]{64}", secrets["ray_auth_token"]), "Ray's own generator: 32 bytes in hex"
    for name in SECRET_NAMES - {"airflow_fernet_key", "ray_auth_token"}:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", secrets[name]), f"{name} must need no quoting in a URL"


@pytest.mark.parametrize("database", ["airflow", "mlflow", "metastore"])
def test_postgres_url_names_the_databases_own_role_and_password(stack_dir: StackPaths, database: str) -> None:
    url = urlsplit(postgres_url(stack_dir, database))
    assert url.scheme == "postgresql+psycopg2"
    assert (url.username, url.password) == (database, cluster_secrets(stack_dir)[f"{database}_db_password"])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", 5432, f"/{database}")
    assert postgres_url(stack_dir, database, driver="postgresql").startswith(f"postgresql://{database}:")


def test_postgres_url_of_a_database_the_stack_does_not_have_fails(stack_dir: StackPaths) -> None:
    with pytest.raises(KeyError):
        postgres_url(stack_dir, "postgres")  # the superuser has no URL: the stack connects to it with psycopg2


KAFKA_SECRET_NAMES = {f"kafka_{user}_password" for user in ("admin", "controller", "pipeline", "serving", "monitor")}
S3_KEY_NAMES = {
    f"s3_{user}_{kind}_key" for user in ("pipeline", "tune", "mlflow", "monitor") for kind in ("access", "secret")
}
MLFLOW_SECRET_NAMES = {
    *(f"mlflow_{user}_password" for user in ("admin", "pipeline", "serving", "monitor")),
    "mlflow_flask_secret_key",
}


def test_the_stack_secrets_are_generated_once_private_and_per_stack(stack_dir: StackPaths, tmp_path: Path) -> None:
    assert not stack_dir.stack_secrets_file.exists()
    first = stack_secrets(stack_dir)
    assert set(first) == {*KAFKA_SECRET_NAMES, *MLFLOW_SECRET_NAMES, *S3_KEY_NAMES, "tune_state_key"}
    assert stat.S_IMODE(stack_dir.stack_secrets_file.stat().st_mode) == 0o600
    assert stack_secrets(stack_dir) == first == json.loads(stack_dir.stack_secrets_file.read_text())
    secret = [value for name, value in first.items() if not name.endswith("_access_key")]  # access keys name users
    assert len(set(first.values())) == len(first) and all(len(value) >= 32 for value in secret)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", value) for value in first.values()), "JAAS- and JSON-safe"
    assert not set(stack_secrets(StackPaths(tmp_path / "other")).values()) & set(first.values())


def test_a_secret_an_older_file_lacks_is_added_and_the_others_kept(stack_dir: StackPaths) -> None:
    stack_dir.root.mkdir(parents=True)
    stack_dir.stack_secrets_file.write_text(json.dumps({"kafka_admin_password": "kept", "something_else": "kept too"}))
    secrets = stack_secrets(stack_dir)
    assert (secrets["kafka_admin_password"], secrets["something_else"]) == ("kept", "kept too")
    assert KAFKA_SECRET_NAMES <= set(secrets) and json.loads(stack_dir.stack_secrets_file.read_text()) == secrets
    assert stat.S_IMODE(stack_dir.stack_secrets_file.stat().st_mode) == 0o600


# The secrets a stack folder made before the drift monitor had users of its own holds (the commit before them).
SECRETS_BEFORE_THE_MONITOR = {
    *(f"kafka_{user}_password" for user in ("admin", "controller", "pipeline", "serving")),
    "tune_state_key",
    *(f"s3_{user}_{kind}_key" for user in ("pipeline", "tune", "mlflow") for kind in ("access", "secret")),
    *(f"mlflow_{user}_password" for user in ("admin", "pipeline", "serving")),
    "mlflow_flask_secret_key",
}


def test_a_stack_folder_from_before_the_monitor_gets_the_monitors_secrets_and_keeps_its_own(
    stack_dir: StackPaths,
) -> None:
    """`.stack/` made before the monitor's users existed: reading its secrets generates the monitor's Kafka and MLflow
    passwords and S3 keys (no KeyError anywhere that asks for them), keeps every other secret as it was, and writes
    them back (0600), so that the broker, the S3 server and MLflow get the same ones on the next `up`."""
    from stack.config import kafka_user_settings, mlflow_user_settings

    old = {name: f"old-{name}" for name in SECRETS_BEFORE_THE_MONITOR}
    stack_dir.root.mkdir(parents=True)
    stack_dir.stack_secrets_file.write_text(json.dumps(old))
    assert kafka_user_settings(stack_dir, "monitor").password  # the first reader of a monitor secret: no KeyError
    secrets = stack_secrets(stack_dir)
    added = set(secrets) - set(old)
    assert added == {
        "kafka_monitor_password",
        "mlflow_monitor_password",
        "s3_monitor_access_key",
        "s3_monitor_secret_key",
    }
    assert {name: secrets[name] for name in old} == old, "every secret the folder had is kept"
    assert json.loads(stack_dir.stack_secrets_file.read_text()) == secrets
    assert stat.S_IMODE(stack_dir.stack_secrets_file.stat().st_mode) == 0o600
    assert re.fullmatch(r"mlops-monitor-[0-9a-f]{12}", s3_user_keys(stack_dir, "monitor")["access_key"])
    assert mlflow_user_settings(stack_dir, "monitor").password == secrets["mlflow_monitor_password"]
    assert stack_secrets(stack_dir) == secrets, "generated once"


def test_the_s3_users_keys_are_generated_once_per_stack_and_name_their_user(
    stack_dir: StackPaths, tmp_path: Path
) -> None:
    keys = {user: s3_user_keys(stack_dir, user) for user in S3_USERS}
    assert stat.S_IMODE(stack_dir.stack_secrets_file.stat().st_mode) == 0o600
    assert keys == {user: s3_user_keys(stack_dir, user) for user in S3_USERS}, "a second call changed them"
    other = StackPaths(tmp_path / "other-stack")
    for user, pair in keys.items():
        assert re.fullmatch(rf"mlops-{user}-[0-9a-f]{{12}}", pair["access_key"]), pair["access_key"]
        assert re.fullmatch(r"[A-Za-z0-9_-]{40}", pair["secret_key"])  # URL- and JSON-safe: it goes into connections
        assert s3_user_keys(other, user) != pair, "two stacks share a key"
    assert len({pair["secret_key"] for pair in keys.values()}) == len(S3_USERS)
    assert local_credentials(stack_dir)["secret_key"] not in {pair["secret_key"] for pair in keys.values()}


def test_an_unknown_s3_user_has_no_keys(stack_dir: StackPaths) -> None:
    with pytest.raises(ValueError, match="not an S3 user"):
        s3_user_keys(stack_dir, "serving")  # serving loads models through MLflow: it has no S3 key


def test_a_service_signs_as_its_s3_user_on_the_stacks_server_only(stack_dir: StackPaths) -> None:
    root = local_credentials(stack_dir)
    env = {"AWS_ACCESS_KEY_ID": root["access_key"], "AWS_SECRET_ACCESS_KEY": root["secret_key"]}
    assert on_stack_s3(stack_dir, env)
    as_s3_user(stack_dir, env, "mlflow")
    mlflow = s3_user_keys(stack_dir, "mlflow")
    assert env == {"AWS_ACCESS_KEY_ID": mlflow["access_key"], "AWS_SECRET_ACCESS_KEY": mlflow["secret_key"]}
    own = {"AWS_ACCESS_KEY_ID": "own-id", "AWS_SECRET_ACCESS_KEY": GIVEN_KEY, "AWS_SESSION_TOKEN": uuid.uuid4().hex}
    assert not on_stack_s3(stack_dir, own)
    assert as_s3_user(stack_dir, dict(own), "mlflow") == own, "another S3's keys are the operator's: kept"
