"""stack/compose_env.py: the `.env` that `make compose-env` writes for docker-compose.yaml.

That the compose file needs exactly these variables is checked in test_docker_compose.py; that `.env` is git-ignored,
in tests/unit/test_security.py (and kept out of the images, test_docker_compose.py).
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography.fernet import Fernet

from stack import compose_env
from stack.config import REPO_ROOT

# What the compose file does with the values: database passwords in URLs, keys and the token in JSON strings, every
# one in an unquoted `.env` line that Compose reads without interpolating anything.
SAFE_VALUE = re.compile(r"[A-Za-z0-9_=-]{16,}")


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that leaves every permission: a private mode is then the code's doing, not the umask's."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_call_makes_fresh_safe_values() -> None:
    first, second = compose_env.generate(), compose_env.generate()
    assert set(compose_env.SECRETS) <= first.keys() == second.keys()
    for name in compose_env.SECRETS:
        assert first[name] != second[name], f"{name} is not fresh"
        assert SAFE_VALUE.fullmatch(first[name]), f"{name} has a character a URL, JSON or .env line would mangle"
        url = f"postgresql://role:{first[name]}@postgres:5432/db"
        assert urlsplit(url).password == first[name]
    assert len(set(first[name] for name in compose_env.SECRETS)) == len(compose_env.SECRETS), "two secrets are equal"
    uid = os.getuid()
    assert first.get("AIRFLOW_UID") == (str(uid) if uid else None)


def test_the_fernet_key_is_a_valid_key() -> None:
    key = compose_env.generate()["AIRFLOW_FERNET_KEY"]
    assert len(base64.urlsafe_b64decode(key)) == 32
    token = Fernet(key.encode()).encrypt(b"connection")
    assert Fernet(key.encode()).decrypt(token) == b"connection"


def test_the_file_is_private_before_a_byte_is_written(
    tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "compose" / ".env"
    modes_at_write = []
    real_write = os.write

    def spy(descriptor: int, data: bytes) -> int:
        modes_at_write.append(stat.S_IMODE(os.fstat(descriptor).st_mode))
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", spy)
    result = compose_env.write_compose_env(path)
    monkeypatch.undo()
    assert modes_at_write and set(modes_at_write) == {0o600}
    assert mode(path) == 0o600
    assert (result.path, result.created, result.empty) == (path, True, ())
    assert set(result.added) == set(compose_env.generate())
    written = compose_env.assigned(path.read_text())
    assert written.keys() == set(result.added)
    assert all(SAFE_VALUE.fullmatch(written[name]) for name in compose_env.SECRETS)


def test_an_existing_file_is_kept_and_only_completed(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / ".env"
    kept_value = secrets.token_hex(16)
    existing = f"# mine\nAIRFLOW_UID=1234\nexport AIRFLOW_JWT_SECRET='{kept_value}'\nMLOPS_IMAGE=mine:1"  # no final \n
    path.write_text(existing)
    path.chmod(0o644)
    result = compose_env.write_compose_env(path)
    text = path.read_text()
    assert text.startswith(existing + "\n"), "an existing line changed"
    assert mode(path) == 0o600
    assert not result.created
    assert set(result.added) == set(compose_env.SECRETS) - {"AIRFLOW_JWT_SECRET"}
    values = compose_env.assigned(text)
    assert (values["AIRFLOW_UID"], values["AIRFLOW_JWT_SECRET"]) == ("1234", kept_value)
    assert set(compose_env.SECRETS) <= values.keys()
    # Complete now: a second run changes nothing (but a looser mode).
    path.chmod(0o640)
    again = compose_env.write_compose_env(path)
    assert (again.added, again.empty, path.read_text(), mode(path)) == ((), (), text, 0o600)


def test_force_replaces_the_file_with_fresh_values(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    compose_env.write_compose_env(path)
    before = compose_env.assigned(path.read_text())
    result = compose_env.write_compose_env(path, force=True)
    after = compose_env.assigned(path.read_text())
    assert result.created and after.keys() == before.keys()
    assert all(after[name] != before[name] for name in compose_env.SECRETS)
    assert mode(path) == 0o600


def test_the_command_names_the_variables_and_never_prints_a_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / ".env"
    assert compose_env.main(["--path", str(path)]) == 0
    assert compose_env.main(["--path", str(path)]) == 0
    out = capsys.readouterr()
    values = compose_env.assigned(path.read_text())
    printed = out.out + out.err
    assert "AIRFLOW_FERNET_KEY" in printed and "kept" in printed
    assert [name for name, value in values.items() if value in printed] in ([], ["AIRFLOW_UID"])


def test_an_empty_credential_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / ".env"
    path.write_text("POSTGRES_PASSWORD=\n")
    assert compose_env.main(["--path", str(path)]) == 1
    assert "POSTGRES_PASSWORD empty" in capsys.readouterr().err
    assert compose_env.assigned(path.read_text())["POSTGRES_PASSWORD"] == ""  # kept: the user's to fix


def test_make_compose_env_writes_the_file_compose_reads() -> None:
    """Compose reads `.env` from the compose file's folder; `make compose-env` runs this module."""
    assert compose_env.COMPOSE_ENV_FILE == REPO_ROOT / ".env" == (REPO_ROOT / "docker-compose.yaml").with_name(".env")
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    target = re.search(r"^compose-env:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target is not None, "the Makefile has no compose-env target"
    assert "-m stack.compose_env" in target.group(1)


def test_the_file_carries_the_users_id_but_not_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    """AIRFLOW_UID keeps what the containers write into ./dags etc. the user's; root gets the compose default."""
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    assert compose_env.settings() == {"AIRFLOW_UID": "1234"} and compose_env.generate()["AIRFLOW_UID"] == "1234"
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert compose_env.settings() == {} and "AIRFLOW_UID" not in compose_env.generate()
