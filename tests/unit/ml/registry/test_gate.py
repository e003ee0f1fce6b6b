"""ml.registry.gate: the promotion rule as a pure function, checked as a decision table (no MLflow, no S3, no clock)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from ml.registry.gate import GateDecision, GateRule, VersionFacts, decide, needs_rescore

ACCURACY = GateRule(metric="accuracy", higher_is_better=True)
RMSE = GateRule(metric="rmse", higher_is_better=False)


def version(number: str, value: float | str | None = None, snapshot: str | None = "snap-a", metric: str = "accuracy"):
    tags: dict[str, str] = {}
    if value is not None:
        tags[f"test.{metric}"] = str(value)
    if snapshot is not None:
        tags["snapshot_id"] = snapshot
    return VersionFacts(number, tags)


# (challenger, champion, rule, rescored) -> (promote, decision, value, champion_value)
TABLE: list[tuple[str, VersionFacts, VersionFacts | None, GateRule, Any, tuple[bool, str, Any, Any]]] = [
    ("no champion: the first model", version("1", 0.8), None, ACCURACY, None, (True, "first_model", 0.8, None)),
    ("better on the same snapshot", version("2", 0.9), version("1", 0.8), ACCURACY, None, (True, "promoted", 0.9, 0.8)),
    ("worse", version("2", 0.7), version("1", 0.8), ACCURACY, None, (False, "rejected", 0.7, 0.8)),
    ("equal is not better", version("2", 0.8), version("1", 0.8), ACCURACY, None, (False, "rejected", 0.8, 0.8)),
    (
        "better, but not by more than the margin",
        version("2", 0.85),
        version("1", 0.8),
        replace(ACCURACY, margin=0.05),
        None,
        (False, "rejected", 0.85, 0.8),
    ),
    (
        "better by more than the margin",
        version("2", 0.86),
        version("1", 0.8),
        replace(ACCURACY, margin=0.05),
        None,
        (True, "promoted", 0.86, 0.8),
    ),
    (
        "lower is better: a smaller rmse wins",
        version("2", 0.3, metric="rmse"),
        version("1", 0.5, metric="rmse"),
        RMSE,
        None,
        (True, "promoted", 0.3, 0.5),
    ),
    (
        "lower is better: a larger rmse loses",
        version("2", 0.6, metric="rmse"),
        version("1", 0.5, metric="rmse"),
        RMSE,
        None,
        (False, "rejected", 0.6, 0.5),
    ),
    (
        "the champion itself",
        version("1", 0.8),
        version("1", 0.8),
        ACCURACY,
        None,
        (False, "already_champion", 0.8, 0.8),
    ),
    (
        "a backfill never moves the champion",
        version("2", 0.99),
        version("1", 0.5),
        replace(ACCURACY, is_backfill=True),
        None,
        (False, "rejected", 0.99, None),
    ),
    (
        "nor becomes the first champion",
        version("1", 0.99),
        None,
        replace(ACCURACY, is_backfill=True),
        None,
        (False, "rejected", 0.99, None),
    ),
    (
        "unless allowed",
        version("2", 0.99),
        version("1", 0.5),
        replace(ACCURACY, is_backfill=True, allow_backfill_promotion=True),
        None,
        (True, "promoted", 0.99, 0.5),
    ),
    ("no test metric", version("2"), version("1", 0.5), ACCURACY, None, (False, "rejected", None, None)),
    ("a non-finite test metric", version("2", "nan"), None, ACCURACY, None, (False, "rejected", None, None)),
    (
        "another snapshot: the re-scored values decide, not the recorded ones",
        version("2", 0.6, snapshot="snap-b"),
        version("1", 0.9),
        ACCURACY,
        (0.95, 0.7),
        (True, "promoted", 0.95, 0.7),
    ),
    (
        "another snapshot, re-scored worse",
        version("2", 0.99, snapshot="snap-b"),
        version("1", 0.5),
        ACCURACY,
        (0.7, 0.8),
        (False, "rejected", 0.7, 0.8),
    ),
    (
        "a champion without the metric is re-scored",
        version("2", 0.9),
        version("1"),
        ACCURACY,
        (0.9, 0.95),
        (False, "rejected", 0.9, 0.95),
    ),
    (
        "a champion that scores NaN on the new split is beaten",
        version("2", 0.9, snapshot="snap-b"),
        version("1", 0.9),
        ACCURACY,
        (0.9, math.nan),
        (True, "promoted", 0.9, math.nan),
    ),
]


@pytest.mark.parametrize(
    ("challenger", "champion", "rule", "rescored", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_decision_table(
    challenger: VersionFacts,
    champion: VersionFacts | None,
    rule: GateRule,
    rescored: tuple[float, float] | None,
    expected: tuple[bool, str, Any, Any],
) -> None:
    decision = decide(challenger, champion, rule, rescored)
    promote, name, value, champion_value = expected
    assert (decision.promote, decision.decision) == (promote, name), decision.reason
    assert decision.value == value
    assert decision.champion_value == champion_value or (
        isinstance(champion_value, float) and math.isnan(champion_value) and math.isnan(decision.champion_value or 0)
    )
    assert decision.reason


def test_decide_is_pure_and_deterministic() -> None:
    challenger, champion = version("2", 0.9), version("1", 0.8)
    tags_before = dict(challenger.tags), dict(champion.tags)
    first = decide(challenger, champion, ACCURACY)
    assert decide(challenger, champion, ACCURACY) == first
    assert (dict(challenger.tags), dict(champion.tags)) == tags_before
    assert isinstance(first, GateDecision)


def test_the_reason_says_what_was_compared() -> None:
    promoted = decide(version("3", 1.0), version("1", 0.82), replace(ACCURACY, margin=0.01))
    assert promoted.reason == (
        "test accuracy 1 beats champion v1 0.82 by more than 0.01 (higher is better; recorded test metrics on the same "
        "snapshot snap-a)"
    )
    assert (promoted.champion_version, promoted.comparison) == (
        "1",
        "recorded test metrics on the same snapshot snap-a",
    )
    rejected = decide(version("2", 0.6, metric="rmse"), version("1", 0.5, metric="rmse"), RMSE)
    assert "does not beat champion v1" in rejected.reason and "lower is better" in rejected.reason
    rescored = decide(version("4", 0.9, snapshot="snap-b"), version("1", 0.8), ACCURACY, (0.9, 0.7))
    assert "re-scored both on the test split of snapshot snap-b (champion trained on snap-a)" in rescored.reason
    assert "backfill" in decide(version("2", 0.9), None, replace(ACCURACY, is_backfill=True)).reason
    assert "'accuracy'" in decide(version("2"), None, ACCURACY).reason
    assert decide(version("1", 0.8), None, ACCURACY).reason.startswith("no champion yet")


def test_a_needed_rescore_must_be_passed() -> None:
    with pytest.raises(ValueError, match="champion v1 was tested on another split"):
        decide(version("2", 0.9, snapshot="snap-b"), version("1", 0.8), ACCURACY)


@pytest.mark.parametrize(
    ("challenger", "champion", "needed"),
    [
        (version("2", 0.9), None, False),
        (version("2", 0.9), version("1", 0.8), False),
        (version("1", 0.9), version("1", 0.9, snapshot="snap-b"), False),  # the same version: nothing to compare
        (version("2", 0.9, snapshot="snap-b"), version("1", 0.8), True),
        (version("2", 0.9), version("1", 0.8, snapshot=None), True),  # unknown snapshot: not the same split
        (version("2", 0.9), version("1"), True),
        (version("2", 0.9), version("1", "inf"), True),
        (version("2", 0.9), version("1", 0.8, metric="rmse"), True),  # recorded, but another metric
    ],
)
def test_needs_rescore(challenger: VersionFacts, champion: VersionFacts | None, needed: bool) -> None:
    assert needs_rescore(challenger, champion, "accuracy") is needed


def test_version_facts_read_the_snapshot_tag() -> None:
    assert version("1", 0.5, snapshot="s").snapshot_id == "s" and version("1", snapshot=None).snapshot_id is None
