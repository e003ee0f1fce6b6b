"""Who may use the stack's MLflow server, and for what: its basic-auth app's configuration, users and roles (issue 14).

The server (stack.services.MLFLOW, the cluster profile's copy, docker-compose's and the tests' private servers, all
from these functions) runs MLflow's basic-auth app (`mlflow server --app-name basic-auth`): every request but /health
needs a login, a user has no permission on anything unless a role grants it (`default_permission = NO_PERMISSIONS`),
and a route the app cannot decide on is refused (MLFLOW_BASIC_AUTH_FAIL_CLOSED). Its users, each with a password
generated per stack folder (stack.config.stack_secrets):

  admin     the app's administrator, created by the app itself on its first start from MLFLOW_AUTH_ADMIN_PASSWORD;
            used by `ensure_users_and_roles` only (set-up), never by the pipeline or the prediction service.
  pipeline  the pipeline (Airflow's tasks, `python -m ml`, the tests): role `pipeline-writer`, MANAGE on every
            experiment and registered model (it creates runs, registers versions, moves the champion alias, deletes
            the pending versions of a failed registration).
  serving   the prediction service: role `serving-reader`, READ on every experiment (the model's artifacts come
            through the server's artifact proxy, which checks the experiment) and registered model. It cannot move an
            alias, tag or register anything.
  monitor   the streaming drift monitor (ml.drift): role `monitor-reader`, READ on every registered model (it reads
            a model version's tags, which name its training distributions); no experiment, no artifact, no write.

`ensure_users_and_roles` (run by `python -m stack up` and `python -m stack.init_resources` as admin) creates the
users or sets their passwords to the stack's, creates the roles with their grants and assigns them; idempotent, so
a second `up` changes nothing.
"""

from __future__ import annotations

import configparser
import io
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.config import (
    MLFLOW_ADMIN_USER,
    MLFLOW_CLIENT_USERS,
    MLFLOW_MONITOR_USER,
    MLFLOW_PIPELINE_USER,
    MLFLOW_SERVING_USER,
    MLFLOW_URI,
    StackPaths,
    stack_secrets,
    write_private,
)

COMPOSE_AUTH_DATABASE = "sqlite:////var/lib/mlflow-auth/basic_auth.db"  # docker-compose's (docker/mlflow/)
# Where `main` (docker-compose's mlflow-init) finds the admin's and each client user's password.
PASSWORD_VARIABLES = {
    user: f"MLOPS_MLFLOW_{user.upper()}_PASSWORD" for user in (MLFLOW_ADMIN_USER, *MLFLOW_CLIENT_USERS)
}
WORKSPACE = "default"  # MLflow's one workspace when workspaces are not enabled
AUTH_CACHE_TTL_S = 60  # a login checked once a minute per worker, not a PBKDF2 hash per request


@dataclass(frozen=True)
class RoleGrant:
    """One role: its name, the users it is assigned to and its (resource type, resource pattern, permission) grants."""

    name: str
    users: tuple[str, ...]
    grants: tuple[tuple[str, str, str], ...]


ROLES = (
    RoleGrant(
        "pipeline-writer",
        (MLFLOW_PIPELINE_USER,),
        (("experiment", "*", "MANAGE"), ("registered_model", "*", "MANAGE")),
    ),
    RoleGrant(
        "serving-reader",
        (MLFLOW_SERVING_USER,),
        (("experiment", "*", "READ"), ("registered_model", "*", "READ")),
    ),
    RoleGrant("monitor-reader", (MLFLOW_MONITOR_USER,), (("registered_model", "*", "READ"),)),
)


def auth_config_text(database_uri: str) -> str:
    """The basic-auth app's configuration file (no secret in it: the admin's password comes from the environment)."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": database_uri,
        "admin_username": MLFLOW_ADMIN_USER,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        "auth_cache_ttl_seconds": str(AUTH_CACHE_TTL_S),
    }
    text = io.StringIO()
    config.write(text)
    return text.getvalue()


def server_environment(config_path: Path, admin_password: str, flask_secret_key: str) -> dict[str, str]:
    """The variables the MLflow server needs for its basic-auth app (through the environment: a command line is
    readable by every local user)."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config_path),
        "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN_USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        # The key of the app's CSRF tokens (its user-creation form); static, so that every worker accepts them.
        "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret_key,
        "MLFLOW_BASIC_AUTH_FAIL_CLOSED": "true",
    }


def stack_server_environment(paths: StackPaths) -> dict[str, str]:
    """What the stack's MLflow server adds to its environment for the basic-auth app: its configuration file (written
    into the server's data folder) and the stack's admin password and CSRF key."""
    secret = stack_secrets(paths)
    config = write_auth_config(paths.data / "mlflow")
    return server_environment(config, secret[f"mlflow_{MLFLOW_ADMIN_USER}_password"], secret["mlflow_flask_secret_key"])


def prepare_stack_users(paths: StackPaths, tracking_uri: str = MLFLOW_URI) -> list[str]:
    """The stack server's users (with the stack's passwords) and roles (ensure_users_and_roles)."""
    secret = stack_secrets(paths)
    passwords = {user: secret[f"mlflow_{user}_password"] for user in MLFLOW_CLIENT_USERS}
    return ensure_users_and_roles(tracking_uri, secret[f"mlflow_{MLFLOW_ADMIN_USER}_password"], passwords)


def write_auth_config(folder: Path) -> Path:
    """The configuration file of a server whose auth database lives in `folder` (created 0600: it names the
    database)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_private(folder / "basic_auth.ini", auth_config_text(f"sqlite:///{folder / 'basic_auth.db'}"))


class MlflowAuthError(RuntimeError):
    """The MLflow server refused a set-up request; the message says which and why."""


class _AdminSession:
    """REST calls to the basic-auth app's API as its admin."""

    def __init__(self, tracking_uri: str, admin_password: str, timeout_s: float) -> None:
        import requests

        self.base = tracking_uri.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (MLFLOW_ADMIN_USER, admin_password)
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, *, ok_codes: tuple[str, ...] = (), **body: Any) -> dict[str, Any]:
        """One request; an MLflow error whose code is in `ok_codes` returns {"error_code": ...} instead of raising."""
        query, payload = (body, None) if method == "GET" else (None, body)
        response = self.session.request(
            method, f"{self.base}{path}", params=query, json=payload, timeout=self.timeout_s
        )
        try:
            answer: dict[str, Any] = response.json() if response.content else {}
        except ValueError:
            answer = {"message": response.text[:500]}
        if response.ok:
            return answer
        if answer.get("error_code") in ok_codes:
            return {"error_code": answer["error_code"]}
        raise MlflowAuthError(
            f"MLflow at {self.base}: {method} {path} as {MLFLOW_ADMIN_USER} answered HTTP {response.status_code}: "
            f"{answer.get('error_code', '')} {answer.get('message', '')}".rstrip()
        )


def ensure_users_and_roles(
    tracking_uri: str, admin_password: str, passwords: Mapping[str, str], timeout_s: float = 15.0
) -> list[str]:
    """Create (or set the password of) each user of `passwords`, and create and assign ROLES; return what changed.
    Idempotent: a second call returns [] when nothing needed doing (passwords are always set again, and not
    counted: the app cannot say whether one differs)."""
    admin = _AdminSession(tracking_uri, admin_password, timeout_s)
    changed: list[str] = []
    for user, password in passwords.items():
        found = admin.call("GET", "/api/2.0/mlflow/users/get", ok_codes=("RESOURCE_DOES_NOT_EXIST",), username=user)
        if "error_code" in found:
            admin.call("POST", "/api/2.0/mlflow/users/create", username=user, password=password)
            changed.append(f"user {user}")
        else:
            admin.call("PATCH", "/api/2.0/mlflow/users/update-password", username=user, password=password)
    existing = {
        role["name"]: role for role in admin.call("GET", "/api/3.0/mlflow/roles/list", workspace=WORKSPACE)["roles"]
    }
    for role in ROLES:
        if role.name not in existing:
            created = admin.call(
                "POST", "/api/3.0/mlflow/roles/create", name=role.name, workspace=WORKSPACE, description=_describe(role)
            )
            existing[role.name] = created["role"]
            changed.append(f"role {role.name}")
        role_id = int(existing[role.name]["id"])
        granted = {
            (grant["resource_type"], grant["resource_pattern"], grant["permission"])
            for grant in admin.call("GET", "/api/3.0/mlflow/roles/permissions/list", role_id=role_id)[
                "role_permissions"
            ]
        }
        for resource_type, pattern, permission in role.grants:
            if (resource_type, pattern, permission) not in granted:
                admin.call(
                    "POST",
                    "/api/3.0/mlflow/roles/permissions/add",
                    role_id=role_id,
                    resource_type=resource_type,
                    resource_pattern=pattern,
                    permission=permission,
                )
                changed.append(f"{role.name}: {permission} on {resource_type} {pattern}")
        for user in role.users:
            if user not in passwords:
                continue
            roles = admin.call("GET", "/api/3.0/mlflow/users/roles/list", username=user)["roles"]
            if all(int(assigned["id"]) != role_id for assigned in roles):
                admin.call("POST", "/api/3.0/mlflow/roles/assign", username=user, role_id=role_id)
                changed.append(f"{role.name} -> {user}")
    return changed


def _describe(role: RoleGrant) -> str:
    return "; ".join(f"{permission} on {resource_type} {pattern}" for resource_type, pattern, permission in role.grants)


def main() -> int:
    """`python -m stack.mlflow_auth` (docker-compose's mlflow-init): the users and roles of the server at
    MLFLOW_TRACKING_URI, with the passwords of PASSWORD_VARIABLES."""
    missing = [name for name in PASSWORD_VARIABLES.values() if not os.environ.get(name)]
    if missing or not os.environ.get("MLFLOW_TRACKING_URI"):
        raise SystemExit(f"stack.mlflow_auth: {', '.join(missing or ['MLFLOW_TRACKING_URI'])} not set")
    passwords = {user: os.environ[PASSWORD_VARIABLES[user]] for user in MLFLOW_CLIENT_USERS}
    admin = os.environ[PASSWORD_VARIABLES[MLFLOW_ADMIN_USER]]
    changed = ensure_users_and_roles(os.environ["MLFLOW_TRACKING_URI"], admin, passwords)
    print(f"MLflow users and roles: {', '.join(changed) or 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
