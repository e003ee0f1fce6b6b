"""`python -m stack.compose_env` (`make compose-env`): the `.env` file docker-compose.yaml takes its credentials from.

docker-compose.yaml holds no credential: each one is a required variable (`${NAME:?run make compose-env first}`), so
Compose refuses to start (or build, or print its configuration) until it has a value, and Compose reads the values
from the `.env` file next to the compose file. This writes that file with fresh random values (Python's `secrets`; the
Fernet key from cryptography), created with mode 0600 before a byte is written (stack.config.write_private). It prints
the variables' names, never their values (the Airflow admin password is the file's _AIRFLOW_WWW_USER_PASSWORD line).

An existing `.env` is never overwritten: every line of it stays as it is and only the variables it lacks are appended
(an `.env` that holds AIRFLOW_UID alone, as Airflow's own compose instructions make it, gets the secrets). `--force`
replaces it with fresh values; PostgreSQL keeps the passwords its roles were created with on the first start, so after
that run `docker compose down -v` (which deletes the data volumes) or change them in PostgreSQL too.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stack.config import REPO_ROOT, S3_USERS, STACK_SECRETS, write_private

COMPOSE_ENV_FILE = REPO_ROOT / ".env"


def fernet_key() -> str:
    """A key for Airflow's [core] fernet_key: it encrypts the connections stored in the metadata database."""
    try:
        from cryptography.fernet import Fernet
    except ModuleNotFoundError as error:  # a plain Python without the project's venv
        raise SystemExit("stack.compose_env needs the cryptography package: `make venv`, or pip install it") from error
    return Fernet.generate_key().decode()


# Every credential docker-compose.yaml requires, and how a fresh value is made. Only URL- and JSON-safe characters
# ([A-Za-z0-9_=-]): the database passwords go into connection URLs, the S3 keys, Ray's token and the Kafka passwords
# into the Airflow connections' JSON (and Kafka's JAAS lines). The formats are the stack's (stack.config
# .local_credentials, cluster_secrets, stack_secrets).
SECRETS: dict[str, Callable[[], str]] = {
    "MLOPS_S3_ACCESS_KEY": lambda: "mlops-" + secrets.token_hex(6),  # the S3 server's root key: stack-init's
    "MLOPS_S3_SECRET_KEY": lambda: secrets.token_urlsafe(30),
    # The S3 server's users (stack.s3_users), in the format of stack.config.stack_secrets.
    **{
        f"MLOPS_S3_{user.upper()}_{kind.upper()}_KEY": STACK_SECRETS[f"s3_{user}_{kind}_key"]
        for user in S3_USERS
        for kind in ("access", "secret")
    },
    "POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(24),  # the superuser's
    "AIRFLOW_DB_PASSWORD": lambda: secrets.token_urlsafe(24),  # one role per database (docker/postgres/init-...)
    "MLFLOW_DB_PASSWORD": lambda: secrets.token_urlsafe(24),
    "METASTORE_DB_PASSWORD": lambda: secrets.token_urlsafe(24),
    "MLOPS_RAY_AUTH_TOKEN": lambda: secrets.token_hex(32),  # the format of Ray's own generator
    "MLOPS_TUNE_STATE_KEY": lambda: secrets.token_urlsafe(32),  # signs the Tune state searches keep in S3
    # The Kafka broker's users (stack.kafka_auth), in the format of stack.config.stack_secrets.
    "MLOPS_KAFKA_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(30),
    "MLOPS_KAFKA_CONTROLLER_PASSWORD": lambda: secrets.token_urlsafe(30),
    "MLOPS_KAFKA_PIPELINE_PASSWORD": lambda: secrets.token_urlsafe(30),
    "MLOPS_KAFKA_SERVING_PASSWORD": lambda: secrets.token_urlsafe(30),
    "MLOPS_KAFKA_MONITOR_PASSWORD": lambda: secrets.token_urlsafe(30),
    # The MLflow server's users (stack.mlflow_auth) and its basic-auth app's CSRF key, as stack_secrets makes them.
    "MLOPS_MLFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(30),
    "MLOPS_MLFLOW_PIPELINE_PASSWORD": lambda: secrets.token_urlsafe(30),
    "MLOPS_MLFLOW_SERVING_PASSWORD": lambda: secrets.token_urlsafe(30),
    "MLOPS_MLFLOW_MONITOR_PASSWORD": lambda: secrets.token_urlsafe(30),
    "MLOPS_MLFLOW_FLASK_SECRET_KEY": lambda: secrets.token_urlsafe(32),
    "_AIRFLOW_WWW_USER_PASSWORD": lambda: secrets.token_urlsafe(16),  # the Airflow admin's
    "AIRFLOW_JWT_SECRET": lambda: secrets.token_urlsafe(32),  # [api_auth] jwt_secret, shared by every component
    "AIRFLOW_API_SECRET_KEY": lambda: secrets.token_urlsafe(32),  # [api] secret_key
    "AIRFLOW_FERNET_KEY": fernet_key,
}
ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=(?P<value>.*)$")
HEADER = """\
# docker-compose.yaml's credentials, written by `make compose-env` (python -m stack.compose_env) with fresh random
# values. Private: mode 0600, git-ignored, never print or commit it. The Airflow admin password is
# _AIRFLOW_WWW_USER_PASSWORD. PostgreSQL keeps the passwords it created its roles with on its first start: after
# changing one here, change it in PostgreSQL too, or delete the volumes (`docker compose down -v`).
"""


def settings() -> dict[str, str]:
    """The non-secret variable the file carries: AIRFLOW_UID, so that what the containers write into the mounted
    ./dags, ./plugins and ./ml stays the user's (not for root, where the compose default, 50000, applies)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return {"AIRFLOW_UID": str(uid)} if uid else {}


def generate() -> dict[str, str]:
    """Fresh values for every variable of the file: new random secrets on each call."""
    return {**settings(), **{name: make() for name, make in SECRETS.items()}}


def render(values: dict[str, str]) -> str:
    """`NAME=value` lines, one a variable."""
    return "".join(f"{name}={value}\n" for name, value in values.items())


def assigned(text: str) -> dict[str, str]:
    """The variables an `.env` text assigns (the last assignment of a name wins, as in Compose), values unquoted."""
    found = {}
    for line in text.splitlines():
        match = ASSIGNMENT.match(line)
        if match:
            value = match.group("value").strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            found[match.group("name")] = value
    return found


@dataclass(frozen=True)
class ComposeEnv:
    """What write_compose_env did: the file, the variables it wrote, and required ones the file leaves empty."""

    path: Path
    created: bool
    added: tuple[str, ...]
    empty: tuple[str, ...]


def write_compose_env(path: Path = COMPOSE_ENV_FILE, *, force: bool = False) -> ComposeEnv:
    """Write `path` with fresh values (mode 0600 from its creation). An existing file is kept line for line and only
    the variables it lacks are appended, unless `force` replaces it. Returns names, never values."""
    fresh = generate()
    if force or not path.exists():
        write_private(path, HEADER + render(fresh))
        return ComposeEnv(path, created=True, added=tuple(fresh), empty=())
    text = path.read_text(encoding="utf-8")
    present = assigned(text)
    missing = {name: value for name, value in fresh.items() if name not in present}
    if missing:
        write_private(path, text + ("" if not text or text.endswith("\n") else "\n") + render(missing))
    else:
        os.chmod(path, 0o600)  # it holds secrets: tighten a looser mode, nothing else
    empty = tuple(name for name in SECRETS if name in present and not present[name])
    return ComposeEnv(path, created=False, added=tuple(missing), empty=empty)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.compose_env", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--path", type=Path, default=COMPOSE_ENV_FILE, help="the file (default: .env of the repository)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing file with fresh values")
    args = parser.parse_args(argv)
    result = write_compose_env(args.path, force=args.force)
    if result.created:
        print(f"wrote {result.path} (mode 0600): {', '.join(result.added)}; values not shown")
        if args.force:
            print("replaced: delete the old volumes (docker compose down -v) or change the passwords in PostgreSQL")
    elif result.added:
        print(f"kept {result.path}; added {', '.join(result.added)} (values not shown)")
    else:
        print(f"kept {result.path}: it has every variable docker-compose.yaml needs (--force replaces it)")
    if result.empty:
        print(f"{result.path}: {', '.join(result.empty)} empty: set them, or --force", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
