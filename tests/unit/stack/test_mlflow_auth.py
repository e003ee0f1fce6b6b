"""stack.mlflow_auth without a server: the basic-auth app's configuration and environment, the roles' grants, and
the compose one-shot's refusal to run without its passwords (the server itself: tests/integration/stack)."""

from __future__ import annotations

import configparser
import stat
import uuid
from pathlib import Path

import pytest

from stack import mlflow_auth


def test_the_configuration_gives_no_one_anything_by_default_and_holds_no_secret(tmp_path: Path) -> None:
    path = mlflow_auth.write_auth_config(tmp_path / "mlflow")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = configparser.ConfigParser()
    config.read(path)
    section = dict(config["mlflow"])
    assert section["default_permission"] == "NO_PERMISSIONS"
    assert section["database_uri"] == f"sqlite:///{tmp_path / 'mlflow' / 'basic_auth.db'}"
    assert section["admin_username"] == "admin" and "admin_password" not in section
    assert section["auth_cache_ttl_seconds"] == str(mlflow_auth.AUTH_CACHE_TTL_S)


def test_the_server_gets_its_admin_and_csrf_key_through_the_environment(tmp_path: Path) -> None:
    password, key = uuid.uuid4().hex, uuid.uuid4().hex
    env = mlflow_auth.server_environment(tmp_path / "basic_auth.ini", password, key)
    assert env == {
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": key,
        "MLFLOW_BASIC_AUTH_FAIL_CLOSED": "true",
    }


def test_serving_may_only_read_and_the_pipeline_manages() -> None:
    grants = {user: role.grants for role in mlflow_auth.ROLES for user in role.users}
    assert {permission for _, _, permission in grants["serving"]} == {"READ"}
    assert {(kind, pattern) for kind, pattern, _ in grants["serving"]} == {
        ("experiment", "*"),
        ("registered_model", "*"),
    }
    assert {permission for _, _, permission in grants["pipeline"]} == {"MANAGE"}


def test_the_monitor_may_only_read_registered_models() -> None:
    """The drift monitor asks the registry for a model version's tags (ml.drift.monitor.distributions_finder): READ
    on registered models, nothing on experiments (no run, no artifact), no write."""
    grants = {user: role.grants for role in mlflow_auth.ROLES for user in role.users}
    assert grants["monitor"] == (("registered_model", "*", "READ"),)
    [role] = [role for role in mlflow_auth.ROLES if "monitor" in role.users]
    assert (role.name, role.users) == ("monitor-reader", ("monitor",))
    assert set(grants) == {"pipeline", "serving", "monitor"}, "every client user has one role"
    assert mlflow_auth.PASSWORD_VARIABLES["monitor"] == "MLOPS_MLFLOW_MONITOR_PASSWORD"


def test_the_compose_set_up_refuses_to_run_without_its_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    for name in mlflow_auth.PASSWORD_VARIABLES.values():
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="MLOPS_MLFLOW_ADMIN_PASSWORD, MLOPS_MLFLOW_PIPELINE_PASSWORD"):
        mlflow_auth.main()
