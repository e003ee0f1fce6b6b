"""MLflow Model Registry: register the evaluated best model with its lineage, gate promotion to `champion`, roll back.

One registered model per dataset and task (`registered_model_name`), aliases `champion` (what serving loads) and
`challenger` (the latest complete registration). A model version is an MLflow pyfunc "model from code": the code file
`ml/serve/pyfunc_model.py` plus artifacts (`checkpoint/` with model_state.pt + model_config.json, `feature_spec.json`,
`evaluation.json`). Nothing is pickled: weights load with `torch.load(weights_only=True)`, the spec is JSON, and the
pyfunc needs the project's `ml` package importable where it is loaded (the serving image has it).

Registration (`register_model`) is idempotent per DAG run: the version carries a `dag_run_id` tag; a retried task finds
its complete version and returns it, and a version left half-registered by a crashed attempt (tag
`mlops.registration=pending`) is deleted and redone. If anything fails after the version was created, that version is
deleted (which also removes any alias pointing at it).

Alias moves are serialised per registered model by a lock object in S3 (`AliasLock`): a conditional put
`If-None-Match: *` creates it only if absent, so exactly one writer holds it; it carries an expiry, and a waiter takes
over an expired lock with `If-Match: <its ETag>` (a conditional overwrite, so two waiters cannot both take it).
MLflow has no compare-and-set on aliases, so a bare "set then re-check" cannot stop two gates from each comparing
against the same old champion and the loser overwriting a better winner; the lock makes read-champion -> decide ->
move -> publish one step. The expensive part of the gate (re-scoring the champion) runs before the lock; under the
lock the champion is re-read and, if it moved meanwhile, the decision is made again against the new champion.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ml.features import OTHER, FeatureSpec
from ml.storage import S3Uri, read_json, s3_client
from ml.topics import MODEL_PROMOTED, PIPELINE_EVENTS

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_CODE_FILE = Path(__file__).resolve().parent / "serve" / "pyfunc_model.py"
MODEL_ARTIFACT_NAME = "model"
CHECKPOINT_ARTIFACT = "checkpoint"
FEATURE_SPEC_ARTIFACT = "feature_spec"
EVALUATION_ARTIFACT = "evaluation"
REGISTRATION_TAG = "mlops.registration"  # "pending" until the version is complete, then "complete"
EVALUATION_KEYS = ("dataset", "snapshot_id", "task", "metric", "test_metrics", "checkpoint_uri", "feature_spec_uri")
LINEAGE_TAGS = (
    "dataset",
    "task",
    "snapshot_id",
    "features_uri",
    "feature_spec_uri",
    "checkpoint_uri",
    "dag_id",
    "dag_run_id",
    "code_version",
    "git_sha",
    "search_space_hash",
    "mlflow_parent_run_id",
    "num_trials",
    "metric",
    "is_backfill",
)

Publish = Callable[..., Any]


class RegistryError(RuntimeError):
    """A registration or promotion could not be completed; the message names the model, version and step."""


def registered_model_name(dataset: str, task: str) -> str:
    """One registered model per dataset and task."""
    return f"{dataset}-{task}"


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------------------------------
# The loaded model: checkpoint + feature spec, shared by the pyfunc wrapper, serving and the gate's re-scoring


@dataclass
class TabularPredictor:
    """A trained model plus the feature spec it was trained with: raw rows in, predictions out."""

    model: Any  # torch.nn.Module from ml.models.load_model
    spec: FeatureSpec

    @classmethod
    def from_files(cls, checkpoint_dir: str | Path, feature_spec_path: str | Path) -> TabularPredictor:
        from ml.models import load_model

        spec = FeatureSpec.from_json(Path(feature_spec_path).read_text())
        return cls(load_model(checkpoint_dir), spec)

    @property
    def classes(self) -> list[str] | None:
        return self.spec.classes if self.spec.task == "classification" else None

    def predict_matrix(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Transformed features -> (class indices or values, probabilities or None): `ml.models.predict`."""
        from ml.models import predict

        return predict(self.model, features)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[Any], np.ndarray | None]:
        """Raw rows -> (class labels or values, probabilities or None), exactly FeatureSpec.transform + predict."""
        outputs, probabilities = self.predict_matrix(self.spec.transform(rows))
        if self.classes:
            return self.spec.decode_labels(int(i) for i in outputs), probabilities
        return [float(v) for v in outputs], None

    def example_rows(self, count: int = 2) -> list[dict[str, Any]]:
        """Plausible raw rows (training medians, the most frequent categories) for input examples."""
        rows = []
        for index in range(count):
            row: dict[str, Any] = {f.name: float(f.fill) + index * float(f.std or 1.0) for f in self.spec.numeric}
            for cat in self.spec.categorical:
                row[cat.name] = cat.categories[index % len(cat.categories)] if cat.categories else None
            rows.append(row)
        return rows


@dataclass
class LoadedModel:
    """One registry version in memory, as serving holds it."""

    name: str
    version: str
    predictor: TabularPredictor
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    loaded_at: str = field(default_factory=_now)

    @property
    def spec(self) -> FeatureSpec:
        return self.predictor.spec

    @property
    def test_metrics(self) -> dict[str, float]:
        return {k.removeprefix("test."): float(v) for k, v in self.tags.items() if k.startswith("test.")}

    @property
    def lineage(self) -> dict[str, str]:
        return {k: v for k, v in self.tags.items() if k in LINEAGE_TAGS}


def resolve_version(name: str, version_or_alias: str, client: Any | None = None) -> Any:
    """The ModelVersion for a version number or an alias (e.g. "champion"); LookupError if there is none."""
    from mlflow.exceptions import MlflowException

    client = client or _client()
    try:
        if str(version_or_alias).isdigit():
            return client.get_model_version(name, str(version_or_alias))
        return client.get_model_version_by_alias(name, version_or_alias)
    except MlflowException as error:
        raise LookupError(f"registered model {name!r} has no version or alias {version_or_alias!r}") from error


def load_version(name: str, version_or_alias: str = CHAMPION, client: Any | None = None) -> LoadedModel:
    """Download a version's checkpoint and feature spec and load them (tensors and JSON only: no code is executed)."""
    import mlflow

    client = client or _client()
    version = resolve_version(name, version_or_alias, client)
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=tmp)
        )
        predictor = TabularPredictor.from_files(
            local / "artifacts" / CHECKPOINT_ARTIFACT, local / "artifacts" / f"{FEATURE_SPEC_ARTIFACT}.json"
        )
    return LoadedModel(name, str(version.version), predictor, dict(version.tags), list(version.aliases or []))


# ---------------------------------------------------------------------------------------------------------------------
# The lock around alias moves


class AliasLock:
    """A per-model lock object `s3://LAKE/locks/registry/NAME.lock` created with a conditional put (see module doc)."""

    def __init__(
        self,
        model_name: str,
        *,
        ttl_s: float = 120.0,
        wait_s: float = 300.0,
        client: Any | None = None,
        uri: S3Uri | None = None,
    ) -> None:
        from ml.storage import lake

        self.uri = uri or lake().join("locks", "registry", f"{model_name}.lock")
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.client = client or s3_client()
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
        self._etag: str | None = None

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + self.wait_s
        delay = 0.05
        while True:
            body = json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl_s}).encode()
            try:
                response = self.client.put_object(Bucket=self.uri.bucket, Key=self.uri.key, Body=body, IfNoneMatch="*")
                self._etag = response["ETag"]
                return
            except ClientError as error:
                if _error_code(error) not in ("PreconditionFailed", "ConditionalRequestConflict", "409", "412"):
                    raise
            holder = self._take_over_if_expired(body)
            if holder is None:
                return
            if time.monotonic() >= deadline:
                raise RegistryError(f"could not lock {self.uri} within {self.wait_s:g} s: held by {holder}")
            time.sleep(delay * (0.5 + np.random.random()))  # jitter so that waiters do not retry in lock-step
            delay = min(delay * 2, 1.0)

    def _take_over_if_expired(self, body: bytes) -> str | None:
        """Replace the lock if it has expired (conditional on its ETag); None when we now hold it, else the holder."""
        from botocore.exceptions import ClientError

        try:
            current = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key)
        except ClientError as error:
            if _error_code(error) in ("NoSuchKey", "404", "NotFound"):
                return "nobody (released meanwhile)"
            raise
        try:
            held = json.loads(current["Body"].read())
        except ValueError:
            held = {}
        if float(held.get("expires_at", 0)) > time.time():
            return str(held.get("owner", "?"))
        try:
            response = self.client.put_object(
                Bucket=self.uri.bucket, Key=self.uri.key, Body=body, IfMatch=current["ETag"]
            )
        except ClientError as error:
            if _error_code(error) in ("PreconditionFailed", "ConditionalRequestConflict", "409", "412", "NoSuchKey"):
                return "another waiter (took it over first)"
            raise
        log.warning("took over the expired registry lock %s from %s", self.uri, held.get("owner"))
        self._etag = response["ETag"]
        return None

    def release(self) -> None:
        from botocore.exceptions import ClientError

        if self._etag is None:
            return
        try:
            # Conditional: if our lock expired and someone took it over, theirs must stay.
            self.client.delete_object(Bucket=self.uri.bucket, Key=self.uri.key, IfMatch=self._etag)
        except ClientError as error:
            log.warning("registry lock %s was no longer ours at release (%s)", self.uri, _error_code(error))
        finally:
            self._etag = None

    def __enter__(self) -> AliasLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _error_code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


# ---------------------------------------------------------------------------------------------------------------------
# Registration


def load_evaluation(location: str) -> dict[str, Any]:
    """The evaluation result JSON from a local file or an s3:// URI."""
    if location.startswith(("s3://", "s3a://")):
        data = read_json(S3Uri.parse(location))
    else:
        data = json.loads(Path(location).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{location}: the evaluation result is not a JSON object")
    return data


def git_sha() -> str:
    """The git commit of this checkout (`MLOPS_GIT_SHA` wins, e.g. baked into an image), "-dirty" when tracked files
    changed; "unknown" without git."""
    if os.environ.get("MLOPS_GIT_SHA"):
        return os.environ["MLOPS_GIT_SHA"]
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _check_evaluation(evaluation: Mapping[str, Any]) -> None:
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


def _version_tags(
    evaluation: Mapping[str, Any], *, dag_id: str, dag_run_id: str, code_version: str, is_backfill: bool
) -> dict[str, str]:
    from ml.models import base_metric_name

    values: dict[str, Any] = {
        **{key: evaluation.get(key) for key in LINEAGE_TAGS},
        "dag_id": dag_id,
        "dag_run_id": dag_run_id,
        "code_version": code_version,
        "git_sha": _git_sha_cached(),
        "is_backfill": is_backfill,
        "metric": base_metric_name(str(evaluation["metric"])),
    }
    tags = {key: _tag_value(value) for key, value in values.items() if value is not None}
    baseline = evaluation.get("baseline_test_metrics")
    for prefix, metrics in (("test", evaluation["test_metrics"]), ("baseline_test", baseline)):
        for name, value in (metrics or {}).items():
            if isinstance(value, int | float) and math.isfinite(value):
                tags[f"{prefix}.{base_metric_name(name)}"] = repr(float(value))
    tags[REGISTRATION_TAG] = "pending"
    return tags


def _tag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def find_version_for_run(name: str, dag_run_id: str, client: Any | None = None) -> list[Any]:
    """Versions of `name` registered by this DAG run (normally none or one)."""
    client = client or _client()
    escaped = dag_run_id.replace("'", "\\'")
    return list(client.search_model_versions(f"name = '{name}' and tags.dag_run_id = '{escaped}'"))


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
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code) and "ALREADY_EXISTS" not in str(error.error_code):
            raise


def _download_checkpoint(evaluation: Mapping[str, Any], into: Path) -> tuple[Path, Path]:
    """Copy the checkpoint directory and the feature spec from S3 (or local paths, for tests) into `into`."""
    from ml.models import MODEL_CONFIG_FILE, MODEL_STATE_FILE

    checkpoint = into / CHECKPOINT_ARTIFACT
    checkpoint.mkdir(parents=True)
    spec_path = into / f"{FEATURE_SPEC_ARTIFACT}.json"
    source, spec_source = str(evaluation["checkpoint_uri"]), str(evaluation["feature_spec_uri"])
    client = s3_client()
    for filename in (MODEL_STATE_FILE, MODEL_CONFIG_FILE):
        if source.startswith(("s3://", "s3a://")):
            uri = S3Uri.parse(source).join(filename)
            client.download_file(uri.bucket, uri.key, str(checkpoint / filename))
        else:
            shutil.copyfile(Path(source) / filename, checkpoint / filename)
    if spec_source.startswith(("s3://", "s3a://")):
        spec_path.write_text(json.dumps(read_json(S3Uri.parse(spec_source)), indent=2, sort_keys=True))
    else:
        shutil.copyfile(spec_source, spec_path)
    return checkpoint, spec_path


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created by a concurrent registration meanwhile
        return str(client.get_experiment_by_name(name).experiment_id)


def _log_pyfunc_model(evaluation: Mapping[str, Any], work: Path, *, run_id: str | None, experiment_id: str) -> Any:
    """Log the checkpoint + spec as a pyfunc model from code into the run; returns MLflow's ModelInfo."""
    import mlflow
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    checkpoint, spec_path = _download_checkpoint(evaluation, work)
    predictor = TabularPredictor.from_files(checkpoint, spec_path)  # fails here, before MLflow, if it cannot load
    evaluation_path = work / f"{EVALUATION_ARTIFACT}.json"
    evaluation_path.write_text(json.dumps(evaluation, indent=2, sort_keys=True, default=str))
    example = pd.DataFrame(predictor.example_rows(2), columns=predictor.spec.input_columns)
    outputs, probabilities = predictor.predict_rows(example.to_dict(orient="records"))
    signature = infer_signature(example, output_frame(outputs, probabilities, predictor.classes))
    requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas"]
    with mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id,
        run_name=None if run_id else f"register-{evaluation['dataset']}",
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


def output_frame(outputs: Sequence[Any], probabilities: np.ndarray | None, classes: list[str] | None) -> Any:
    """The pyfunc's output table: `prediction`, plus `probability_<class>` columns for classification."""
    import pandas as pd

    frame = pd.DataFrame({"prediction": list(outputs)})
    if probabilities is not None and classes:
        for index, label in enumerate(classes):
            frame[f"probability_{label}"] = probabilities[:, index].astype(float)
    return frame


def register_model(
    evaluation: Mapping[str, Any],
    *,
    dag_id: str,
    dag_run_id: str,
    code_version: str | None = None,
    is_backfill: bool = False,
    experiment_name: str | None = None,
    task_id: str | None = None,
    publish_events: bool = True,
) -> dict[str, Any]:
    """Register the evaluated model as a new version (alias `challenger`) with lineage tags; idempotent per DAG run.

    Returns {"model_name", "version", "model_uri", "created", "run_id", "tags"}; `created` is False when this DAG run
    had already registered it (a retried task)."""
    from ml.lineage import code_version as source_hash

    _check_evaluation(evaluation)
    client = _client()
    name = registered_model_name(str(evaluation["dataset"]), str(evaluation["task"]))
    _ensure_registered_model(client, name, evaluation)
    existing = _complete_version_for_run(client, name, dag_run_id)
    if existing is not None:
        log.info("%s: DAG run %s already registered version %s", name, dag_run_id, existing.version)
        return _registration_result(name, existing, created=False)

    tags = _version_tags(
        evaluation,
        dag_id=dag_id,
        dag_run_id=dag_run_id,
        code_version=code_version or source_hash(),
        is_backfill=is_backfill,
    )
    parent_run_id = evaluation.get("mlflow_parent_run_id") or None
    experiment_id = _experiment_id(client, experiment_name or str(evaluation["dataset"]))
    # Upload outside the lock (slow); the version itself is created and aliased under it.
    with tempfile.TemporaryDirectory(prefix="mlops-register-") as tmp:
        info = _log_pyfunc_model(evaluation, Path(tmp), run_id=parent_run_id, experiment_id=experiment_id)
    with AliasLock(name):
        # A concurrent attempt of the same DAG run may have finished while we uploaded.
        existing = _complete_version_for_run(client, name, dag_run_id)
        if existing is not None:
            return _registration_result(name, existing, created=False)
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=info.run_id,
            tags=tags,
            model_id=info.model_id,
            description=f"registered by {dag_id} run {dag_run_id}",
        )
        try:
            _wait_ready(client, name, version.version)
            client.set_registered_model_alias(name, CHALLENGER, version.version)
            client.set_model_version_tag(name, version.version, REGISTRATION_TAG, "complete")
            client.set_model_version_tag(name, version.version, "registered_at", _now())
        except BaseException:
            _delete_version(client, name, version.version, "its registration failed")
            raise
    log.info("%s: registered version %s from %s (DAG run %s)", name, version.version, info.model_uri, dag_run_id)
    result = _registration_result(name, client.get_model_version(name, version.version), created=True)
    if publish_events:
        _publish_pipeline_event(
            dag_id,
            dag_run_id,
            task_id,
            "model_registered",
            {
                "model_name": name,
                "version": result["version"],
                "metric": tags["metric"],
                "value": metric_value(evaluation["test_metrics"], str(evaluation["metric"])),
                "snapshot_id": str(evaluation["snapshot_id"]),
            },
            required=False,
        )
    return result


@lru_cache(maxsize=1)
def _git_sha_cached() -> str:
    return git_sha()


def _complete_version_for_run(client: Any, name: str, dag_run_id: str) -> Any | None:
    """This DAG run's complete version; a pending one (left by a crashed attempt) is deleted so it can be redone."""
    found = None
    for version in find_version_for_run(name, dag_run_id, client):
        if version.tags.get(REGISTRATION_TAG) == "complete" and found is None:
            found = version
        elif version.tags.get(REGISTRATION_TAG) != "complete":
            why = f"an earlier attempt of DAG run {dag_run_id} left it pending"
            _delete_version(client, name, version.version, why)
    return found


def _wait_ready(client: Any, name: str, version: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistryError(f"{name} version {version}: registration status {status}")
        time.sleep(0.5)


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
                current = _alias_version(client, name, alias)
                if current == str(version):
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


# ---------------------------------------------------------------------------------------------------------------------
# The promotion gate


@dataclass
class GateDecision:
    promote: bool
    decision: str  # first_model | promoted | rejected | already_champion
    reason: str
    value: float | None = None
    champion_version: str | None = None
    champion_value: float | None = None
    comparison: str = ""


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _decide(
    client: Any,
    name: str,
    challenger: Any,
    champion_version: str | None,
    *,
    metric: str,
    margin: float,
    higher_is_better: bool,
    is_backfill: bool,
    allow_backfill_promotion: bool,
) -> GateDecision:
    from ml.models import is_improvement

    tags = challenger.tags
    value = _tag_float(tags, f"test.{metric}")
    if champion_version == str(challenger.version):
        return GateDecision(
            False, "already_champion", "this version is already the champion", value, champion_version, value
        )
    if is_backfill and not allow_backfill_promotion:
        reason = "backfill runs never move the champion (allow_backfill_promotion is off)"
        return GateDecision(False, "rejected", reason, value, champion_version)
    if value is None:
        return GateDecision(False, "rejected", f"version {challenger.version} has no test metric {metric!r}")
    if champion_version is None:
        return GateDecision(True, "first_model", "no champion yet: the first model becomes champion", value)
    champion = client.get_model_version(name, champion_version)
    recorded = _tag_float(champion.tags, f"test.{metric}")
    if champion.tags.get("snapshot_id") == tags.get("snapshot_id") and recorded is not None:
        champion_value = recorded
        comparison = f"recorded test metrics on the same snapshot {tags.get('snapshot_id')}"
    else:
        value, champion_value = rescore_on_test_split(name, str(challenger.version), champion_version, metric, client)
        comparison = (
            f"re-scored both on the test split of snapshot {tags.get('snapshot_id')} (champion trained on "
            f"{champion.tags.get('snapshot_id')})"
        )
    mode = "max" if higher_is_better else "min"
    better = is_improvement(value, champion_value, mode, margin)
    direction = "higher" if higher_is_better else "lower"
    relation = "beats" if better else "does not beat"
    reason = (
        f"test {metric} {value:.6g} {relation} champion v{champion_version} {champion_value:.6g} by more than "
        f"{margin:g} ({direction} is better; {comparison})"
    )
    return GateDecision(
        better, "promoted" if better else "rejected", reason, value, champion_version, champion_value, comparison
    )


def _tag_float(tags: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def rescore_on_test_split(
    name: str, challenger_version: str, champion_version: str, metric: str, client: Any | None = None
) -> tuple[float, float]:
    """Score both versions on the challenger's test split; returns (challenger value, champion value).

    The split holds the challenger's transformed features. The champion needs raw rows for its own spec, so they are
    recovered by inverting the challenger's transform (numeric: x * std + mean; categorical: the hot category). Values
    the challenger's preprocessing had imputed or lumped into `__other__` reach the champion as the imputed value / an
    unseen category: the comparison stays on identical rows and labels."""
    from ml.data import read_split
    from ml.models import base_metric_name, compute_metrics

    client = client or _client()
    challenger = load_version(name, challenger_version, client)
    champion = load_version(name, champion_version, client)
    features_uri = challenger.tags.get("features_uri")
    if not features_uri:
        raise RegistryError(f"{name} v{challenger_version} has no features_uri tag: cannot re-score the champion")
    spec = challenger.spec
    split = read_split(features_uri, "test", spec)
    base = base_metric_name(metric)

    outputs, probabilities = challenger.predictor.predict_matrix(split.X)
    challenger_metrics = compute_metrics(spec.task, split.y, outputs, probabilities, num_classes=spec.num_outputs)
    raw_rows = features_to_raw_rows(spec, split.X)
    champion_outputs, champion_probabilities = champion.predictor.predict_matrix(champion.spec.transform(raw_rows))
    if spec.task == "classification" and spec.classes:
        # Express the champion's classes in the challenger's label indices (a class it lacks is never predicted).
        position = {label: index for index, label in enumerate(spec.classes)}
        champion_classes = champion.spec.classes or []
        mapped = np.array([position.get(champion_classes[int(i)], -1) for i in champion_outputs], dtype=np.int64)
        reordered = None
        if champion_probabilities is not None:
            reordered = np.zeros((len(mapped), len(spec.classes)))
            for source_index, label in enumerate(champion_classes):
                if label in position:
                    reordered[:, position[label]] = champion_probabilities[:, source_index]
        champion_metrics = compute_metrics(spec.task, split.y, mapped, reordered, num_classes=spec.num_outputs)
    else:
        champion_metrics = compute_metrics(spec.task, split.y, champion_outputs, None)
    if base not in challenger_metrics:
        raise RegistryError(f"metric {metric!r} is not computed for {spec.task} (have {sorted(challenger_metrics)})")
    log.info(
        "%s: re-scored on %s test split (%d rows): challenger v%s %s=%.6g, champion v%s %s=%.6g",
        name,
        spec.snapshot_id,
        split.rows,
        challenger_version,
        base,
        challenger_metrics[base],
        champion_version,
        base,
        champion_metrics[base],
    )
    return float(challenger_metrics[base]), float(champion_metrics[base])


def features_to_raw_rows(spec: FeatureSpec, features: np.ndarray) -> list[dict[str, Any]]:
    """Invert `spec.transform` as far as it can be: standardised numerics back to their units, one-hot back to the
    category (None for `__other__`)."""
    rows: list[dict[str, Any]] = [{} for _ in range(features.shape[0])]
    column = 0
    for feature in spec.numeric:
        values = features[:, column].astype(np.float64) * (feature.std or 1.0) + feature.mean
        for row, value in zip(rows, values, strict=True):
            row[feature.name] = float(value)
        column += 1
    for cat in spec.categorical:
        options = [*cat.categories, OTHER]
        hot = features[:, column : column + len(options)].argmax(axis=1)
        for row, index in zip(rows, hot, strict=True):
            row[cat.name] = None if options[int(index)] == OTHER else options[int(index)]
        column += len(options)
    return rows


def promote(
    model_name: str,
    version: str | int,
    *,
    metric: str,
    margin: float = 0.0,
    higher_is_better: bool | None = None,
    is_backfill: bool = False,
    allow_backfill_promotion: bool = False,
    dag_id: str | None = None,
    dag_run_id: str | None = None,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """The promotion gate: move `champion` to `version` if it is the first model or beats the champion on the same
    test split by more than `margin` (absolute, in the metric's units); backfills never move it unless allowed.
    Records the decision as version tags and publishes model_promoted (alias moved) or a model_rejected pipeline event.
    """
    from ml.models import base_metric_name
    from ml.models import higher_is_better as metric_higher_is_better

    client = _client()
    version = str(version)
    metric = base_metric_name(metric)
    higher = metric_higher_is_better(metric) if higher_is_better is None else higher_is_better
    challenger = resolve_version(model_name, version, client)
    if challenger.tags.get(REGISTRATION_TAG) != "complete":
        raise RegistryError(f"{model_name} v{version} is not completely registered: it cannot be promoted")
    for _attempt in range(5):
        champion_before = _alias_version(client, model_name, CHAMPION)
        decision = _decide(
            client,
            model_name,
            challenger,
            champion_before,
            metric=metric,
            margin=margin,
            higher_is_better=higher,
            is_backfill=is_backfill,
            allow_backfill_promotion=allow_backfill_promotion,
        )
        with AliasLock(model_name):
            if _alias_version(client, model_name, CHAMPION) != champion_before:
                log.info("%s: champion moved while deciding on v%s: deciding again", model_name, version)
                continue
            if decision.promote:
                client.set_registered_model_alias(model_name, CHAMPION, version)
                if _alias_version(client, model_name, CHAMPION) != version:  # the lock should make this impossible
                    raise RegistryError(f"{model_name}: champion alias did not stick to v{version}")
            _record_decision(
                client,
                model_name,
                version,
                decision,
                metric=metric,
                margin=margin,
                higher=higher,
                is_backfill=is_backfill,
            )
            # Published under the lock so that promotion events reach consumers in the order the alias moved.
            run_id = dag_run_id or challenger.tags.get("dag_run_id")
            event = _publish_decision(
                model_name, version, decision, metric=metric, dag_id=dag_id, dag_run_id=run_id, publish=publish
            )
        break
    else:
        raise RegistryError(f"{model_name}: the champion kept moving while gating v{version}; try again")
    log.info("%s v%s: %s (%s)", model_name, version, decision.decision, decision.reason)
    return {
        "model_name": model_name,
        "version": version,
        "decision": decision.decision,
        "promoted": decision.promote,
        "champion": version if decision.promote else champion_before,
        "previous_champion": champion_before,
        "metric": metric,
        "value": decision.value,
        "champion_value": decision.champion_value,
        "reason": decision.reason,
        "event": event,
    }


def _record_decision(
    client: Any,
    name: str,
    version: str,
    decision: GateDecision,
    *,
    metric: str,
    margin: float,
    higher: bool,
    is_backfill: bool,
) -> None:
    tags = {
        "gate.decision": decision.decision,
        "gate.reason": decision.reason,
        "gate.metric": metric,
        "gate.margin": repr(margin),
        "gate.higher_is_better": str(higher).lower(),
        "gate.is_backfill": str(is_backfill).lower(),
        "gate.champion_version": decision.champion_version or "",
        "gate.decided_at": _now(),
    }
    if decision.value is not None:
        tags["gate.value"] = repr(decision.value)
    if decision.champion_value is not None:
        tags["gate.champion_value"] = repr(decision.champion_value)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promote:
        client.set_model_version_tag(name, version, "champion_since", tags["gate.decided_at"])
        if decision.champion_version:
            client.set_model_version_tag(name, decision.champion_version, "replaced_by", version)


def _publish_decision(
    name: str,
    version: str,
    decision: GateDecision,
    *,
    metric: str,
    dag_id: str | None,
    dag_run_id: str | None,
    publish: Publish | None,
) -> str:
    if decision.promote or decision.decision == "already_champion":
        # Re-published for an already-champion version: a retried task may have failed right after the move.
        payload = {
            "model_name": name,
            "version": version,
            "alias": CHAMPION,
            "previous_version": decision.champion_version if decision.champion_version != version else None,
            "metric": metric,
            "value": decision.value,
            "previous_value": decision.champion_value,
            "reason": decision.reason,
        }
        (publish or _publish_sync)(MODEL_PROMOTED, payload, name, dag_run_id)
        return "model_promoted"
    _publish_pipeline_event(
        dag_id or "manual",
        dag_run_id,
        None,
        "model_rejected",
        {
            "model_name": name,
            "version": version,
            "metric": metric,
            "value": decision.value,
            "champion_version": decision.champion_version,
            "champion_value": decision.champion_value,
            "reason": decision.reason,
        },
        publish=publish,
    )
    return "model_rejected"


def _publish_sync(topic: Any, payload: dict[str, Any], key: str, dag_run_id: str | None) -> None:
    from ml.events import publish_event

    publish_event(topic, payload, key, dag_run_id=dag_run_id)


def _publish_pipeline_event(
    dag_id: str,
    dag_run_id: str | None,
    task_id: str | None,
    event: str,
    details: dict[str, Any],
    *,
    publish: Publish | None = None,
    required: bool = True,
) -> None:
    from ml.events import pipeline_event_key

    payload = {"dag_id": dag_id, "task_id": task_id, "event": event, "details": details}
    try:
        (publish or _publish_sync)(
            PIPELINE_EVENTS, payload, pipeline_event_key(dag_id, dag_run_id, task_id, event), dag_run_id
        )
    except Exception as error:
        if required:
            raise
        log.warning("could not publish the %s pipeline event: %s", event, error)


def rollback(
    model_name: str, version: str | int, *, reason: str = "manual rollback", publish: Publish | None = None
) -> dict[str, Any]:
    """Move `champion` to `version` unconditionally (recorded as version tags and published as model_promoted)."""
    client = _client()
    version = str(version)
    target = resolve_version(model_name, version, client)  # LookupError if there is no such version
    if target.tags.get(REGISTRATION_TAG) not in (None, "complete"):
        raise RegistryError(f"{model_name} v{version} is not completely registered ({target.tags[REGISTRATION_TAG]})")
    metric = target.tags.get("metric", "unknown")
    with AliasLock(model_name):
        previous = _alias_version(client, model_name, CHAMPION)
        client.set_registered_model_alias(model_name, CHAMPION, version)
        at = _now()
        for key, value in {
            "rollback.at": at,
            "rollback.from_version": previous or "",
            "rollback.reason": reason,
            "champion_since": at,
        }.items():
            client.set_model_version_tag(model_name, version, key, value)
        payload = {
            "model_name": model_name,
            "version": version,
            "alias": CHAMPION,
            "previous_version": previous,
            "metric": metric,
            "value": _tag_float(target.tags, f"test.{metric}"),
            "previous_value": _tag_float(client.get_model_version(model_name, previous).tags, f"test.{metric}")
            if previous
            else None,
            "reason": reason,
        }
        (publish or _publish_sync)(MODEL_PROMOTED, payload, model_name, None)
    log.info("%s: champion moved from v%s to v%s (%s)", model_name, previous, version, reason)
    return {"model_name": model_name, "champion": version, "previous_champion": previous, "reason": reason}


def register_and_promote(
    evaluation: Mapping[str, Any],
    *,
    dag_id: str,
    dag_run_id: str,
    code_version: str | None = None,
    metric: str | None = None,
    margin: float = 0.0,
    higher_is_better: bool | None = None,
    is_backfill: bool = False,
    allow_backfill_promotion: bool = False,
    task_id: str | None = None,
) -> dict[str, Any]:
    """`register_model` then `promote`: what the pipeline's register task runs. Returns both results in one dict."""
    registered = register_model(
        evaluation,
        dag_id=dag_id,
        dag_run_id=dag_run_id,
        code_version=code_version,
        is_backfill=is_backfill,
        task_id=task_id,
    )
    if higher_is_better is None and metric is None and isinstance(evaluation.get("higher_is_better"), bool):
        higher_is_better = evaluation["higher_is_better"]  # what evaluation decided for its metric
    gate = promote(
        registered["model_name"],
        registered["version"],
        metric=metric or str(evaluation["metric"]),
        margin=margin,
        higher_is_better=higher_is_better,
        is_backfill=is_backfill,
        allow_backfill_promotion=allow_backfill_promotion,
        dag_id=dag_id,
        dag_run_id=dag_run_id,
    )
    return {
        "model_name": registered["model_name"],
        "version": registered["version"],
        "model_uri": registered["model_uri"],
        "created": registered["created"],
        "decision": gate["decision"],
        "promoted": gate["promoted"],
        "champion": gate["champion"],
        "previous_champion": gate["previous_champion"],
        "metric": gate["metric"],
        "value": gate["value"],
        "champion_value": gate["champion_value"],
        "reason": gate["reason"],
    }


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _quiet_stdout() -> None:
    # The CLI's stdout is its JSON result: keep MLflow's "View run at ..." lines off it.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _mlflow_errors_as_runtime_errors(function: Callable[[argparse.Namespace], dict[str, Any]]) -> Any:
    """`python -m ml` reports RuntimeErrors as one clear line; MLflow's own exceptions become those."""

    def handler(args: argparse.Namespace) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        _quiet_stdout()
        try:
            return function(args)
        except MlflowException as error:
            raise RuntimeError(f"MLflow at {os.environ.get('MLFLOW_TRACKING_URI', '?')}: {error.message}") from error

    return handler


@_mlflow_errors_as_runtime_errors
def _cli_register(args: argparse.Namespace) -> dict[str, Any]:
    evaluation = load_evaluation(args.evaluation)
    return register_and_promote(
        evaluation,
        dag_id=args.dag_id,
        dag_run_id=args.dag_run_id or f"manual__{_now()}",
        code_version=args.code_version,
        metric=args.metric,
        margin=args.margin,
        is_backfill=args.backfill,
        allow_backfill_promotion=args.allow_backfill_promotion,
    )


@_mlflow_errors_as_runtime_errors
def _cli_promote(args: argparse.Namespace) -> dict[str, Any]:
    return rollback(args.model, args.version, reason=args.reason)


def register_cli(subparsers: Any) -> None:
    register = subparsers.add_parser("register", help="register an evaluated model and run the promotion gate")
    register.add_argument("--evaluation", required=True, help="evaluation result JSON: a file or an s3:// URI")
    register.add_argument("--dag-id", default="manual", help="lineage: the DAG (default: manual)")
    register.add_argument(
        "--dag-run-id",
        default=None,
        help="lineage and idempotency key: a second call with the same id returns the same version "
        "(default: manual__<now>)",
    )
    register.add_argument(
        "--code-version", default=None, help="lineage: code version (default: ml.lineage.code_version(), a source hash)"
    )
    register.add_argument("--metric", default=None, help="gate metric (default: the evaluation's metric)")
    register.add_argument("--margin", type=float, default=0.0, help="how much better than the champion (absolute)")
    register.add_argument("--backfill", action="store_true", help="this run is a backfill: never moves the champion")
    register.add_argument("--allow-backfill-promotion", action="store_true", help="let a backfill move the champion")
    register.set_defaults(handler=_cli_register)
    promote_parser = subparsers.add_parser("promote", help="move the champion alias to a version (rollback)")
    promote_parser.add_argument("--model", required=True, help="registered model name, e.g. DATASET-classification")
    promote_parser.add_argument("--version", required=True, help="the version that becomes champion")
    promote_parser.add_argument("--reason", default="manual rollback", help="recorded on the version and the event")
    promote_parser.set_defaults(handler=_cli_promote)
