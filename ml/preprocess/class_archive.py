"""An AppCDS archive of the Spark driver's classes. A driver is a fresh JVM per job that loads 32,000 to 37,000
classes (more with the OpenLineage listener); mapped from an archive of them, the preprocessing job ran 5.3 s (24%)
faster on 2 cores (bench/README.md, "The listener's cost is JVM warm-up").

JDK 17 writes the archive when a run started with `-XX:ArchiveClassesAtExit` exits (that run takes ~25 s longer,
once) and maps it with `-XX:SharedArchiveFile`. An archive only fits the classpath, JDK and jars it was made with, so
it is named after a digest of them: a change makes a new one rather than a mismatch. The JVM writes it under a name of
its own, and it is put in place only after the job's block ended normally: a JVM killed mid-write leaves no
half-written archive where the next job looks, and two jobs that dump at once each put a whole one in place."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
DRIVER_CLASSPATH = "spark.driver.extraClassPath"
# The JVM warns about every class it cannot archive (signed jars, old class versions): hundreds of lines per dump.
QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"
# Archives kept in a folder: the pipeline's jobs use two (with and without the OpenLineage listener's jars).
KEEP = 4


def java_binary(env: Mapping[str, str]) -> Path | None:
    """The java that spark-submit runs with this environment: $JAVA_HOME/bin/java, else the one on PATH."""
    if env.get("JAVA_HOME"):
        candidate = Path(env["JAVA_HOME"]) / "bin" / "java"
        return candidate.resolve() if candidate.exists() else None
    found = shutil.which("java", path=env.get("PATH"))
    return Path(found).resolve() if found else None


def spark_jars() -> Path | None:
    """The jars folder of the pyspark that spark-submit comes with (found without importing pyspark)."""
    spec = importlib.util.find_spec("pyspark")
    return Path(spec.origin).parent / "jars" if spec and spec.origin else None


def _files(entry: str) -> list[Path]:
    """The files a classpath entry names (`dir/*` is every jar in dir, as the JVM reads it)."""
    path = Path(entry)
    if path.name == "*":
        return sorted(path.parent.glob("*.jar"))
    if path.is_dir():
        return sorted(child for child in path.rglob("*") if child.is_file())
    return [path]


def archive_key(java: Path, jars: Path, driver_classpath: str) -> str:
    """A digest of what the archive must match: the JVM binary, and every jar of Spark's and of the driver's extra
    classpath (path, size and modification time, which the JVM itself checks when it maps the archive)."""
    digest = hashlib.sha256()
    entries = [str(jars / "*"), *(part for part in driver_classpath.split(":") if part)]
    for file in [java, *(file for entry in entries for file in _files(entry))]:
        stat = file.stat() if file.exists() else None
        digest.update(f"{file}\0{stat.st_size if stat else -1}\0{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()[:20]


def _with_java_options(conf: Mapping[str, str], options: str) -> dict[str, str]:
    existing = conf.get(DRIVER_JAVA_OPTIONS, "")
    return {**conf, DRIVER_JAVA_OPTIONS: f"{existing} {options}".strip()}


@contextmanager
def driver_class_archive(
    folder: str | None, conf: Mapping[str, str], env: Mapping[str, str]
) -> Iterator[dict[str, str]]:
    """`conf` with the driver's JVM options for the class archive in `folder`: map it when it exists, else write it
    when the JVM exits, and put it in place when the block ends without an exception. No folder, no java or no
    pyspark: `conf` as it is."""
    java, jars = java_binary(env), spark_jars()
    if not folder or java is None or jars is None:
        yield dict(conf)
        return
    archive = Path(folder) / f"driver-{archive_key(java, jars, conf.get(DRIVER_CLASSPATH, ''))}.jsa"
    if archive.is_file():
        with suppress(OSError):  # its time of last use, for _prune
            os.utime(archive)
        yield _with_java_options(conf, f"-XX:SharedArchiveFile={archive} {QUIET_CDS}")
        return
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a cache: the job runs without it
        log.warning("no Spark driver class archive: cannot create %s (%s)", archive.parent, error)
        yield dict(conf)
        return
    written = archive.with_name(f"{archive.stem}.{uuid.uuid4().hex[:12]}.writing")
    log.info("the Spark driver writes its class archive %s when it exits (once: this job takes longer)", archive.name)
    try:
        yield _with_java_options(conf, f"-XX:ArchiveClassesAtExit={written} {QUIET_CDS}")
        if written.is_file() and written.stat().st_size > 0:
            os.replace(written, archive)
            _prune(archive.parent)
    finally:
        written.unlink(missing_ok=True)


def _prune(folder: Path, keep: int = KEEP) -> None:
    """Remove all but the `keep` archives used last (each is ~250 MiB; one per classpath, JDK and Spark build)."""
    archives = sorted(folder.glob("driver-*.jsa"), key=lambda path: path.stat().st_mtime, reverse=True)
    for stale in archives[keep:]:
        stale.unlink(missing_ok=True)
