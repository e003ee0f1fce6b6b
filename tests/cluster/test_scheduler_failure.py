"""The Airflow scheduler killed while a DAG run is in its tune task (cluster profile: LocalExecutor, so the scheduler's
process group holds the executor's workers and the task processes they supervise). After the scheduler is started
again, the run finishes: the killed task is found by its missing heartbeat (the cluster profile's
`task_instance_heartbeat_timeout`) and retried, the retried search resumes from its signed state in S3, and the run
registers one model version whose gate decision is recorded; the champion alias never names an ungated version.
(The fault matrix's other cells: tests/integration/test_fault_matrix.py and tests/cluster/test_worker_failures.py.)"""

from __future__ import annotations

from typing import Any

from ml.clients import mlflow_client
from ml.predictor import ungated_reason
from ml.registry.conventions import registered_model_name
from ml.settings import Settings
from stack.cluster import AIRFLOW_COMPONENTS
from stack.config import stack_paths
from stack.demo import AirflowApi, follow, trigger
from stack.process import signal_group, wait_until
from tests.support.dag_runs import penguins_run

SCHEDULER = next(service for service in AIRFLOW_COMPONENTS if service.name == "airflow-scheduler")
KILLED_TASK = "tune_models"


def _task_states(api: AirflowApi, run_id: str) -> dict[str, str]:
    answer = api.request("GET", f"/api/v2/dags/mlops_training/dagRuns/{run_id}/taskInstances?limit=100")
    return {ti["task_id"]: str(ti["state"]) for ti in answer["task_instances"]}


def test_a_run_survives_its_scheduler_killed_mid_task(
    airflow_api: AirflowApi, cluster_stack: dict[str, str], settings: Settings, s3_client: Any
) -> None:
    import signal

    paths = stack_paths()
    conf = penguins_run(settings.lake, s3_client, "scheduler", 2, 3)
    run_id = trigger(airflow_api, conf)
    assert wait_until(lambda: _task_states(airflow_api, run_id).get(KILLED_TASK) == "running", 900, 1.0), (
        f"{KILLED_TASK} never ran: {_task_states(airflow_api, run_id)}"
    )
    pid = SCHEDULER.running_pid(paths)
    assert pid is not None
    signal_group(pid, signal.SIGKILL)
    try:
        assert wait_until(lambda: SCHEDULER.running_pid(paths) is None, 30), "the scheduler is still alive"
    finally:
        SCHEDULER.start(paths, cluster_stack)

    state = follow(airflow_api, [run_id], timeout_s=1500)[run_id]
    states = _task_states(airflow_api, run_id)
    assert state == "success", states
    tries = airflow_api.request("GET", f"/api/v2/dags/mlops_training/dagRuns/{run_id}/taskInstances/{KILLED_TASK}")[
        "try_number"
    ]
    print(f"\n{KILLED_TASK} finished on try {tries} after the scheduler was killed; task states: {states}")

    model = registered_model_name(conf["dataset"], conf["task"])
    client = mlflow_client(settings.mlflow)
    versions = client.search_model_versions(f"name = '{model}'")
    assert len(versions) == 1, "one version registered, none half-registered by the killed attempt"
    assert versions[0].tags.get("gate.decision"), versions[0].tags
    champion = client.get_model_version_by_alias(model, "champion")
    assert ungated_reason(dict(champion.tags)) is None
