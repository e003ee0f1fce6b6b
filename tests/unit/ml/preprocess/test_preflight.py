"""ml.preprocess.preflight: a job that needs a standalone master or a networked metastore fails at once, naming the
service and its address, when nothing listens there. Real sockets on 127.0.0.1: a listening one, and a closed one."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ml.preprocess.preflight import ClusterServiceUnreachable, _endpoints, require_cluster_services
from ml.settings import SparkSettings
from tests.unit.ml.preprocess.fake_metastore import databases_answer, fake_metastore, meta_exception_answer


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def closed() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # released: nothing listens there now


def test_local_spark_with_an_embedded_metastore_needs_nothing() -> None:
    require_cluster_services(SparkSettings(master="local[*]", metastore_dir="/tmp/hive"))


def test_a_reachable_master_and_a_serving_metastore_pass(listening: int) -> None:
    with fake_metastore(databases_answer(["default"])) as metastore:
        require_cluster_services(
            SparkSettings(master=f"spark://127.0.0.1:{listening}", metastore_uri=f"thrift://127.0.0.1:{metastore}")
        )


def test_a_metastore_whose_database_is_down_is_named_with_its_error(listening: int) -> None:
    # what Hive's metastore answers when its PostgreSQL is down: it still accepts connections
    error = "Unable to open a test connection to the given database. JDBC url = jdbc:postgresql://127.0.0.1:5432/m"
    with fake_metastore(meta_exception_answer(error)) as metastore:
        spark = SparkSettings(master=f"spark://127.0.0.1:{listening}", metastore_uri=f"thrift://127.0.0.1:{metastore}")
        with pytest.raises(ClusterServiceUnreachable) as failure:
            require_cluster_services(spark)
    message = str(failure.value)
    assert f"Hive metastore at thrift://127.0.0.1:{metastore} accepts connections but cannot serve" in message
    assert "jdbc:postgresql://127.0.0.1:5432/m" in message and "no job was started" in message


def test_a_metastore_that_does_not_answer_in_time_is_named(listening: int) -> None:
    with fake_metastore(None) as metastore:
        spark = SparkSettings(master=f"spark://127.0.0.1:{listening}", metastore_uri=f"thrift://127.0.0.1:{metastore}")
        with pytest.raises(ClusterServiceUnreachable, match=r"did not answer within 0\.2 s"):
            require_cluster_services(spark, metastore_timeout_s=0.2)


def test_a_master_that_is_down_is_named_with_its_address(closed: int) -> None:
    with pytest.raises(ClusterServiceUnreachable, match=rf"Spark master at spark://127.0.0.1:{closed} is not reach"):
        require_cluster_services(SparkSettings(master=f"spark://127.0.0.1:{closed}"))


def test_a_metastore_that_is_down_is_named_with_its_address(listening: int, closed: int) -> None:
    spark = SparkSettings(master=f"spark://127.0.0.1:{listening}", metastore_uri=f"thrift://127.0.0.1:{closed}")
    with pytest.raises(ClusterServiceUnreachable, match=rf"Hive metastore at thrift://127.0.0.1:{closed}.*refused"):
        require_cluster_services(spark)


def test_one_answering_master_of_several_is_enough(listening: int, closed: int) -> None:
    require_cluster_services(SparkSettings(master=f"spark://127.0.0.1:{closed},127.0.0.1:{listening}"))


def test_endpoints_of_uri_lists_take_default_ports() -> None:
    assert _endpoints("spark://a:7077,b", "spark", 7077) == [("a", 7077), ("b", 7077)]
    assert _endpoints("thrift://m1:9083,thrift://m2:9999", "thrift", 9083) == [("m1", 9083), ("m2", 9999)]
