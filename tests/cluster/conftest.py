"""The cluster profile's tests (`make test-cluster`): the stack of `make stack-up STACK=cluster`, Airflow's separate
components started here unless they run, and one DAG run on the clusters that the tests then inspect."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stack.demo import AIRFLOW, AirflowApi, admin_password, follow, trigger, wait_for_dag

NUM_SAMPLES = 4
MAX_EPOCHS = 3


@pytest.fixture(scope="session")
def cluster_stack(stack_env: dict[str, str]) -> dict[str, str]:
    """The cluster profile's environment, every one of its services healthy (a missing one is a failure)."""
    from stack.config import stack_paths
    from stack.profiles import profile_named

    if stack_env.get("MLOPS_STACK_PROFILE") != "cluster":
        pytest.fail("the cluster tests need the cluster profile: run `make test-cluster`", pytrace=False)
    paths = stack_paths()
    for service in profile_named("cluster").services:
        if service.running_pid(paths) is None or not service.is_healthy(stack_env):
            pytest.fail(
                f"{service.name} of the cluster profile is not running/healthy ({service.url}); log: "
                f"{service.log_file(paths)}. Run `make stack-up STACK=cluster`.",
                pytrace=False,
            )
    return stack_env


@pytest.fixture(scope="session")
def airflow_api(cluster_stack: dict[str, str]) -> Iterator[AirflowApi]:
    """Airflow's api-server, scheduler, dag-processor and triggerer: started here unless they run (and then stopped)."""
    from stack.config import stack_paths
    from stack.profiles import profile_named

    paths = stack_paths()
    components = profile_named("cluster").airflow
    started = [service for service in components if service.running_pid(paths) is None]
    for service in components:
        service.start(paths, cluster_stack)
    api = AirflowApi(AIRFLOW, "admin", admin_password())
    wait_for_dag(api)
    yield api
    for service in reversed(started):
        service.stop(paths)


@pytest.fixture(scope="session")
def cluster_run(airflow_api: AirflowApi, settings: Any, s3_client: Any) -> dict[str, Any]:
    """One `mlops_training` run on a fresh copy of the penguins data, on the clusters."""
    from tests.support.dag_runs import penguins_run

    conf = penguins_run(settings.lake, s3_client, "cluster", NUM_SAMPLES, MAX_EPOCHS)
    dataset = conf["dataset"]
    run_id = trigger(airflow_api, conf)
    state = follow(airflow_api, [run_id], timeout_s=1800)[run_id]
    return {"dataset": dataset, "conf": conf, "run_id": run_id, "state": state}
