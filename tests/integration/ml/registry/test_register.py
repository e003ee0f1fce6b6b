"""Registration against the real MLflow server and S3 server: a registered version is an MLflow pyfunc that predicts
like the offline path, registration is idempotent per DAG run, a failure leaves no half-registered version, and
`python -m ml register` reads its evaluation from S3."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.clients import mlflow_fluent
from ml.experiments import get_or_create_experiment
from ml.predictor import load_version
from ml.registry.context import RegistryContext
from ml.registry.conventions import REGISTRATION_TAG, registered_model_name
from ml.registry.promote import register_and_promote
from ml.registry.register import register_model, versions_of_run
from ml.settings import PROJECT_ROOT
from tests.support.stand_in_model import make_spec, raw_rows


def test_a_registered_version_is_a_pyfunc_that_predicts_like_the_offline_path(
    context: RegistryContext, dataset: str, stand_in: Callable[..., dict[str, Any]], settings: Any
) -> None:
    import mlflow
    import pandas as pd

    from ml.models import load_model, predict

    name = registered_model_name(dataset, "classification")
    result = register_model(stand_in(dataset=dataset, quality="good"), context, dag_id="d", dag_run_id="r-1")
    assert (result["model_name"], result["version"], result["created"]) == (name, "1", True)
    rows = raw_rows(20, seed=5)
    with mlflow_fluent(settings.mlflow):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/1")
        served = pyfunc.predict(pd.DataFrame(rows, columns=["x1", "x2", "color"]))
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=tempfile.mkdtemp()))
    spec = make_spec()
    outputs, probabilities = predict(load_model(local / "artifacts" / "checkpoint"), spec.transform(rows))
    assert list(served["prediction"]) == spec.decode_labels(outputs)
    assert np.allclose(served[["probability_no", "probability_yes"]].to_numpy(), probabilities, atol=1e-6)
    assert sorted(p.name for p in (local / "artifacts").iterdir()) == [
        "checkpoint",
        "evaluation.json",
        "feature_spec.json",
    ]
    assert sorted(p.name for p in (local / "artifacts" / "checkpoint").iterdir()) == [
        "model_config.json",
        "model_state.pt",
    ]

    # ml.predictor loads the same version (tensors and JSON only) with its tags and aliases.
    loaded = load_version(settings.mlflow, name, "challenger")
    assert (loaded.version, loaded.aliases, loaded.lineage["dag_run_id"]) == ("1", ["challenger"], "r-1")
    assert loaded.predictor.predict_rows(rows)[0] == spec.decode_labels(outputs)


def test_registration_is_idempotent_per_dag_run(
    context: RegistryContext, dataset: str, stand_in: Callable[..., dict[str, Any]], mlflow_client: Any
) -> None:
    name = registered_model_name(dataset, "classification")
    # The tuning run (finished) is the parent: the model is logged into it.
    parent = mlflow_client.create_run(get_or_create_experiment(mlflow_client, dataset), run_name="tune")
    mlflow_client.set_terminated(parent.info.run_id)
    evaluation = {**stand_in(dataset=dataset, quality="medium"), "mlflow_parent_run_id": parent.info.run_id}
    run_id = "manual__it's-retried"  # a quote too: the run's version must still be found
    first = register_model(evaluation, context, dag_id="d", dag_run_id=run_id, code_version="x")
    again = register_model(evaluation, context, dag_id="d", dag_run_id=run_id, code_version="x")
    assert (first["created"], again["created"], again["version"]) == (True, False, first["version"])
    assert len(versions_of_run(mlflow_client, name, run_id)) == 1
    assert first["run_id"] == parent.info.run_id and first["tags"]["mlflow_parent_run_id"] == parent.info.run_id
    assert mlflow_client.get_run(parent.info.run_id).info.status == "FINISHED"

    # A version that a crashed attempt left pending is removed and redone, not reused.
    leftover = mlflow_client.create_model_version(
        name,
        source=first["source"],
        model_id=first["source"].removeprefix("models:/"),
        tags={"dag_run_id": "crashed-run", REGISTRATION_TAG: "pending"},
    )
    mlflow_client.set_registered_model_alias(name, "challenger", leftover.version)
    redone = register_model(evaluation, context, dag_id="d", dag_run_id="crashed-run", code_version="x")
    versions = versions_of_run(mlflow_client, name, "crashed-run")
    assert [v.version for v in versions] == [redone["version"]] and redone["version"] != leftover.version
    assert str(mlflow_client.get_model_version_by_alias(name, "challenger").version) == redone["version"]


class FailingAliases:
    """The registry's MLflow client, except that moving an alias fails."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def set_registered_model_alias(self, *args: Any) -> None:
        raise RuntimeError("registry hiccup")


def test_a_failure_after_the_version_exists_leaves_no_half_registered_model(
    settings: Any, context: RegistryContext, dataset: str, stand_in: Callable[..., dict[str, Any]], mlflow_client: Any
) -> None:
    name = registered_model_name(dataset, "classification")
    evaluation = stand_in(dataset=dataset)
    register_and_promote(evaluation, context, dag_id="d", dag_run_id="ok-run", code_version="x")

    failing = RegistryContext(mlflow=settings.mlflow, s3=settings.s3, lake=settings.lake, kafka=settings.kafka)
    failing.__dict__["client"] = FailingAliases(context.client)
    with pytest.raises(RuntimeError, match="registry hiccup"):
        register_model(evaluation, failing, dag_id="d", dag_run_id="failing-run", code_version="x")
    assert versions_of_run(mlflow_client, name, "failing-run") == []
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(mlflow_client.get_model_version_by_alias(name, "challenger").version) == "1"


def test_register_command_reads_the_evaluation_from_s3(
    dataset: str,
    stand_in: Callable[..., dict[str, Any]],
    s3_client: Any,
    unique_prefix: str,
    settings: Any,
    stack_env: dict[str, str],
    mlflow_client: Any,
) -> None:
    from ml.lineage import code_version

    evaluation = stand_in(dataset=dataset)
    bucket, key = settings.lake.lake_bucket, f"{unique_prefix}/evaluation.json"
    s3_client.put_object(Bucket=bucket, Key=key, Body=json.dumps(evaluation).encode())
    command = [sys.executable, "-m", "ml", "register", "--evaluation", f"s3://{bucket}/{key}", "--dag-id", "cli"]
    result = subprocess.run(
        [*command, "--dag-run-id", "cli-1", "--margin", "0.01"],
        cwd=PROJECT_ROOT,
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert (printed["version"], printed["decision"], printed["created"]) == ("1", "first_model", True)
    tags = mlflow_client.get_model_version(printed["model_name"], "1").tags
    assert tags["code_version"] == code_version() and tags["dag_run_id"] == "cli-1"
