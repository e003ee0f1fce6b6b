"""The model version a batch scoring run uses: resolved once, on the submitting side, to the S3 locations of its
checkpoint and feature spec (the version's lineage tags), so that neither the Spark driver nor its executors talk to
MLflow."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from ml.predictor import resolve_version, ungated_reason
from ml.registry.conventions import CHAMPION
from ml.settings import MlflowSettings

log = logging.getLogger(__name__)


class NoModelToScore(LookupError):
    """The registered model has no such alias or version (e.g. no champion yet): nothing to score with."""


@dataclass(frozen=True)
class ScoringModel:
    """One registered version as batch scoring loads it."""

    name: str
    version: str
    checkpoint_uri: str
    feature_spec_uri: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScoringModel:
        return cls(**{key: str(values[key]) for key in ("name", "version", "checkpoint_uri", "feature_spec_uri")})


def scoring_model_from_version(name: str, version: Any, version_or_alias: str) -> ScoringModel:
    """A registry ModelVersion -> ScoringModel. An alias must point at a version the promotion gate passed (what the
    service requires of the champion); an explicit version number is the caller's choice and only logged."""
    tags = dict(version.tags or {})
    reason = ungated_reason(tags)
    if reason and not str(version_or_alias).isdigit():
        raise NoModelToScore(f"{name} v{version.version} ({version_or_alias}): not scored with: {reason}")
    if reason:
        log.warning(
            "%s v%s did not pass the promotion gate (%s): scoring with it as asked", name, version.version, reason
        )
    missing = [tag for tag in ("checkpoint_uri", "feature_spec_uri") if not tags.get(tag)]
    if missing:
        raise NoModelToScore(
            f"{name} v{version.version} has no {' or '.join(missing)} tag: not a pipeline registration"
        )
    return ScoringModel(name, str(version.version), tags["checkpoint_uri"], tags["feature_spec_uri"])


def resolve_scoring_model(mlflow: MlflowSettings, name: str, version_or_alias: str = CHAMPION) -> ScoringModel:
    """The version a number or alias names, as a ScoringModel; NoModelToScore when there is none."""
    from ml.clients import mlflow_client

    try:
        version = resolve_version(mlflow_client(mlflow), name, version_or_alias)
    except LookupError as error:
        raise NoModelToScore(str(error)) from error
    return scoring_model_from_version(name, version, version_or_alias)
