"""stack/cluster/metastore.py: hive-site.xml (PostgreSQL, the lake's warehouse, s3a without keys), the metastore's
classpath, and its schema created by SchemaTool with the password in a private file it then deletes. Nothing here
starts a process or connects to a database: subprocess.run, Spark's jars and the schema probe are fakes."""

from __future__ import annotations

import json
import stat
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import pytest

from stack.cluster import metastore
from stack.config import StackPaths, cluster_secrets
from stack.process import StackError
from tests.unit.stack.cluster.support import PG_JARS, S3_KEY, S3A_JARS, flag


def _properties(xml_text: str) -> dict[str, str]:
    root = ET.fromstring(xml_text)
    assert root.tag == "configuration"
    return {prop.findtext("name", ""): prop.findtext("value", "") for prop in root.iter("property")}


def test_hive_site_points_the_metastore_at_postgresql(stack: StackPaths, env: dict[str, str]) -> None:
    site = metastore._hive_site(stack, env)
    properties = _properties(site)
    assert properties["javax.jdo.option.ConnectionURL"] == "jdbc:postgresql://127.0.0.1:5432/metastore"
    assert properties["javax.jdo.option.ConnectionDriverName"] == "org.postgresql.Driver"
    assert properties["javax.jdo.option.ConnectionUserName"] == "metastore"
    assert properties["javax.jdo.option.ConnectionPassword"] == cluster_secrets(stack)["metastore_db_password"]
    assert properties["hive.metastore.schema.verification"] == "false"
    assert properties["datanucleus.schema.autoCreateAll"] == "false"
    assert properties["hive.metastore.warehouse.dir"] == "s3a://lake/warehouse"
    assert properties["fs.s3a.endpoint"] == env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert properties["fs.s3a.connection.ssl.enabled"] == "false"
    assert S3_KEY not in site and env["AWS_ACCESS_KEY_ID"] not in site, "the S3 keys come from its environment"


def test_hive_site_follows_the_lake_bucket_and_an_https_endpoint(stack: StackPaths, env: dict[str, str]) -> None:
    changed = {**env, "MLOPS_LAKE_BUCKET": "lake2", "AWS_ENDPOINT_URL": "https://s3.example.org"}
    properties = _properties(metastore._hive_site(stack, changed))
    assert properties["hive.metastore.warehouse.dir"] == "s3a://lake2/warehouse"
    assert properties["fs.s3a.connection.ssl.enabled"] == "true"


def test_hive_site_escapes_a_password_xml_would_misread(stack_dir: StackPaths) -> None:
    awkward = "pa<ss>&word\"'"
    stack_dir.root.mkdir(parents=True)
    stack_dir.cluster_secrets_file.write_text(json.dumps({"metastore_db_password": awkward}))
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "us-east-1"}
    site = metastore._hive_site(stack_dir, env)
    assert awkward not in site
    assert _properties(site)["javax.jdo.option.ConnectionPassword"] == awkward


def test_the_metastore_classpath_has_its_conf_spark_hive_postgresql_and_s3a(
    stack: StackPaths, env: dict[str, str]
) -> None:
    command = metastore._metastore_command(stack, env)
    classpath = flag(command, "-cp").split(":")
    pyspark_jars = metastore._pyspark_jars()
    assert classpath == [
        str(stack.data / "metastore" / "conf"),  # hive-site.xml
        f"{pyspark_jars}/*",
        *PG_JARS.split(":"),
        *S3A_JARS.split(":"),
    ]
    assert list(pyspark_jars.glob("hive-metastore-*.jar")), "Spark's own Hive 2.3 metastore jar"
    assert command[-3:] == ["org.apache.hadoop.hive.metastore.HiveMetaStore", "-p", "9083"]


@pytest.mark.parametrize("missing", ["postgresql", "spark-s3a"])
def test_the_metastore_without_its_jars_says_how_to_get_them(
    stack: StackPaths, env: dict[str, str], missing: str
) -> None:
    (stack.jars / f"{missing}.classpath").unlink()
    with pytest.raises(StackError, match=rf"metastore: .*{missing}\.classpath is missing; run `make tools`"):
        metastore._metastore_command(stack, env)


class _SchemaTool:
    """subprocess.run for DataNucleus SchemaTool: what it was given while it ran, and the answer it returns."""

    def __init__(self, returncode: int = 0, raises: BaseException | None = None) -> None:
        self.returncode, self.raises = returncode, raises
        self.calls: list[dict[str, Any]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        properties = Path(flag(command, "-props"))
        self.calls.append(
            {
                "command": command,
                "cwd": kwargs.get("cwd"),
                "properties": properties,
                "text": properties.read_text(),
                "mode": stat.S_IMODE(properties.stat().st_mode),
                "jdo": Path(command[-1]).read_bytes(),
            }
        )
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(command, self.returncode, "schema tool output", "schema tool errors")


@pytest.fixture
def fake_pyspark_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    jars = tmp_path / "pyspark-jars"
    jars.mkdir()
    with zipfile.ZipFile(jars / "hive-metastore-2.3.10.jar", "w") as jar:
        jar.writestr("package.jdo", b"<jdo>the metastore's tables</jdo>")
    monkeypatch.setattr(metastore, "_pyspark_jars", lambda: jars)
    return jars


def _schema_states(monkeypatch: pytest.MonkeyPatch, *states: bool) -> list[bool]:
    """_metastore_schema_exists answers `states` in turn (the last one from then on)."""
    answers = list(states)
    asked: list[bool] = []

    def exists(paths: StackPaths) -> bool:
        asked.append(answers[0] if len(answers) == 1 else answers.pop(0))
        return asked[-1]

    monkeypatch.setattr(metastore, "_metastore_schema_exists", exists)
    return asked


def test_the_metastore_schema_is_left_alone_when_it_exists(
    stack: StackPaths, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fake_pyspark_jars: Path
) -> None:
    _schema_states(monkeypatch, True)
    tool = _SchemaTool()
    monkeypatch.setattr(subprocess, "run", tool)
    metastore._metastore_prepare(stack, env)
    assert tool.calls == []
    site = stack.data / "metastore" / "conf" / "hive-site.xml"
    assert _properties(site.read_text())["javax.jdo.option.ConnectionUserName"] == "metastore"
    assert stat.S_IMODE(site.stat().st_mode) == 0o600, "hive-site.xml holds the database password"


def test_a_missing_metastore_schema_is_created_by_schema_tool(
    stack: StackPaths, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fake_pyspark_jars: Path
) -> None:
    _schema_states(monkeypatch, False, True)
    tool = _SchemaTool()
    monkeypatch.setattr(subprocess, "run", tool)
    metastore._metastore_prepare(stack, env)
    [call] = tool.calls
    assert call["command"][call["command"].index("-cp") + 2 :][:5] == [
        "org.datanucleus.store.schema.SchemaTool",
        "-create",
        "-api",
        "JDO",
        "-props",
    ]
    assert flag(call["command"], "-cp") == f"{fake_pyspark_jars}/*:{PG_JARS}"
    assert call["jdo"] == b"<jdo>the metastore's tables</jdo>", "the metastore jar's own package.jdo"
    password = cluster_secrets(stack)["metastore_db_password"]
    assert f"javax.jdo.option.ConnectionPassword={password}\n" in call["text"]
    assert "javax.jdo.option.ConnectionURL=jdbc:postgresql://127.0.0.1:5432/metastore\n" in call["text"]
    assert call["mode"] == 0o600
    assert password not in " ".join(call["command"])
    assert not call["properties"].exists(), "the properties file holding the password is deleted"


@pytest.mark.parametrize(("returncode", "schema_after"), [(1, False), (0, False), (1, True)])
def test_a_failed_schema_creation_is_reported_and_leaves_no_password_file(
    stack: StackPaths,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    fake_pyspark_jars: Path,
    returncode: int,
    schema_after: bool,
) -> None:
    _schema_states(monkeypatch, False, schema_after)
    tool = _SchemaTool(returncode=returncode)
    monkeypatch.setattr(subprocess, "run", tool)
    with pytest.raises(StackError, match=r"metastore: creating the schema failed:\nschema tool output"):
        metastore._metastore_prepare(stack, env)
    assert not tool.calls[0]["properties"].exists()


def test_a_schema_tool_that_times_out_leaves_no_password_file(
    stack: StackPaths, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fake_pyspark_jars: Path
) -> None:
    _schema_states(monkeypatch, False)
    tool = _SchemaTool(raises=subprocess.TimeoutExpired(["java"], 300))
    monkeypatch.setattr(subprocess, "run", tool)
    with pytest.raises(subprocess.TimeoutExpired):
        metastore._metastore_prepare(stack, env)
    assert not tool.calls[0]["properties"].exists()


def test_the_metastore_creates_warehouse_folders_as_the_pipeline_user_not_as_root(
    stack: StackPaths, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fake_pyspark_jars: Path
) -> None:
    from stack.config import local_credentials, s3_user_keys

    _schema_states(monkeypatch, True)
    root = local_credentials(stack)
    env.update({"AWS_ACCESS_KEY_ID": root["access_key"], "AWS_SECRET_ACCESS_KEY": root["secret_key"]})
    metastore._metastore_prepare(stack, env)
    pipeline = s3_user_keys(stack, "pipeline")
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (pipeline["access_key"], pipeline["secret_key"])
