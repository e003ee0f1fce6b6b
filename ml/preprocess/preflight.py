"""Before a Spark job starts: the cluster services it needs answer, or the job fails at once naming what is down.

Without this, a standalone master that is down makes spark-submit retry for a minute ("All masters are
unresponsive"), and a metastore that is down surfaces as a Hive client error deep in the job, after the driver has
started. A TCP connection is what both need first; a metastore must also serve one request that reads its database
(ml.preprocess.metastore_probe): with PostgreSQL down, it still accepts connections. Nothing is written before the
checks pass.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from ml.preflight import ServiceUnavailable
from ml.preprocess.metastore_probe import MetastoreError, get_all_databases
from ml.settings import SparkSettings


class ClusterServiceUnreachable(ServiceUnavailable):
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


def require_cluster_services(spark: SparkSettings, timeout_s: float = 5.0, metastore_timeout_s: float = 30.0) -> None:
    """Raise ClusterServiceUnreachable unless the standalone master (one of them, in HA mode) accepts connections and a
    networked Hive metastore (one of its URIs) answers a request. Local masters and the embedded metastore need
    nothing."""
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
    if spark.metastore_uri:
        _require_serving_metastore(spark.metastore_uri, metastore_timeout_s)


def _require_serving_metastore(uri: str, timeout_s: float) -> None:
    """One metastore of the URI list must answer a request that reads its database."""
    reasons = []
    for host, port in _endpoints(uri, "thrift", 9083):
        try:
            get_all_databases(host, port, timeout_s)
            return
        except MetastoreError as error:
            reasons.append(f"{host}:{port} answered with an error: {error}")
        except TimeoutError:
            reasons.append(f"{host}:{port} did not answer within {timeout_s:g} s")
        except (OSError, ValueError) as error:
            reasons.append(f"{host}:{port}: {error}")
    raise ClusterServiceUnreachable(
        f"the Hive metastore at {uri} accepts connections but cannot serve requests (is its database down?): "
        f"{'; '.join(reasons)}; no job was started"
    )
