"""Before a Spark job starts: the cluster services it needs answer, or the job fails at once naming what is down.

Without this, a standalone master that is down makes spark-submit retry for a minute ("All masters are
unresponsive"), and a metastore that is down surfaces as a Hive client error deep in the job, after the driver has
started. A TCP connection is what both would need first; nothing is written before the check passes.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from ml.settings import SparkSettings


class ClusterServiceUnreachable(RuntimeError):
    """A service a Spark job needs (the standalone master, the Hive metastore) does not accept connections."""


def _endpoints(uris: str, scheme: str, default_port: int) -> list[tuple[str, int]]:
    """host:port pairs of a comma-separated list of `scheme://host:port` URIs (a standalone master in HA mode lists
    several: `spark://a:7077,b:7077`)."""
    found = []
    for part in uris.removeprefix(f"{scheme}://").split(","):
        address = urlsplit(f"{scheme}://{part.strip().removeprefix(f'{scheme}://')}")
        if address.hostname:
            found.append((address.hostname, address.port or default_port))
    return found


def _answers(host: str, port: int, timeout_s: float) -> str | None:
    """None when host:port accepts a TCP connection, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as error:
        return error.strerror or str(error)


def require_cluster_services(spark: SparkSettings, timeout_s: float = 5.0) -> None:
    """Raise ClusterServiceUnreachable unless the standalone master (one of them, in HA mode) and a networked Hive
    metastore (one of its URIs) accept connections. Local masters and the embedded metastore need nothing."""
    needed = []
    if spark.master.startswith("spark://"):
        needed.append(("Spark master", spark.master, _endpoints(spark.master, "spark", 7077)))
    if spark.metastore_uri:
        needed.append(("Hive metastore", spark.metastore_uri, _endpoints(spark.metastore_uri, "thrift", 9083)))
    for service, uri, endpoints in needed:
        reasons = [(host, port, _answers(host, port, timeout_s)) for host, port in endpoints]
        if reasons and all(reason is not None for _, _, reason in reasons):
            detail = "; ".join(f"{host}:{port}: {reason}" for host, port, reason in reasons)
            raise ClusterServiceUnreachable(f"the {service} at {uri} is not reachable ({detail}); no job was started")
