"""DAG integrity: the DagBag imports cleanly, tasks are wired as documented, and the layering rules hold."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "ray", "pyspark", "mlflow", "boto3", "kafka", "pandas", "numpy", "sklearn", "optuna"}


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dagbag_imports_without_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert {"mlops_training", "raw_data_watch"} <= set(dagbag.dags)


def test_training_dag_wiring(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["mlops_training"]
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "validate_params": ["wait_for_raw_data"],
        "wait_for_raw_data": ["ingest_raw_data"],
        "ingest_raw_data": ["check_for_existing_model"],
        "check_for_existing_model": ["preprocess_with_spark", "reuse_existing_model"],
        "preprocess_with_spark": ["tune_models"],
        "tune_models": ["register_best_model"],
        "register_best_model": ["publish_run_summary"],
        "reuse_existing_model": ["publish_run_summary"],
        "publish_run_summary": [],
    }
    assert dag.catchup is False
    # Unpausing must not start a run for the last missed 03:00 (it would wait on the default raw_uri for hours).
    assert dag.start_date is None and "run_immediately=False" in repr(dag.timetable)
    assert set(dag.tags) >= {"mlops"}
    assert dag.task_dict["wait_for_raw_data"].deferrable is True  # type: ignore[attr-defined]


def test_retries_and_callbacks_are_set(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["mlops_training"]
    for task in dag.tasks:
        if task.task_id == "validate_params":
            assert task.retries == 0, "a bad param must fail at once, not after retries"
            continue
        assert task.retries >= 1, task.task_id
        assert task.on_failure_callback, task.task_id


def test_params_have_schemas_that_reject_bad_values(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["mlops_training"]
    dag.params.validate()  # the defaults are valid
    bad_values = [
        ("task", "clustering"),
        ("num_samples", 0),
        ("raw_uri", "http://x/y"),
        ("dataset", "9 bad"),
        ("promotion_margin", -1),
        ("max_concurrent_trials", "two"),
    ]
    for name, bad in bad_values:
        with pytest.raises(ParamValidationError):
            dag.params.get_param(name).resolve(bad)
    assert dag.params.get_param("dataset").resolve("cars") == "cars"


def test_dag_files_import_nothing_heavy_at_module_level() -> None:
    for path in (REPO / "dags").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; imports inside tasks are fine
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & HEAVY, f"{path.name} imports {names} at module level"


def test_ml_never_imports_airflow() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "ml").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "airflow" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "airflow")
    ]
    assert offenders == []


def test_parsing_the_dags_loads_no_heavy_module() -> None:
    """Parse the DAG folder in a fresh interpreter and list what got imported (boto3 excepted: the Amazon
    provider's S3 sensor imports it itself)."""
    code = (
        "import sys; from airflow.dag_processing.dagbag import DagBag; "
        f"b = DagBag(dag_folder={str(REPO / 'dags')!r}); assert not b.import_errors, b.import_errors; "
        f"print(sorted(m for m in {sorted(HEAVY - {'boto3'})!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
