"""The promotion rule, as a pure function of two versions' facts: no MLflow, no S3, no clock.

The challenger becomes champion if there is no champion yet, or if it beats the champion on the same test split by
more than `margin` (absolute, in the metric's units). When both were scored on the same snapshot, the recorded
`test.<metric>` tags are compared; otherwise both must be re-scored on the challenger's test split first
(ml.registry.rescore) and the caller passes the two values in. A backfill never moves the champion unless allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ml.models import is_improvement
from ml.registry.conventions import test_metric


@dataclass(frozen=True)
class VersionFacts:
    """What the gate knows of a model version: its number and its tags."""

    version: str
    tags: Mapping[str, str]

    @property
    def snapshot_id(self) -> str | None:
        return self.tags.get("snapshot_id")


@dataclass(frozen=True)
class GateRule:
    metric: str  # a base metric name, e.g. "accuracy", "rmse"
    higher_is_better: bool
    margin: float = 0.0
    is_backfill: bool = False
    allow_backfill_promotion: bool = False


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    decision: str  # first_model | promoted | rejected | already_champion
    reason: str
    value: float | None = None
    champion_version: str | None = None
    champion_value: float | None = None
    comparison: str = ""


def needs_rescore(challenger: VersionFacts, champion: VersionFacts | None, metric: str) -> bool:
    """True when the recorded metrics cannot be compared: the champion was tested on another snapshot's split (or
    has no recorded value of the metric)."""
    if champion is None or champion.version == challenger.version:
        return False
    return champion.snapshot_id != challenger.snapshot_id or test_metric(champion.tags, metric) is None


def decide(
    challenger: VersionFacts,
    champion: VersionFacts | None,
    rule: GateRule,
    rescored: tuple[float, float] | None = None,
) -> GateDecision:
    """The gate's decision; `rescored` is (challenger value, champion value) on the challenger's test split, needed
    exactly when `needs_rescore` says so."""
    metric = rule.metric
    value = test_metric(challenger.tags, metric)
    champion_version = champion.version if champion is not None else None
    if champion is not None and champion.version == challenger.version:
        return GateDecision(
            False, "already_champion", "this version is already the champion", value, champion_version, value
        )
    if rule.is_backfill and not rule.allow_backfill_promotion:
        reason = "backfill runs never move the champion (allow_backfill_promotion is off)"
        return GateDecision(False, "rejected", reason, value, champion_version)
    if value is None:
        return GateDecision(False, "rejected", f"version {challenger.version} has no test metric {metric!r}")
    if champion is None:
        return GateDecision(True, "first_model", "no champion yet: the first model becomes champion", value)
    if needs_rescore(challenger, champion, metric):
        if rescored is None:
            raise ValueError(f"champion v{champion.version} was tested on another split: pass both re-scored values")
        challenger_value, champion_value = rescored
        comparison = (
            f"re-scored both on the test split of snapshot {challenger.snapshot_id} (champion trained on "
            f"{champion.snapshot_id})"
        )
    else:
        challenger_value = value
        recorded = test_metric(champion.tags, metric)
        assert recorded is not None  # needs_rescore is False only with a recorded value
        champion_value = recorded
        comparison = f"recorded test metrics on the same snapshot {challenger.snapshot_id}"
    better = is_improvement(challenger_value, champion_value, "max" if rule.higher_is_better else "min", rule.margin)
    direction = "higher" if rule.higher_is_better else "lower"
    relation = "beats" if better else "does not beat"
    reason = (
        f"test {metric} {challenger_value:.6g} {relation} champion v{champion.version} {champion_value:.6g} by more "
        f"than {rule.margin:g} ({direction} is better; {comparison})"
    )
    return GateDecision(
        better,
        "promoted" if better else "rejected",
        reason,
        challenger_value,
        champion.version,
        champion_value,
        comparison,
    )
