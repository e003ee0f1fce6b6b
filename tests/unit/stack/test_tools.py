"""stack/tools.py: what `make tools` checks and fetches, on the paths that need no network (present binaries and
jars, a missing tool, the pyspark/hadoop-aws version match)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.config import HADOOP_AWS_VERSION, StackPaths
from stack.services import StackError
from stack.tools import check_spark_hadoop_version, fetch_classpath, fetch_versitygw, require_tool


def test_a_missing_tool_is_named_with_what_needs_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"`mvn` is not on PATH; it is needed to fetch the jars"):
        require_tool("mvn", "fetch the jars")


def test_a_present_classpath_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jars = [tmp_path / "a.jar", tmp_path / "b.jar"]
    for jar in jars:
        jar.write_text("")
    classpath = tmp_path / "x.classpath"
    classpath.write_text(":".join(map(str, jars)) + "\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn: it must not be needed
    assert fetch_classpath(tmp_path / "pom.xml", classpath) == "x.classpath: present"


def test_a_classpath_with_a_vanished_jar_is_resolved_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    classpath = tmp_path / "x.classpath"
    classpath.write_text(str(tmp_path / "gone.jar"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="`mvn` is not on PATH"):
        fetch_classpath(tmp_path / "pom.xml", classpath)


def test_a_present_s3_server_is_not_built_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = StackPaths(tmp_path)
    paths.bin.mkdir()
    paths.versitygw.write_text("")
    monkeypatch.setenv("PATH", str(tmp_path))  # no go
    assert fetch_versitygw(paths) == "versitygw: present"


def test_the_s3_connector_matches_the_pyspark_wheel() -> None:
    check_spark_hadoop_version(HADOOP_AWS_VERSION)
    with pytest.raises(StackError, match="update HADOOP_AWS_VERSION"):
        check_spark_hadoop_version("0.0.1")
