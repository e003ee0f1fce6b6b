"""The Hive metastore: the Thrift service of Spark's own Hive 2.3 jars, its schema and hive-site.xml on PostgreSQL."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

from stack.cluster.paths import classpath_file
from stack.cluster.postgres import postgres_connect
from stack.config import (
    METASTORE_PORT,
    POSTGRES_PORT,
    S3_PIPELINE_USER,
    StackPaths,
    as_s3_user,
    cluster_secrets,
    write_private,
)
from stack.process import Service, StackError, port_in_use
from stack.services import java


def _pyspark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def _metastore_jdo(paths: StackPaths) -> dict[str, str]:
    secrets = cluster_secrets(paths)
    return {
        "javax.jdo.option.ConnectionURL": f"jdbc:postgresql://127.0.0.1:{POSTGRES_PORT}/metastore",
        "javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
        "javax.jdo.option.ConnectionUserName": "metastore",
        "javax.jdo.option.ConnectionPassword": secrets["metastore_db_password"],
    }


def _hive_site(paths: StackPaths, env: dict[str, str]) -> str:
    properties = {
        **_metastore_jdo(paths),
        "hive.metastore.schema.verification": "false",
        "datanucleus.schema.autoCreateAll": "false",  # created up front: lazy creation deadlocks on PostgreSQL
        "hive.async.log.enabled": "false",  # else NoClassDefFoundError com/lmax/disruptor
        "hive.metastore.warehouse.dir": f"s3a://{env.get('MLOPS_LAKE_BUCKET', 'lake')}/warehouse",
        # The metastore creates table folders itself: s3a to the stack's S3 server, keys from its environment.
        "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.s3a.endpoint": env["AWS_ENDPOINT_URL"],
        "fs.s3a.endpoint.region": env["AWS_DEFAULT_REGION"],
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": str(env["AWS_ENDPOINT_URL"].startswith("https")).lower(),
    }
    body = "\n".join(
        f"  <property><name>{escape(key)}</name><value>{escape(value)}</value></property>"
        for key, value in properties.items()
    )
    return f'<?xml version="1.0"?>\n<configuration>\n{body}\n</configuration>\n'


def _metastore_schema_exists(paths: StackPaths) -> bool:
    connection = postgres_connect(paths, "metastore")
    try:
        with connection.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'DBS'")
            return cursor.fetchone() is not None
    finally:
        connection.close()  # type: ignore[attr-defined]


def _create_metastore_schema(paths: StackPaths, env: dict[str, str], folder: Path) -> None:
    """DataNucleus SchemaTool with the metastore's own package.jdo (44 tables, ~11 s)."""
    with zipfile.ZipFile(next(_pyspark_jars().glob("hive-metastore-*.jar"))) as jar:
        (folder / "package.jdo").write_bytes(jar.read("package.jdo"))
    jdo = _metastore_jdo(paths)
    lines = [f"{key}={value}" for key, value in jdo.items()]
    lines += ["datanucleus.identifierFactory=datanucleus1", "datanucleus.rdbms.useLegacyNativeValueStrategy=true"]
    properties = write_private(folder / "schema.properties", "\n".join(lines) + "\n")
    classpath = f"{_pyspark_jars()}/*:{classpath_file(paths.postgresql_classpath_file, 'metastore')}"
    command = [java(), "-cp", classpath, "org.datanucleus.store.schema.SchemaTool", "-create", "-api", "JDO"]
    command += ["-props", str(properties), str(folder / "package.jdo")]
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=folder, check=False, timeout=300)
    finally:
        properties.unlink(missing_ok=True)  # it holds the metastore's password
    if result.returncode != 0 or not _metastore_schema_exists(paths):
        raise StackError(f"metastore: creating the schema failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")


def _metastore_prepare(paths: StackPaths, env: dict[str, str]) -> None:
    # It creates the warehouse's folders for the pipeline's Spark jobs: as the pipeline's S3 user, not as root.
    as_s3_user(paths, env, S3_PIPELINE_USER)
    folder = paths.data / "metastore"
    (folder / "conf").mkdir(parents=True, exist_ok=True)
    write_private(folder / "conf" / "hive-site.xml", _hive_site(paths, env))
    if not _metastore_schema_exists(paths):
        _create_metastore_schema(paths, env, folder)


def _metastore_command(paths: StackPaths, env: dict[str, str]) -> list[str]:
    classpath = [
        str(paths.data / "metastore" / "conf"),
        f"{_pyspark_jars()}/*",
        classpath_file(paths.postgresql_classpath_file, "metastore"),
        classpath_file(paths.spark_s3a_classpath_file, "metastore"),
    ]
    opens = [f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in ("java.lang", "java.util", "java.net")]
    main = ["org.apache.hadoop.hive.metastore.HiveMetaStore", "-p", str(METASTORE_PORT)]
    return [java(), "-Xmx512m", *opens, "-cp", ":".join(classpath), *main]


METASTORE = Service(
    name="metastore",
    port=METASTORE_PORT,
    command=_metastore_command,
    prepare=_metastore_prepare,
    is_healthy=lambda env: port_in_use(METASTORE_PORT),
    start_timeout_s=120,
    url=f"thrift://127.0.0.1:{METASTORE_PORT} (Hive metastore 2.3 on PostgreSQL; listens on all interfaces)",
)
