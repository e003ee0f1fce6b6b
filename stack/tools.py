"""Fetch what the stack runs besides Python packages: the S3 server (Go module proxy) and Kafka/Spark jars (Maven).

Everything is cached outside the repository (Go build cache, `~/.m2`), so a fresh clone fetches in seconds the second
time. Jars are not copied: a classpath file lists them where Maven keeps them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from stack.config import REPO_ROOT, VERSITYGW_MODULE, VERSITYGW_VERSION, StackPaths
from stack.services import StackError

MAVEN_DIR = REPO_ROOT / "stack" / "maven"


def require_tool(name: str, why: str) -> str:
    """The path of an executable on PATH, or a StackError naming what needs it."""
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` is not on PATH; it is needed to {why}. Install it (see README, Prerequisites).")
    return found


def _check_java() -> None:
    java = require_tool("java", "run Kafka and Spark")
    version = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    first = version.splitlines()[0] if version else ""
    # Kafka 4 and Spark 4 need Java 17 or newer.
    major = first.split('"')[1].split(".")[0] if '"' in first else "0"
    if not major.isdigit() or int(major) < 17:
        raise StackError(f"Java 17 or newer is required (Kafka 4, Spark 4); found: {first or 'unknown'}")


def fetch_versitygw(paths: StackPaths) -> str:
    """Build the pinned Versity S3 Gateway into .stack/bin with `go install` (cached by Go's build cache)."""
    if paths.versitygw.exists():
        return "versitygw: present"
    go = require_tool("go", "build the S3 server (versitygw)")
    paths.bin.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(paths.bin), "CGO_ENABLED": "0"}
    result = subprocess.run(
        [go, "install", f"{VERSITYGW_MODULE}@{VERSITYGW_VERSION}"], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise StackError(f"go install {VERSITYGW_MODULE}@{VERSITYGW_VERSION} failed:\n{result.stderr[-3000:]}")
    return f"versitygw: built {VERSITYGW_VERSION}"


def fetch_classpath(pom: Path, classpath_file: Path) -> str:
    """Resolve a pom's runtime dependencies into ~/.m2 and write their classpath to `classpath_file`."""
    if classpath_file.exists() and all(Path(jar).exists() for jar in classpath_file.read_text().strip().split(":")):
        return f"{classpath_file.name}: present"
    mvn = require_tool("mvn", f"fetch the jars of {pom.name} from Maven Central")
    classpath_file.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:build-classpath",
            "-DincludeScope=runtime",
            f"-Dmdep.outputFile={classpath_file}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not classpath_file.exists():
        raise StackError(f"mvn could not resolve {pom}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return f"{classpath_file.name}: resolved"


def check_spark_hadoop_version(expected: str) -> None:
    """The S3 connector must match the pyspark wheel's Hadoop client, or s3a fails with linkage errors."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    found = sorted(p.name for p in jars.glob("hadoop-client-api-*.jar"))
    if found != [f"hadoop-client-api-{expected}.jar"]:
        raise StackError(
            f"pyspark ships {found} but the S3 connector is hadoop-aws {expected}: update HADOOP_AWS_VERSION "
            "in stack/config/versions.py and stack/maven/spark-s3a-pom.xml together with pyspark"
        )


def fetch_all(paths: StackPaths) -> list[str]:
    """Everything `make tools` provides; idempotent."""
    from stack.config import HADOOP_AWS_VERSION

    _check_java()
    check_spark_hadoop_version(HADOOP_AWS_VERSION)
    return [
        fetch_versitygw(paths),
        fetch_classpath(MAVEN_DIR / "kafka-pom.xml", paths.kafka_classpath_file),
        fetch_classpath(MAVEN_DIR / "spark-s3a-pom.xml", paths.spark_s3a_classpath_file),
        fetch_classpath(MAVEN_DIR / "spark-lineage-pom.xml", paths.spark_lineage_classpath_file),
        fetch_classpath(MAVEN_DIR / "spark-kafka-pom.xml", paths.spark_kafka_classpath_file),
        fetch_classpath(MAVEN_DIR / "postgresql-pom.xml", paths.postgresql_classpath_file),
    ]
