"""Registration: the evaluated best model becomes a new version of its registered model, with lineage tags.

A model version is an MLflow pyfunc "model from code": the code file `ml/serve/pyfunc_model.py` plus artifacts
(`checkpoint/` with model_state.pt + model_config.json, `feature_spec.json`, `evaluation.json`). Nothing is pickled:
weights load with `torch.load(weights_only=True)`, the spec is JSON, and the pyfunc needs the project's `ml` package
importable where it is loaded (the serving image has it).

Registration is idempotent per DAG run: the version carries a `dag_run_id` tag; a retried task finds its complete
version and returns it, and a version left half-registered by a crashed attempt (tag `mlops.registration=pending`)
is deleted and redone. If anything fails after the version was created, that version is deleted (which also removes
any alias pointing at it). The slow upload happens outside the alias lock (the look for a complete version before it
only reads); the clean-up of pending versions, the new version, its alias and tags happen under it, each write
fenced by `AliasLock.ensure_held()`. A registration whose lock was lost (taken over after it expired) writes nothing
more: its new version stays pending, and the next attempt of its DAG run deletes it under the lock.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.experiments import get_or_create_experiment, quoted
from ml.json_values import is_finite_number
from ml.predictor import TabularPredictor, alias_version, output_frame
from ml.registry.context import RegistryContext, RegistryError
from ml.registry.conventions import (
    CHALLENGER,
    CHAMPION,
    CHECKPOINT_ARTIFACT,
    EVALUATION_ARTIFACT,
    FEATURE_SPEC_ARTIFACT,
    LINEAGE_TAGS,
    MODEL_ARTIFACT_NAME,
    PYFUNC_CODE_FILE,
    REGISTRATION_TAG,
    TEST_METRIC_TAG_PREFIX,
    registered_model_name,
)
from ml.storage import S3Uri, read_json

if TYPE_CHECKING:
    from ml.registry.lock import AliasLock

log = logging.getLogger(__name__)

EVALUATION_KEYS = ("dataset", "snapshot_id", "task", "metric", "test_metrics", "checkpoint_uri", "feature_spec_uri")
# MLflow keeps a tag value of up to 8000 characters; a longer trigger event is replaced by its source.
TRIGGER_EVENT_MAX_CHARS = 4000


def load_evaluation(location: str, s3_client: Any) -> dict[str, Any]:
    """The evaluation result JSON from a local file or an s3:// URI."""
    if location.startswith(("s3://", "s3a://")):
        data = read_json(S3Uri.parse(location), s3_client)
    else:
        data = json.loads(Path(location).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{location}: the evaluation result is not a JSON object")
    return data


def check_evaluation(evaluation: Mapping[str, Any]) -> None:
    """ValueError naming what an evaluation result lacks for a registration."""
    missing = [key for key in EVALUATION_KEYS if evaluation.get(key) in (None, "")]
    if missing:
        raise ValueError(f"evaluation result lacks {missing} (needs {list(EVALUATION_KEYS)})")
    if not isinstance(evaluation["test_metrics"], Mapping) or not evaluation["test_metrics"]:
        raise ValueError("evaluation result has no test_metrics")


def metric_value(metrics: Mapping[str, Any], metric: str) -> float | None:
    """`metric` from a metrics dict, with or without a split prefix ("accuracy" finds "test_accuracy" and back)."""
    from ml.models import base_metric_name

    base = base_metric_name(metric)
    for key in (metric, base, f"test_{base}"):
        if key in metrics and metrics[key] is not None:
            return float(metrics[key])
    return None


def version_tags(
    evaluation: Mapping[str, Any],
    *,
    dag_id: str,
    dag_run_id: str,
    code_version: str,
    git_sha: str,
    is_backfill: bool,
    trigger_event: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The tags of a new version: lineage, test and baseline metrics (`test.X`, `baseline_test.X`), what started the
    DAG run (`trigger`: the event's source, e.g. `drift` or `s3_notification`, and `trigger_event`: the event as
    JSON, or only its source when longer than TRIGGER_EVENT_MAX_CHARS; none for a scheduled or manual run), and
    `mlops.registration=pending` (set to complete once the version is aliased)."""
    from ml.models import base_metric_name

    values: dict[str, Any] = {
        **{key: evaluation.get(key) for key in LINEAGE_TAGS},
        "dag_id": dag_id,
        "dag_run_id": dag_run_id,
        "code_version": code_version,
        "git_sha": git_sha,
        "is_backfill": is_backfill,
        "metric": base_metric_name(str(evaluation["metric"])),
    }
    tags = {key: _tag_value(value) for key, value in values.items() if value is not None}
    if trigger_event:
        source = str(trigger_event.get("source") or "event")
        text = json.dumps(trigger_event, sort_keys=True, separators=(",", ":"))
        if len(text) > TRIGGER_EVENT_MAX_CHARS:  # still JSON, saying what it left out
            text = json.dumps({"source": source, "truncated": True, "length": len(text)})
        tags["trigger"], tags["trigger_event"] = source, text
    baseline = evaluation.get("baseline_test_metrics")
    for prefix, metrics in ((TEST_METRIC_TAG_PREFIX, evaluation["test_metrics"]), ("baseline_test.", baseline)):
        for name, value in (metrics or {}).items():
            if is_finite_number(value):
                tags[f"{prefix}{base_metric_name(name)}"] = repr(float(value))
    tags[REGISTRATION_TAG] = "pending"
    return tags


def _tag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def versions_of_run(client: Any, name: str, dag_run_id: str) -> list[Any]:
    """Versions of `name` registered by this DAG run (normally none or one)."""
    return list(client.search_model_versions(f"name = {quoted(name)} and tags.dag_run_id = {quoted(dag_run_id)}"))


def _ensure_registered_model(client: Any, name: str, evaluation: Mapping[str, Any]) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name,
            tags={"dataset": str(evaluation["dataset"]), "task": str(evaluation["task"])},
            description=f"{evaluation['task']} model for dataset {evaluation['dataset']} (aliases: champion, "
            "challenger; lineage in version tags).",
        )
    except MlflowException as error:
        if "ALREADY_EXISTS" not in str(error.error_code):
            raise


def _fetch_artifacts(evaluation: Mapping[str, Any], into: Path, s3_client: Any) -> tuple[Path, Path]:
    """Copy the model files of the checkpoint and the feature spec from S3 (or local paths) into `into`."""
    from ml.models import MODEL_CONFIG_FILE, MODEL_STATE_FILE

    checkpoint = into / CHECKPOINT_ARTIFACT
    checkpoint.mkdir(parents=True)
    spec_path = into / f"{FEATURE_SPEC_ARTIFACT}.json"
    source, spec_source = str(evaluation["checkpoint_uri"]), str(evaluation["feature_spec_uri"])
    for filename in (MODEL_STATE_FILE, MODEL_CONFIG_FILE):  # the optimizer state stays behind: serving never needs it
        if source.startswith(("s3://", "s3a://")):
            uri = S3Uri.parse(source).join(filename)
            s3_client.download_file(uri.bucket, uri.key, str(checkpoint / filename))
        else:
            shutil.copyfile(Path(source) / filename, checkpoint / filename)
    if spec_source.startswith(("s3://", "s3a://")):
        spec_path.write_text(json.dumps(read_json(S3Uri.parse(spec_source), s3_client), indent=2, sort_keys=True))
    else:
        shutil.copyfile(spec_source, spec_path)
    return checkpoint, spec_path


def _log_pyfunc_model(
    context: RegistryContext, evaluation: Mapping[str, Any], work: Path, *, run_id: str | None, experiment_id: str
) -> Any:
    """Log the checkpoint + spec as a pyfunc model from code into the run; returns MLflow's ModelInfo."""
    import mlflow
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    from ml.clients import mlflow_fluent

    checkpoint, spec_path = _fetch_artifacts(evaluation, work, context.s3_client)
    predictor = TabularPredictor.from_files(checkpoint, spec_path)  # fails here, before MLflow, if it cannot load
    evaluation_path = work / f"{EVALUATION_ARTIFACT}.json"
    evaluation_path.write_text(json.dumps(evaluation, indent=2, sort_keys=True, default=str))
    example = pd.DataFrame(predictor.example_rows(2), columns=predictor.spec.input_columns)
    outputs, probabilities = predictor.predict_rows(example.to_dict(orient="records"))
    signature = infer_signature(example, output_frame(outputs, probabilities, predictor.classes))
    requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas"]
    with (
        mlflow_fluent(context.mlflow),
        mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=None if run_id else f"register-{evaluation['dataset']}",
        ),
    ):
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=str(PYFUNC_CODE_FILE),
            artifacts={
                CHECKPOINT_ARTIFACT: str(checkpoint),
                FEATURE_SPEC_ARTIFACT: str(spec_path),
                EVALUATION_ARTIFACT: str(evaluation_path),
            },
            signature=signature,
            input_example=example,
            pip_requirements=requirements,  # explicit: no slow requirement inference in a subprocess
        )


def register_model(
    evaluation: Mapping[str, Any],
    context: RegistryContext,
    *,
    dag_id: str,
    dag_run_id: str,
    code_version: str | None = None,
    is_backfill: bool = False,
    experiment_name: str | None = None,
    task_id: str | None = None,
    publish_events: bool = True,
    trigger_event: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Register the evaluated model as a new version (alias `challenger`) with lineage tags; idempotent per DAG run.

    Returns {"model_name", "version", "model_uri", "created", "run_id", "tags"}; `created` is False when this DAG run
    had already registered it (a retried task). `code_version` defaults to ml.lineage.code_version()."""
    from ml.clock import utc_now_iso
    from ml.lineage import code_version as model_code_version
    from ml.lineage import git_sha

    check_evaluation(evaluation)
    client = context.client
    name = registered_model_name(str(evaluation["dataset"]), str(evaluation["task"]))
    _ensure_registered_model(client, name, evaluation)
    if _complete_version_of_run(client, name, dag_run_id) is not None:  # a retried task: no upload
        with context.lock(name) as lock:
            existing = _settle_earlier_attempts(lock, client, name, dag_run_id)
        if existing is not None:
            log.info("%s: DAG run %s already registered version %s", name, dag_run_id, existing.version)
            return _registration_result(name, existing, created=False)

    tags = version_tags(
        evaluation,
        dag_id=dag_id,
        dag_run_id=dag_run_id,
        code_version=code_version or model_code_version(),
        git_sha=git_sha(),
        is_backfill=is_backfill,
        trigger_event=trigger_event,
    )
    parent_run_id = evaluation.get("mlflow_parent_run_id") or None
    experiment_id = get_or_create_experiment(client, experiment_name or str(evaluation["dataset"]))
    with tempfile.TemporaryDirectory(prefix="mlops-register-") as tmp:
        info = _log_pyfunc_model(context, evaluation, Path(tmp), run_id=parent_run_id, experiment_id=experiment_id)
    with context.lock(name) as lock:
        # A concurrent attempt of the same DAG run may have finished while we uploaded.
        existing = _settle_earlier_attempts(lock, client, name, dag_run_id)
        if existing is not None:
            return _registration_result(name, existing, created=False)
        lock.ensure_held()
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=info.run_id,
            tags=tags,
            model_id=info.model_id,
            description=f"registered by {dag_id} run {dag_run_id}",
        )
        try:
            _wait_ready(context, name, version.version)
            lock.ensure_held()
            client.set_registered_model_alias(name, CHALLENGER, version.version)
            lock.ensure_held()
            client.set_model_version_tag(name, version.version, REGISTRATION_TAG, "complete")
            client.set_model_version_tag(name, version.version, "registered_at", utc_now_iso(context.clock))
        except BaseException:
            _delete_failed_version(lock, client, name, version.version)
            raise
    log.info("%s: registered version %s from %s (DAG run %s)", name, version.version, info.model_uri, dag_run_id)
    result = _registration_result(name, client.get_model_version(name, version.version), created=True)
    if publish_events:
        details = {
            "model_name": name,
            "version": result["version"],
            "metric": tags["metric"],
            "value": metric_value(evaluation["test_metrics"], str(evaluation["metric"])),
            "snapshot_id": str(evaluation["snapshot_id"]),
        }
        context.send_pipeline_event(dag_id, dag_run_id, task_id, "model_registered", details, required=False)
    return result


def _complete_version_of_run(client: Any, name: str, dag_run_id: str) -> Any | None:
    """This DAG run's complete version, if it has one (reads only: safe outside the lock)."""
    complete = (v for v in versions_of_run(client, name, dag_run_id) if v.tags.get(REGISTRATION_TAG) == "complete")
    return next(complete, None)


def _settle_earlier_attempts(lock: AliasLock, client: Any, name: str, dag_run_id: str) -> Any | None:
    """Under the lock: this DAG run's complete version, once what its earlier attempts left half-registered (pending,
    or failed) is deleted so that it can be redone. Each deletion is fenced: deleting a version drops the aliases
    that point at it, so it must not race a gate that reads or moves them."""
    found = None
    for version in versions_of_run(client, name, dag_run_id):
        if version.tags.get(REGISTRATION_TAG) == "complete" and found is None:
            found = version
        elif version.tags.get(REGISTRATION_TAG) != "complete":
            lock.ensure_held()
            why = f"an earlier attempt of DAG run {dag_run_id} left it pending"
            _delete_version(client, name, version.version, why)
    return found


def _delete_failed_version(lock: AliasLock, client: Any, name: str, version: str) -> None:
    """Delete the version this attempt failed to complete, if the lock is still ours; otherwise leave it pending (the
    next attempt of its DAG run deletes it under the lock) rather than drop aliases without it."""
    try:
        lock.ensure_held()
    except Exception as error:  # LockLost, or S3 could not say: never hide the original error
        log.error("%s: left version %s pending after a failed registration: %s", name, version, error)
        return
    _delete_version(client, name, version, "its registration failed")


def _wait_ready(context: RegistryContext, name: str, version: str, timeout_s: float = 120.0) -> None:
    deadline = context.clock.monotonic() + timeout_s
    while True:
        status = context.client.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or context.clock.monotonic() > deadline:
            raise RegistryError(f"{name} version {version}: registration status {status}")
        context.clock.sleep(0.5)


def _delete_version(client: Any, name: str, version: str, why: str) -> None:
    """Delete a version (MLflow drops the aliases that point at it too); never raises over the original error."""
    try:
        client.delete_model_version(name, version)
        log.warning("%s: deleted version %s because %s", name, version, why)
    except Exception as error:
        log.error("%s: could not delete version %s (%s): %s; tag it instead", name, version, why, error)
        try:
            client.set_model_version_tag(name, version, REGISTRATION_TAG, "failed")
            for alias in (CHAMPION, CHALLENGER):
                if alias_version(client, name, alias) == str(version):
                    client.delete_registered_model_alias(name, alias)
        except Exception as inner:
            log.error("%s: could not tag version %s as failed either: %s", name, version, inner)


def _registration_result(name: str, version: Any, *, created: bool) -> dict[str, Any]:
    return {
        "model_name": name,
        "version": str(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "source": version.source,
        "run_id": version.run_id,
        "created": created,
        "tags": dict(version.tags),
    }
