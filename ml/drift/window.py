"""One window of live requests against a model version's training distributions: the live values binned as the
preprocessing job counted the training ones, and the drift verdict per feature (the payload of an `mlops.drift.v1`
event). Pure functions of counts; the streaming job (ml.drift.stream) feeds them what Spark aggregated.

Live values arrive as the text the serving event holds (`inputs`: numbers, strings or null as JSON); they are read as
the job read the training values: in a numeric column a number is what `parse_number` accepts and anything else
(null, blank, a null spelling, inf/nan, not a number) is missing; in a categorical column null, blank or a null
spelling (`NULL_TOKENS`) is missing and anything else is keyed by `normalise_category`.

Per feature: the PSI over the training bins plus a last bin for missing values (so a change of the missing share
counts as drift too), and a test over the present values: Kolmogorov-Smirnov over the ordered bins of a numeric
feature, chi-square over the categories of a categorical one. A feature drifts when its PSI reaches the threshold and
the window holds at least `min_rows` rows (fewer say too little either way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.drift.stats import bin_counts, category_counts, chi_square, ks, psi, with_missing
from ml.features import NULL_TOKENS, normalise_category, parse_number
from ml.features.distributions import CategoricalDistribution, NumericDistribution, TrainingDistributions

DEFAULT_PSI_THRESHOLD = 0.25  # the usual "large shift" of the rule of thumb (0.1-0.25 moderate)
DEFAULT_MIN_ROWS = 50  # fewer rows in a window: statistics reported, no verdict

_NULL_TOKENS = frozenset(NULL_TOKENS)


@dataclass(frozen=True)
class DriftThresholds:
    psi: float = DEFAULT_PSI_THRESHOLD
    min_rows: int = DEFAULT_MIN_ROWS

    def __post_init__(self) -> None:
        if not (self.psi > 0 and math.isfinite(self.psi)):
            raise ValueError(f"the PSI threshold must be a positive number, not {self.psi}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be at least 1, not {self.min_rows}")


def numeric_value(text: str | None) -> float | None:
    """A live numeric value as the job reads it (None: missing)."""
    if text is None:
        return None
    number = parse_number(text)
    return number if number is not None and math.isfinite(number) else None


def category_key(text: str | None) -> str | None:
    """A live categorical value keyed as the job keys it (None: missing): a null spelling as sent, or nothing left
    once spaces are trimmed, is missing."""
    if text is None or text in _NULL_TOKENS:
        return None
    return normalise_category(text) or None


def _numeric_drift(
    distribution: NumericDistribution, values: Mapping[str | None, int], thresholds: DriftThresholds
) -> dict[str, Any]:
    numbers = np.array([numeric_value(text) for text in values], dtype=np.float64)  # None -> NaN
    weights = np.array(list(values.values()), dtype=np.int64)
    counts = bin_counts(numbers, distribution.edges, weights)
    missing = int(weights[~np.isfinite(numbers)].sum())
    statistic = ks(distribution.fractions, counts.tolist()) if counts.sum() else None
    return _feature_result(distribution, counts, missing, statistic, "ks", thresholds)


def _categorical_drift(
    distribution: CategoricalDistribution, values: Mapping[str | None, int], thresholds: DriftThresholds
) -> dict[str, Any]:
    keys = [category_key(text) for text in values]
    counts = category_counts(keys, distribution.categories, list(values.values()))
    missing = sum(weight for key, weight in zip(keys, values.values(), strict=True) if key is None)
    statistic = chi_square(distribution.fractions, counts.tolist()) if counts.sum() else None
    return _feature_result(distribution, counts, missing, statistic, "chi_square", thresholds)


def _feature_result(
    distribution: NumericDistribution | CategoricalDistribution,
    counts: np.ndarray,
    missing: int,
    statistic: tuple[float, float] | None,
    test: str,
    thresholds: DriftThresholds,
) -> dict[str, Any]:
    rows = int(counts.sum()) + missing
    expected = with_missing(distribution.fractions, distribution.missing).tolist()
    index = psi(expected, [*counts.tolist(), missing]) if rows else None
    return {
        "name": distribution.name,
        "kind": "numeric" if isinstance(distribution, NumericDistribution) else "categorical",
        "rows": rows,
        "missing_share": missing / rows if rows else None,
        "expected_missing_share": distribution.missing,
        "psi": index,
        "test": test,
        "statistic": statistic[0] if statistic else None,
        "p_value": statistic[1] if statistic else None,
        "drifted": index is not None and rows >= thresholds.min_rows and index >= thresholds.psi,
    }


def window_drift(
    distributions: TrainingDistributions,
    values: Mapping[str, Mapping[str | None, int]],
    thresholds: DriftThresholds,
) -> list[dict[str, Any]]:
    """Each training feature's drift in one window: `values` maps an input column to {live value text: count}. A
    feature the window has no value for (no sampled row named it) has no result; a column training did not have is
    not a feature of the model and is ignored."""
    results: list[dict[str, Any]] = []
    for numeric in distributions.numeric:
        if numeric.name in values:
            results.append(_numeric_drift(numeric, values[numeric.name], thresholds))
    for categorical in distributions.categorical:
        if categorical.name in values:
            results.append(_categorical_drift(categorical, values[categorical.name], thresholds))
    return results


def drift_payload(
    *,
    model_name: str,
    model_version: str,
    distributions: TrainingDistributions,
    window_start: str,
    window_end: str,
    features: list[dict[str, Any]],
    thresholds: DriftThresholds,
) -> dict[str, Any]:
    """The `mlops.drift.v1` payload of one model version's window."""
    drifted = [feature["name"] for feature in features if feature["drifted"]]
    return {
        "model_name": model_name,
        "model_version": model_version,
        "dataset": distributions.dataset,
        "snapshot_id": distributions.snapshot_id,
        "window_start": window_start,
        "window_end": window_end,
        "rows": max((feature["rows"] for feature in features), default=0),
        "drifted": bool(drifted),
        "drifted_features": drifted,
        "thresholds": {"psi": thresholds.psi, "min_rows": thresholds.min_rows},
        "features": features,
    }
