"""The stack's MLflow security against its real server (stack/mlflow_auth.py, MLflow's basic-auth app): a client
without a login, or with a wrong password, is refused everything but /health; the prediction service's user reads the
champion and downloads its artifacts but can move no alias, tag or delete nothing; the pipeline's user can; setting
the users up again (a second `make stack-up`) changes nothing.

These requests go to the shared stack's MLflow on 127.0.0.1:5000 and create one throw-away registered model."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

from ml.clients import mlflow_client, mlflow_fluent, use_mlflow_login
from ml.preflight import ServiceUnavailable, require_mlflow
from ml.settings import MlflowSettings
from stack.config import StackPaths, mlflow_user_settings
from stack.mlflow_auth import prepare_stack_users


@pytest.fixture(scope="module")
def paths(stack_env: dict[str, str], mlflow_service: None) -> StackPaths:
    return StackPaths(Path(stack_env["MLOPS_STACK_DIR"]))


@pytest.fixture(scope="module")
def serving(paths: StackPaths) -> MlflowSettings:
    """The prediction service's login (what `python -m stack run --as serving` gives it: tests/unit/stack)."""
    return mlflow_user_settings(paths, "serving")


@pytest.fixture(scope="module")
def champion(settings: Any, mlflow_service: None) -> Iterator[tuple[str, str]]:
    """A registered model whose version 1 (one artifact) is its champion, made by the pipeline's user."""
    import mlflow

    name = f"test-auth-{uuid.uuid4().hex[:10]}"
    client = mlflow_client(settings.mlflow)
    with mlflow_fluent(settings.mlflow), tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "weights.txt").write_text("42")
        experiment_id = client.create_experiment(f"/tests/{name}")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_artifact(str(Path(tmp) / "weights.txt"), "model")
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    yield name, str(version.version)
    client.delete_registered_model(name)


def _refused(call: Any, code: int) -> RestException:
    with pytest.raises(MlflowException) as refused:
        call()
    assert f"error code {code}" in str(refused.value), str(refused.value)
    return refused.value


def test_a_client_without_a_login_is_refused_everything_but_health(settings: Any, champion: tuple[str, str]) -> None:
    name, version = champion
    base = settings.mlflow.tracking_uri
    assert requests.get(f"{base}/health", timeout=10).status_code == 200
    for path in ("/api/2.0/mlflow/experiments/search?max_results=1", "/api/2.0/mlflow/registered-models/search"):
        assert requests.get(f"{base}{path}", timeout=10).status_code == 401
    created = requests.post(f"{base}/api/2.0/mlflow/users/create", json={"username": "x", "password": "y"}, timeout=10)
    assert created.status_code == 401
    # Moving the alias without credentials (the "done when"), through MLflow's own client.
    use_mlflow_login(MlflowSettings(base))
    anonymous = MlflowClient(tracking_uri=base, registry_uri=base)
    _refused(lambda: anonymous.set_registered_model_alias(name, "champion", version), 401)
    with pytest.raises(ServiceUnavailable, match="refused a client without a login"):
        require_mlflow(MlflowSettings(base))


def test_a_wrong_password_is_refused(settings: Any, champion: tuple[str, str]) -> None:
    name, version = champion
    wrong = MlflowSettings(settings.mlflow.tracking_uri, "pipeline", uuid.uuid4().hex)
    _refused(lambda: mlflow_client(wrong).set_registered_model_alias(name, "champion", version), 401)
    with pytest.raises(ServiceUnavailable, match="refused the login of user 'pipeline'"):
        require_mlflow(wrong)


def test_serving_reads_the_champion_and_its_artifacts_and_changes_nothing(
    serving: MlflowSettings, champion: tuple[str, str]
) -> None:
    import mlflow

    name, version = champion
    client = mlflow_client(serving)
    assert str(client.get_model_version_by_alias(name, "champion").version) == version
    with mlflow_fluent(serving), tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}",
            dst_path=tmp,
            tracking_uri=serving.tracking_uri,
            registry_uri=serving.tracking_uri,
        )
        assert (Path(local) / "weights.txt").read_text() == "42"
    _refused(lambda: client.set_registered_model_alias(name, "champion", version), 403)
    _refused(lambda: client.delete_registered_model_alias(name, "champion"), 403)
    _refused(lambda: client.set_model_version_tag(name, version, "gate.decision", "promote"), 403)
    _refused(lambda: client.delete_model_version(name, version), 403)
    _refused(lambda: client.create_model_version(name, "s3://lake/elsewhere", None), 403)
    assert str(client.get_model_version_by_alias(name, "champion").version) == version


def test_the_pipeline_moves_the_alias(settings: Any, champion: tuple[str, str]) -> None:
    name, version = champion
    client = mlflow_client(settings.mlflow)
    client.set_registered_model_alias(name, "candidate", version)
    assert str(client.get_model_version_by_alias(name, "candidate").version) == version
    client.delete_registered_model_alias(name, "candidate")


def test_setting_the_users_up_again_changes_nothing(paths: StackPaths, serving: MlflowSettings) -> None:
    assert prepare_stack_users(paths) == []
    require_mlflow(serving)  # the passwords were set again to the same ones
