"""Trained models loaded for prediction: from a search's checkpoint in S3, or from a registry version.

`TabularPredictor` (model + feature spec: raw rows in, predictions out) is what serving, the pyfunc wrapper of a
registered version, evaluation and the promotion gate's re-scoring all run, so they agree by construction. Loading
reads tensors and JSON only: no pickled code is executed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.clock import utc_now_iso
from ml.features import FeatureSpec
from ml.registry.conventions import (
    CHECKPOINT_ARTIFACT,
    FEATURE_SPEC_ARTIFACT,
    LINEAGE_TAGS,
    TEST_METRIC_TAG_PREFIX,
)
from ml.settings import MlflowSettings
from ml.storage import S3Uri, list_keys


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
        return self._answers(*self.predict_matrix(self.spec.transform(rows)))

    def predict_columns(
        self, numeric: np.ndarray, categorical: Sequence[Sequence[Any]]
    ) -> tuple[list[Any], np.ndarray | None]:
        """`predict_rows` of rows given as columns (FeatureSpec.transform_columns): the same answers."""
        return self._answers(*self.predict_matrix(self.spec.transform_columns(numeric, categorical)))

    def _answers(self, outputs: np.ndarray, probabilities: np.ndarray | None) -> tuple[list[Any], np.ndarray | None]:
        if self.classes:
            return self.spec.decode_labels(outputs.tolist()), probabilities  # tolist: Python ints, in C
        return [float(v) for v in outputs], None

    def example_rows(self, count: int = 2) -> list[dict[str, Any]]:
        """Plausible raw rows (training means, the most frequent categories) for input examples."""
        rows = []
        for index in range(count):
            row: dict[str, Any] = {f.name: float(f.fill) + index * float(f.std or 1.0) for f in self.spec.numeric}
            for cat in self.spec.categorical:
                row[cat.name] = cat.categories[index % len(cat.categories)] if cat.categories else None
            rows.append(row)
        return rows


def output_frame(outputs: Sequence[Any], probabilities: np.ndarray | None, classes: list[str] | None) -> Any:
    """The pyfunc's output table: `prediction`, plus `probability_<class>` columns for classification."""
    import pandas as pd

    frame = pd.DataFrame({"prediction": list(outputs)})
    if probabilities is not None and classes:
        for index, label in enumerate(classes):
            frame[f"probability_{label}"] = probabilities[:, index].astype(float)
    return frame


def answer_fields(
    outputs: Sequence[Any], probabilities: np.ndarray | None, classes: list[str] | None
) -> dict[str, Any]:
    """The prediction fields of the service's /predict answer: `predictions`, plus `probabilities` (one list per row,
    in `classes` order) and `classes` for classification. Batch scoring writes the same values, so they agree."""
    from ml.json_values import json_safe

    if probabilities is not None:
        return {
            "predictions": list(outputs),
            "probabilities": probabilities.tolist(),  # Python floats, as float() of each gives, in C
            "classes": classes,
        }
    return {"predictions": json_safe([float(v) for v in outputs])}


def download_checkpoint(uri: str | S3Uri, directory: str | Path, s3_client: Any) -> Path:
    """Copy every object under a checkpoint prefix into `directory` (flat: checkpoints hold a few small files)."""
    prefix = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    root = prefix.key.rstrip("/") + "/"
    copied = 0
    for obj in list_keys(S3Uri(prefix.bucket, root), s3_client):
        relative = obj["Key"][len(root) :]
        if not relative or relative.endswith("/"):
            continue  # folder markers
        destination = target / relative
        if target.resolve() not in destination.resolve().parents:
            raise ValueError(f"{prefix}: object key {obj['Key']!r} escapes the checkpoint folder")
        destination.parent.mkdir(parents=True, exist_ok=True)
        s3_client.download_file(prefix.bucket, obj["Key"], str(destination))
        copied += 1
    if copied == 0:
        raise LookupError(f"{prefix}: checkpoint not found (no objects under it)")
    return target


@dataclass
class LoadedModel:
    """One registry version in memory, as serving holds it."""

    name: str
    version: str
    predictor: TabularPredictor
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    loaded_at: str = field(default_factory=utc_now_iso)

    @property
    def spec(self) -> FeatureSpec:
        return self.predictor.spec

    @property
    def test_metrics(self) -> dict[str, float]:
        prefix = TEST_METRIC_TAG_PREFIX
        return {k.removeprefix(prefix): float(v) for k, v in self.tags.items() if k.startswith(prefix)}

    @property
    def lineage(self) -> dict[str, str]:
        return {k: v for k, v in self.tags.items() if k in LINEAGE_TAGS}


def resolve_version(client: Any, name: str, version_or_alias: str) -> Any:
    """The ModelVersion for a version number or an alias (e.g. "champion"); LookupError if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        if str(version_or_alias).isdigit():
            return client.get_model_version(name, str(version_or_alias))
        return client.get_model_version_by_alias(name, version_or_alias)
    except MlflowException as error:
        raise LookupError(f"registered model {name!r} has no version or alias {version_or_alias!r}") from error


# The decisions with which the promotion gate (ml.registry.promote) leaves a version as the champion; a rollback
# (an operator's explicit choice) writes `rollback.at` instead.
GATE_PASSED = frozenset({"first_model", "promoted", "already_champion"})


class UngatedVersion(LookupError):
    """A model version that did not pass the promotion gate: the prediction service will not serve it."""


def ungated_reason(tags: dict[str, str]) -> str | None:
    """None when the version's tags show it passed the gate (or was rolled back to), else why it did not."""
    decision = tags.get("gate.decision")
    if decision in GATE_PASSED or tags.get("rollback.at"):
        return None
    if decision:
        return f"the promotion gate decided {decision!r} ({tags.get('gate.reason', 'no reason recorded')})"
    return "it never went through the promotion gate (no gate.decision tag): was the alias moved by hand?"


def load_version(
    mlflow: MlflowSettings, name: str, version_or_alias: str, *, require_gated: bool = False
) -> LoadedModel:
    """Download a version's checkpoint and feature spec and load them (tensors and JSON only: no code is executed).
    `require_gated` (the prediction service): refuse, before downloading anything, a version the gate did not pass
    (UngatedVersion): an alias moved past the gate does not get served."""
    import mlflow as mlflow_module

    from ml.clients import mlflow_client, mlflow_fluent

    version = resolve_version(mlflow_client(mlflow), name, version_or_alias)
    reason = ungated_reason(dict(version.tags)) if require_gated else None
    if reason:
        raise UngatedVersion(f"{name} v{version.version} ({version_or_alias}): not served: {reason}")
    # The fluent settings too: MLflow resolves a models:/ URI against the process's registry URI, whatever the call
    # says; and the download goes through the server's artifact proxy, as this login.
    with mlflow_fluent(mlflow), tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
        local = Path(
            mlflow_module.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version.version}",
                dst_path=tmp,
                tracking_uri=mlflow.tracking_uri,
                registry_uri=mlflow.tracking_uri,
            )
        )
        predictor = TabularPredictor.from_files(
            local / "artifacts" / CHECKPOINT_ARTIFACT, local / "artifacts" / f"{FEATURE_SPEC_ARTIFACT}.json"
        )
    return LoadedModel(name, str(version.version), predictor, dict(version.tags), list(version.aliases or []))


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version number an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
