"""dags/mlops_training.py, DAG integrity: the DagBag imports cleanly, tasks are wired as documented (data passes as
XComArgs, which add edges), params reject bad values, every task uses a connection the stack creates, and parsing
imports nothing heavy. (The layering rules, e.g. that `ml` never imports Airflow: tests/unit/test_architecture.py.)"""

from __future__ import annotations

import ast
import copy
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
HEAVY = {"torch", "ray", "pyspark", "mlflow", "boto3", "kafka", "pandas", "numpy", "sklearn", "optuna"}


@pytest.fixture(scope="module")
def dag(dagbag: Any) -> Any:
    return dagbag.dags["mlops_training"]


def test_dagbag_imports_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert {"mlops_training", "raw_data_events"} <= set(dagbag.dags)


def test_training_dag_wiring(dag: Any) -> None:
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "validate_params": ["wait_for_raw_data"],
        "wait_for_raw_data": ["ingest_raw_data"],
        # The snapshot id (an XComArg) goes to the branch, Spark and tuning; the whole result to the summary.
        "ingest_raw_data": ["check_for_existing_model", "preprocess_with_spark", "publish_run_summary", "tune_models"],
        # existing_model (an XComArg) goes to the summary.
        "check_for_existing_model": ["preprocess_with_spark", "publish_run_summary", "reuse_existing_model"],
        "preprocess_with_spark": ["tune_models"],
        # The search result goes to registration and to the summary.
        "tune_models": ["publish_run_summary", "register_best_model"],
        "register_best_model": ["publish_run_summary"],
        "reuse_existing_model": ["publish_run_summary"],
        "publish_run_summary": [],
    }
    assert dag.catchup is False
    assert dag.start_date is None
    assert set(dag.tags) >= {"mlops"}
    assert dag.max_active_runs == 2
    assert dag.render_template_as_native_obj is True, "XComs and params reach operators as dicts and ints"
    assert dag.task_dict["wait_for_raw_data"].deferrable is True
    assert dag.task_dict["preprocess_with_spark"].pool == "spark_metastore"


def _xcom_source(value: Any) -> tuple[str, str]:
    """(task id, key) of an XComArg."""
    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    assert isinstance(value, PlainXComArg), f"{value!r} is not an XComArg"
    return value.operator.task_id, value.key


def test_data_passes_between_tasks_as_xcom_args(dag: Any) -> None:
    tasks = dag.task_dict
    snapshot_id = ("ingest_raw_data", "snapshot_id")
    assert _xcom_source(tasks["check_for_existing_model"].snapshot_id) == snapshot_id
    assert _xcom_source(tasks["preprocess_with_spark"].snapshot_id) == snapshot_id
    assert _xcom_source(tasks["tune_models"].snapshot_id) == snapshot_id
    assert _xcom_source(tasks["register_best_model"].search_result) == ("tune_models", "return_value")
    summary = tasks["publish_run_summary"]
    assert {
        name: _xcom_source(getattr(summary, name)) for name in ("snapshot", "search", "registered", "existing_model")
    } == {
        "snapshot": ("ingest_raw_data", "return_value"),
        "search": ("tune_models", "return_value"),
        "registered": ("register_best_model", "return_value"),
        "existing_model": ("check_for_existing_model", "existing_model"),
    }
    assert tasks["ingest_raw_data"].multiple_outputs is True, "snapshot_id is pushed as an XCom of its own"
    for task in dag.tasks:
        for field in task.template_fields:
            value = getattr(task, field, None)
            assert not (isinstance(value, str) and "xcom_pull" in value), f"{task.task_id}.{field} pulls by task id"


def test_the_summary_runs_on_either_branch(dag: Any) -> None:
    """The branch skips what neither branch leads to; the summary is downstream of both (though it is also directly
    downstream of the branch, through its existing_model XComArg), so it is never skipped that way, and its trigger
    rule lets it run after the skipped training tasks."""
    branch = dag.task_dict["check_for_existing_model"]
    for followed in (branch.train_task_id, branch.reuse_task_id):
        assert "publish_run_summary" in dag.task_dict[followed].get_flat_relative_ids(upstream=False), followed
    assert dag.task_dict["publish_run_summary"].trigger_rule == "none_failed_min_one_success"


def test_the_lake_bucket_is_the_airflow_variable_or_lake(dag: Any) -> None:
    from jinja2 import Template

    templated = ("ingest_raw_data", "preprocess_with_spark", "tune_models", "register_best_model")
    templates = {dag.task_dict[task_id].lake_bucket for task_id in templated}
    assert len(templates) == 1, templates
    assert all("lake_bucket" in dag.task_dict[task_id].template_fields for task_id in templated)
    [template] = templates

    def render(variables: dict[str, str]) -> str:
        var = SimpleNamespace(value=SimpleNamespace(get=lambda name, default=None: variables.get(name, default)))
        return Template(template).render(var=var)

    assert render({}) == "lake"
    assert render({"mlops_lake_bucket": "prod-lake"}) == "prod-lake"


def test_retries_and_callbacks_are_set(dag: Any) -> None:
    from mlops_airflow import callbacks

    for task in dag.tasks:
        if task.task_id == "validate_params":
            assert task.retries == 0, "a bad param must fail at once, not after retries"
            continue
        assert task.retries >= 1, task.task_id
        assert callbacks.task_failed in task.on_failure_callback, task.task_id
        assert callbacks.task_started in task.on_execute_callback, task.task_id
    assert (dag.on_failure_callback, dag.on_success_callback) == (callbacks.run_failed, callbacks.run_succeeded)


def test_params_have_schemas_that_reject_bad_values(dag: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag.params.validate()  # the defaults are valid
    bad_values = [
        ("task", "clustering"),
        ("num_samples", 0),
        ("raw_uri", "http://x/y"),
        ("dataset", "9 bad"),
        ("promotion_margin", -1),
        ("max_concurrent_trials", "two"),
        ("workers_per_trial", 0),
        ("gpus_per_worker", -1),
        ("cache_mb", -1),
    ]
    for name, bad in bad_values:
        with pytest.raises(ParamValidationError):
            dag.params.get_param(name).resolve(bad)
    assert dag.params.get_param("dataset").resolve("cars") == "cars"
    assert dag.params.get_param("cache_mb").resolve(0) == 0  # 0: always stream
    assert dag.params.get_param("raw_uri").resolve("s3a://raw/cars/") == "s3a://raw/cars/"


def _fresh_param(dag: Any, name: str) -> Any:
    """A copy of the DAG's param: `resolve` keeps the value it checked, and the DAG is shared by the module."""
    return copy.deepcopy(dag.params.get_param(name))


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("raw_uri", "s3://raw/penguins/\n"),  # `$` alone matches before a trailing newline
        ("raw_uri", "s3://raw/pen\tguins/"),
        ("raw_uri", "s3://raw/a\x00b"),
        ("dataset", "cars\n"),
        ("dataset", "c" * 64),
        ("target", "species\n"),
        ("target", "spe\ncies"),
        ("target", "a\x00b"),
        ("target", "a\x85b"),
        ("target", "a\u2028b"),
        ("target", ""),
        ("target", "t" * 129),
    ],
)
def test_name_params_refuse_line_breaks_and_control_characters(dag: Any, name: str, bad: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    from ml.ingest.config import check_ingest_names

    with pytest.raises(ParamValidationError):
        _fresh_param(dag, name).resolve(bad)
    names = {"raw_uri": "s3://raw/penguins/", "dataset": "penguins", "target": "species", name: bad}
    with pytest.raises(ValueError, match=name):  # the same rule on the ml side
        check_ingest_names(**names, forbidden_buckets=())


@pytest.mark.parametrize(
    ("name", "good"),
    [
        ("raw_uri", "s3://raw/penguins/"),
        ("raw_uri", "s3a://my.bucket-1/a b/ü.csv"),
        ("dataset", "e2e_1234abcd"),
        ("dataset", "My-Data"),
        ("target", "0x10"),
        ("target", "Miles_per_Gallon"),
        ("target", "Größe (cm)"),
        ("target", "t" * 128),
    ],
)
def test_name_params_accept_names_that_need_no_escaping(dag: Any, name: str, good: str) -> None:
    from ml.ingest.config import check_ingest_names

    assert _fresh_param(dag, name).resolve(good) == good
    names = {"raw_uri": "s3://raw/penguins/", "dataset": "penguins", "target": "species", name: good}
    check_ingest_names(**names, forbidden_buckets=())


def test_name_param_patterns_are_the_ml_checks_patterns(dag: Any) -> None:
    """The DAG file imports no `ml` at parse time, so it spells the patterns out: they must stay ml's."""
    from ml.ingest.config import DATASET_PATTERN, RAW_URI_PATTERN, TARGET_PATTERN

    for name, pattern in (("raw_uri", RAW_URI_PATTERN), ("dataset", DATASET_PATTERN), ("target", TARGET_PATTERN)):
        assert dag.params.get_param(name).schema["pattern"] == f"^{pattern}(?!\\n)$", name


@pytest.mark.parametrize("value", ["0x10", "007", "True", "None", "1e3", "[1]", "'q'", "it's", "a\\b", "😀 x"])
def test_names_reach_the_operators_as_the_exact_strings(dag: Any, value: str) -> None:
    """Native rendering literal_evals what it renders: "0x10" must not become 16, nor "True" a bool."""
    env = dag.get_template_env()
    assert dag.render_template_as_native_obj is True
    context = {"params": {"raw_uri": "s3://raw/x/", "task": "classification", "dataset": value, "target": value}}
    ingest = dag.task_dict["ingest_raw_data"]
    assert ingest.render_template(ingest.target, context, jinja_env=env) == value
    for task_id in ("ingest_raw_data", "check_for_existing_model", "preprocess_with_spark", "tune_models"):
        task = dag.task_dict[task_id]
        rendered = task.render_template(task.dataset, context, jinja_env=env)
        assert rendered == value and isinstance(rendered, str), task_id


def test_raw_data_must_not_come_from_the_lake_or_mlflows_bucket(dag: Any) -> None:
    from jinja2 import Template

    task = dag.task_dict["validate_params"]
    var = SimpleNamespace(value=SimpleNamespace(get=lambda name, default=None: default))
    assert {name: Template(t).render(var=var) for name, t in task.op_kwargs.items()} == {
        "lake_bucket": "lake",
        "mlflow_bucket": "mlflow",
    }
    params = {"raw_uri": "s3://raw/penguins/", "dataset": "penguins", "target": "species"}
    params |= {"search_space": None, "num_samples": 8, "max_concurrent_trials": 2}
    buckets = {"lake_bucket": "prod-lake", "mlflow_bucket": "prod-mlflow"}
    for bucket in ("prod-lake", "prod-mlflow"):
        for uri in (f"s3://{bucket}/datasets/penguins/", f"s3a://{bucket}/x.csv", f"s3://{bucket}"):
            with pytest.raises(ValueError, match=f"bucket '{bucket}'"):
                task.python_callable(**buckets, params={**params, "raw_uri": uri})
    assert task.python_callable(**buckets, params=params)["dataset"] == "penguins"
    assert task.python_callable(**buckets, params={**params, "raw_uri": "s3://lake-raw/p/"})["dataset"] == "penguins"


def test_a_search_space_param_never_reads_a_file_of_the_worker(dag: Any, tmp_path: Path) -> None:
    local = tmp_path / "space.json"
    local.write_text('{"lr": 0.01}')
    task = dag.task_dict["validate_params"]
    params = {"raw_uri": "s3://raw/penguins/", "dataset": "penguins", "target": "species"}
    params |= {"num_samples": 8, "max_concurrent_trials": 2}
    buckets = {"lake_bucket": "lake", "mlflow_bucket": "mlflow"}
    for value in (str(local), "/etc/passwd"):
        with pytest.raises(ValueError, match="nor an s3:// URI"):
            task.python_callable(**buckets, params={**params, "search_space": value})
    assert task.python_callable(**buckets, params={**params, "search_space": "small"})["dataset"] == "penguins"


def test_every_task_uses_a_connection_that_the_stack_creates(dag: Any, tmp_path: Path) -> None:
    """The operators' connection ids (their defaults, as the DAG uses them) are the ones `make stack-up` imports
    (stack/airflow_home.py), except the optional ray_default (no connection: a local Ray)."""
    from stack.airflow_home import connections_from_environment

    env = {
        "MLOPS_STACK_DIR": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "key",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SPARK_MASTER": "local[*]",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    }
    created = set(connections_from_environment(env)) | {"ray_default"}
    used = {
        (task.task_id, value)
        for task in dag.tasks
        for name, value in vars(task).items()
        if name.endswith("conn_id") and isinstance(value, str)
    }
    assert {value for _, value in used} <= created, used
    assert ("preprocess_with_spark", "spark_default") in used and ("ingest_raw_data", "aws_default") in used


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


def test_parsing_the_dags_loads_no_heavy_module() -> None:
    """Parse the DAG folder in a fresh interpreter and list what got imported (boto3 excepted: the Amazon
    provider's S3 sensor imports it itself)."""
    code = (
        "import sys; from airflow.dag_processing.dagbag import DagBag; "
        f"b = DagBag(dag_folder={str(REPO / 'dags')!r}); "
        "assert not b.import_errors, b.import_errors; "
        f"print(sorted(m for m in {sorted(HEAVY - {'boto3'})!r} if m in sys.modules))"
    )
    # As the DAG processor runs: the repository and plugins/ importable (Airflow adds plugins/ itself).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("now", ["03:00:01", "03:38:49", "05:23:00", "12:00:00", "02:59:59"])
def test_unpausing_never_starts_a_run_for_the_last_missed_slot(
    dagbag: Any, monkeypatch: pytest.MonkeyPatch, now: str
) -> None:
    """The first scheduled run after unpausing is the next 03:00 UTC, at any time of day: a run for the missed slot
    would wait hours on the default raw_uri and hold one of the two run seats (an e2e run at 03:38 UTC saw it)."""
    import datetime
    import json

    import airflow.timetables.trigger
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    moment = datetime.datetime.fromisoformat(f"2026-12-02T{now}+00:00")
    monkeypatch.setattr(airflow.timetables.trigger, "utcnow", lambda: moment)
    # The timetable as the scheduler gets it: serialized with the DAG (JSON) and decoded on its side.
    schedule = decode_timetable(json.loads(json.dumps(encode_timetable(dagbag.dags["mlops_training"].timetable))))
    info = schedule.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None, catchup=False)
    )
    assert info is not None and info.run_after > moment
    assert (info.run_after.hour, info.run_after.minute) == (3, 0)


def test_tasks_declare_the_lineage_assets_they_read_and_write(dagbag: Any) -> None:
    """raw -> snapshot -> features -> model version, as Airflow's asset views show it (tests/e2e checks the events)."""
    tasks = dagbag.dags["mlops_training"].task_dict

    def names(assets: list[Any]) -> list[str]:
        return [asset.name for asset in assets]

    lineage = {task_id: (names(tasks[task_id].inlets), names(tasks[task_id].outlets)) for task_id in tasks}
    assert lineage["ingest_raw_data"] == (["raw_uploads"], ["mlops_snapshots"])
    assert lineage["preprocess_with_spark"] == (["mlops_snapshots"], ["mlops_features"])
    assert lineage["tune_models"] == (["mlops_features"], [])
    assert lineage["register_best_model"] == (["mlops_features"], ["mlops_model_versions"])
