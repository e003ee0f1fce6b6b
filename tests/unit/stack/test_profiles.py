"""stack/profiles.py: which services each profile starts and in which order, what `down` may have to stop, how many
Spark jobs may write Hive tables at once, and the ports the cluster profile claims on this machine."""

from __future__ import annotations

from collections import Counter

import pytest

from stack.profiles import Profile, every_service, profile_named


def _names(services: tuple[object, ...]) -> list[str]:
    return [service.name for service in services]  # type: ignore[attr-defined]


def test_the_local_profile() -> None:
    local = profile_named("local")
    assert local.name == "local"
    # the S3 server needs Kafka up for its notifications; the drift monitor needs all three
    assert _names(local.services) == ["kafka", "s3", "mlflow", "drift-monitor"]
    assert _names(local.airflow) == ["airflow"]
    assert local.all_services == (*local.services, *local.airflow)


def test_the_cluster_profile() -> None:
    cluster = profile_named("cluster")
    assert cluster.name == "cluster"
    assert _names(cluster.services) == [
        "kafka",
        "s3",
        "postgres",
        "mlflow",
        "drift-monitor",
        "metastore",
        "spark-master",
        "spark-worker-1",
        "spark-worker-2",
        "ray-head",
        "ray-worker",
    ]
    assert _names(cluster.airflow) == [
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    ]
    assert cluster.all_services == (*cluster.services, *cluster.airflow)


# (needed, needing): `up` starts the first before the second, `down` stops the second before the first.
DEPENDENCIES = [
    ("s3", "mlflow"),  # MLflow writes its artifacts into S3
    ("s3", "metastore"),  # the metastore creates table folders in S3
    ("postgres", "mlflow"),
    ("postgres", "metastore"),
    ("postgres", "airflow-api-server"),
    ("spark-master", "spark-worker-1"),
    ("spark-master", "spark-worker-2"),
    ("ray-head", "ray-worker"),
    ("mlflow", "drift-monitor"),  # it finds a model version's training distributions through the registry
    ("s3", "drift-monitor"),  # its checkpoint
]


@pytest.mark.parametrize(("needed", "needing"), DEPENDENCIES)
def test_the_cluster_starts_what_a_service_needs_before_it(needed: str, needing: str) -> None:
    order = _names(profile_named("cluster").all_services)
    assert order.index(needed) < order.index(needing), order


def test_every_service_lists_each_name_once() -> None:
    names = _names(every_service())
    assert len(names) == len(set(names)), Counter(names).most_common(3)
    local, cluster = profile_named("local"), profile_named("cluster")
    assert set(names) == set(_names(local.all_services)) | set(_names(cluster.all_services))
    by_name = {service.name: service for service in every_service()}
    for service in (*local.all_services, *cluster.all_services):
        # down finds a service by its pid file and stops it by its signal and ports: those must be the same.
        same = by_name[service.name]
        assert (same.ports, same.stop_signal) == (service.ports, service.stop_signal), service.name


@pytest.mark.parametrize(
    ("needed", "needing"),
    DEPENDENCIES,
)
def test_down_stops_a_service_before_what_it_needs(needed: str, needing: str) -> None:
    stop_order = _names(tuple(reversed(every_service())))  # what `down` does
    assert stop_order.index(needing) < stop_order.index(needed), stop_order


def test_a_networked_metastore_admits_concurrent_writers_an_embedded_one_does_not() -> None:
    assert profile_named("local").metastore_writers == 1
    assert profile_named("cluster").metastore_writers > 1


def test_an_unknown_profile_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown stack profile 'kubernetes'"):
        profile_named("kubernetes")


@pytest.mark.parametrize("name", ["local", "cluster"])
def test_no_two_services_of_a_profile_claim_one_port(name: str) -> None:
    ports = Counter(port for service in profile_named(name).all_services for port in service.ports)
    assert ports and max(ports.values()) == 1, [port for port, count in ports.items() if count > 1]


def test_only_airflows_api_server_claims_8080_in_the_cluster_profile() -> None:
    cluster: Profile = profile_named("cluster")
    assert [service.name for service in cluster.all_services if 8080 in service.ports] == ["airflow-api-server"]
    portless = [service.name for service in cluster.all_services if not service.ports]
    assert portless == ["airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
