#!/usr/bin/env python3
"""Entry point of the hive-metastore and hive-metastore-init services (docker-compose.yaml): writes the Hive
metastore's configuration from the environment into $HIVE_CONF_DIR, then runs the command it is given (the metastore's
Thrift service, or DataNucleus SchemaTool).

  hive-site.xml      the JDO connection to PostgreSQL, the warehouse, s3a to the S3 server (keys: s3a's environment
                     chain, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
  schema.properties  the JDO connection plus the identifier settings the metastore itself uses, for SchemaTool

The properties are the cluster profile's (stack/cluster/metastore.py). Both files hold the database password: they are written
0600 into the container's own folder, never into the image or a volume.

Environment: METASTORE_JDBC_URL, METASTORE_DB_USER, METASTORE_DB_PASSWORD (required); HIVE_CONF_DIR (default
/tmp/hive-conf); MLOPS_LAKE_BUCKET (the warehouse's bucket, default lake); AWS_ENDPOINT_URL, AWS_DEFAULT_REGION (s3a,
written only when AWS_ENDPOINT_URL is set).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import escape

DEFAULT_CONF_DIR = "/tmp/hive-conf"  # noqa: S108 - the container's own /tmp; a 0700 folder, 0600 files


def jdo_properties(env: Mapping[str, str]) -> dict[str, str]:
    """The metastore database's JDO connection."""
    return {
        "javax.jdo.option.ConnectionURL": env["METASTORE_JDBC_URL"],
        "javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
        "javax.jdo.option.ConnectionUserName": env["METASTORE_DB_USER"],
        "javax.jdo.option.ConnectionPassword": env["METASTORE_DB_PASSWORD"],
    }


def hive_site(env: Mapping[str, str]) -> dict[str, str]:
    """hive-site.xml of the metastore's Thrift service."""
    properties = {
        **jdo_properties(env),
        "hive.metastore.schema.verification": "false",
        "datanucleus.schema.autoCreateAll": "false",  # created up front (SchemaTool): lazy creation deadlocks
        "hive.async.log.enabled": "false",  # else NoClassDefFoundError com/lmax/disruptor
        "hive.metastore.warehouse.dir": f"s3a://{env.get('MLOPS_LAKE_BUCKET') or 'lake'}/warehouse",
    }
    endpoint = env.get("AWS_ENDPOINT_URL")
    if endpoint:
        # The metastore creates database and table folders itself: s3a to the S3 server.
        properties.update(
            {
                "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
                "fs.s3a.endpoint": endpoint,
                "fs.s3a.endpoint.region": env.get("AWS_DEFAULT_REGION") or "us-east-1",
                "fs.s3a.path.style.access": "true",
                "fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https")).lower(),
            }
        )
    return properties


def schema_properties(env: Mapping[str, str]) -> dict[str, str]:
    """SchemaTool's properties: the identifier settings must be the ones the metastore uses (Hive 2.3's defaults)."""
    return {
        **jdo_properties(env),
        "datanucleus.identifierFactory": "datanucleus1",
        "datanucleus.rdbms.useLegacyNativeValueStrategy": "true",
    }


def render_xml(properties: Mapping[str, str]) -> str:
    body = "\n".join(
        f"  <property><name>{escape(key)}</name><value>{escape(value)}</value></property>"
        for key, value in properties.items()
    )
    return f'<?xml version="1.0"?>\n<configuration>\n{body}\n</configuration>\n'


def render_properties(properties: Mapping[str, str]) -> str:
    """A Java .properties file: ASCII values on one line each, backslashes doubled."""
    lines = []
    for key, value in properties.items():
        if not value.isascii() or "\n" in value or "\r" in value:
            raise ValueError(f"{key}: the value must be ASCII on one line")
        escaped = value.replace("\\", "\\\\")
        lines.append(f"{key}={escaped}")
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    path.chmod(0o600)


def write_conf(conf_dir: Path, env: Mapping[str, str]) -> list[Path]:
    """Write hive-site.xml and schema.properties into conf_dir; returns their paths."""
    conf_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = {
        "hive-site.xml": render_xml(hive_site(env)),
        "schema.properties": render_properties(schema_properties(env)),
    }
    written = []
    for name, text in files.items():
        _write_private(conf_dir / name, text)
        written.append(conf_dir / name)
    return written


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: hive-metastore-conf COMMAND [ARG...]", file=sys.stderr)
        return 2
    write_conf(Path(os.environ.get("HIVE_CONF_DIR") or DEFAULT_CONF_DIR), os.environ)
    os.execvp(argv[0], argv)  # noqa: S606 - becomes the service's command, as an entrypoint script does
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
