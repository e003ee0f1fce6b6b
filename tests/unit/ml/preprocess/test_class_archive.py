"""ml/preprocess/class_archive.py: which archive a job's driver maps or writes, and when a written one is put in
place. The JVM's side (that it writes and maps the archive): tests/integration/ml/preprocess/test_class_archive.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ml.preprocess import class_archive
from ml.preprocess.class_archive import DRIVER_JAVA_OPTIONS, archive_key, driver_class_archive, java_binary

DERBY = "-Dderby.system.home=/stack/hive"


@pytest.fixture
def java(tmp_path: Path) -> Path:
    binary = tmp_path / "jdk" / "bin" / "java"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return binary


@pytest.fixture
def jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pyspark jars folder, the one the module finds."""
    folder = tmp_path / "pyspark" / "jars"
    folder.mkdir(parents=True)
    (folder / "spark-core.jar").write_bytes(b"core")
    monkeypatch.setattr(class_archive, "spark_jars", lambda: folder)
    return folder


def test_java_is_java_home_s_else_the_one_on_path(java: Path, tmp_path: Path) -> None:
    assert java_binary({"JAVA_HOME": str(java.parent.parent)}) == java.resolve()
    assert java_binary({"PATH": str(java.parent)}) == java.resolve()
    assert java_binary({"JAVA_HOME": str(tmp_path / "nothing")}) is None
    assert java_binary({"PATH": str(tmp_path / "empty")}) is None


def test_the_key_follows_the_jvm_and_every_jar(java: Path, jars: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "hadoop-aws.jar").write_bytes(b"aws")
    (extra / "notes.txt").write_text("not on the classpath")
    classpath = f"{extra}/*:{tmp_path / 'single.jar'}"
    key = archive_key(java, jars, classpath)
    assert archive_key(java, jars, classpath) == key, "the same inputs, the same archive"
    (extra / "notes.txt").write_text("changed")
    assert archive_key(java, jars, classpath) == key, "`dir/*` is the folder's jars only"
    (extra / "hadoop-aws.jar").write_bytes(b"aws, a new build")
    changed_jar = archive_key(java, jars, classpath)
    (tmp_path / "single.jar").write_bytes(b"now it exists")
    appeared = archive_key(java, jars, classpath)
    (jars / "spark-sql.jar").write_bytes(b"sql")
    spark_upgraded = archive_key(java, jars, classpath)
    os.utime(java, ns=(0, 0))
    other_jvm = archive_key(java, jars, classpath)
    without_extra = archive_key(java, jars, "")
    assert len({key, changed_jar, appeared, spark_upgraded, other_jvm, without_extra}) == 6


def test_without_a_folder_java_or_pyspark_the_conf_is_unchanged(
    java: Path, jars: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = {DRIVER_JAVA_OPTIONS: DERBY}
    env = {"JAVA_HOME": str(java.parent.parent)}
    with driver_class_archive(None, conf, env) as given:
        assert given == conf
    with driver_class_archive(str(tmp_path / "archives"), conf, {"PATH": str(tmp_path / "empty")}) as given:
        assert given == conf
    monkeypatch.setattr(class_archive, "spark_jars", lambda: None)
    with driver_class_archive(str(tmp_path / "archives"), conf, env) as given:
        assert given == conf
    assert not (tmp_path / "archives").exists()


def _option(conf: dict[str, str], name: str) -> Path:
    [value] = [part.split("=", 1)[1] for part in conf[DRIVER_JAVA_OPTIONS].split() if part.startswith(f"-XX:{name}=")]
    return Path(value)


def test_the_first_job_writes_the_archive_and_it_is_put_in_place_after_the_job(
    java: Path, jars: Path, tmp_path: Path
) -> None:
    folder, env = tmp_path / "archives", {"JAVA_HOME": str(java.parent.parent)}
    with driver_class_archive(str(folder), {DRIVER_JAVA_OPTIONS: DERBY}, env) as conf:
        assert conf[DRIVER_JAVA_OPTIONS].startswith(DERBY + " "), "the job's own driver options stay first"
        written = _option(conf, "ArchiveClassesAtExit")
        assert written.parent == folder and written.suffix == ".writing"
        assert "-Xlog:cds=off" in conf[DRIVER_JAVA_OPTIONS], "no line per class it cannot archive"
        written.write_bytes(b"the JVM's archive")  # what the JVM does when it exits
        assert list(folder.glob("*.jsa")) == [], "not in place while the job runs"
    [archive] = folder.glob("*.jsa")
    assert archive.read_bytes() == b"the JVM's archive" and not written.exists()
    with driver_class_archive(str(folder), {}, env) as conf:
        assert _option(conf, "SharedArchiveFile") == archive, "the next job maps it"
        assert "ArchiveClassesAtExit" not in conf[DRIVER_JAVA_OPTIONS]


def test_an_archive_is_not_kept_from_a_job_that_failed_or_wrote_none(java: Path, jars: Path, tmp_path: Path) -> None:
    folder, env = tmp_path / "archives", {"JAVA_HOME": str(java.parent.parent)}
    with pytest.raises(RuntimeError, match="the job failed"):
        with driver_class_archive(str(folder), {}, env) as conf:
            _option(conf, "ArchiveClassesAtExit").write_bytes(b"maybe half-written")
            raise RuntimeError("the job failed")
    with driver_class_archive(str(folder), {}, env) as conf:
        _option(conf, "ArchiveClassesAtExit").write_bytes(b"")  # killed before it wrote anything
    assert list(folder.iterdir()) == [], "nothing in place, no leftovers"


def test_two_jobs_writing_at_once_use_names_of_their_own(java: Path, jars: Path, tmp_path: Path) -> None:
    folder, env = tmp_path / "archives", {"JAVA_HOME": str(java.parent.parent)}
    with driver_class_archive(str(folder), {}, env) as first, driver_class_archive(str(folder), {}, env) as second:
        assert _option(first, "ArchiveClassesAtExit") != _option(second, "ArchiveClassesAtExit")
        _option(first, "ArchiveClassesAtExit").write_bytes(b"one")
        _option(second, "ArchiveClassesAtExit").write_bytes(b"two")
    [archive] = folder.iterdir()
    assert archive.suffix == ".jsa" and archive.read_bytes() in (b"one", b"two")


def test_a_folder_that_cannot_be_made_means_no_archive(java: Path, jars: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with driver_class_archive(
        str(tmp_path / "a-file" / "archives"), {}, {"JAVA_HOME": str(java.parent.parent)}
    ) as conf:
        assert conf == {}


def test_a_new_archive_makes_room_by_removing_those_used_longest_ago(java: Path, jars: Path, tmp_path: Path) -> None:
    folder, env = tmp_path / "archives", {"JAVA_HOME": str(java.parent.parent)}
    folder.mkdir()
    old = [folder / f"driver-old{n}.jsa" for n in range(class_archive.KEEP)]
    for age, path in enumerate(old):
        path.write_bytes(b"an older archive")
        os.utime(path, (1_000_000 - age, 1_000_000 - age))  # old[0] used last, old[-1] longest ago
    with driver_class_archive(str(folder), {}, env) as conf:
        _option(conf, "ArchiveClassesAtExit").write_bytes(b"the new one")
    kept = {path.name for path in folder.iterdir()}
    assert len(kept) == class_archive.KEEP and old[-1].name not in kept and old[0].name in kept
    [new] = [path for path in folder.iterdir() if path.read_bytes() == b"the new one"]
    os.utime(new, (1, 1))
    with driver_class_archive(str(folder), {}, env) as conf:
        assert _option(conf, "SharedArchiveFile") == new
    assert new.stat().st_mtime > 1_000_000, "mapping it counts as a use"
